//! `phigate explain`: the full trace of one decision, from the same functions the proxy
//! runs (so the explanation is what the gateway enforces).

use std::fmt::Write;

use http::Method;
use serde::Serialize;

use crate::access::PermissionVerdict;
use crate::config::rules::RuleSnapshot;
use crate::decision;
use crate::error::GatewayError;
use crate::routing::canonical::canonical_path;

#[derive(Debug, Serialize)]
pub struct RouteSummary {
    pub name: String,
    pub path: String,
    pub methods: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Masking {
    pub field_set: Option<String>,
    pub applies: bool,
    pub rules: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub user: Option<String>,
    pub listed_user: bool,
    pub data_access: Option<String>,
    pub method: String,
    pub path: String,
    pub canonical_path: Option<String>,
    pub considered: Vec<RouteSummary>,
    pub route: Option<String>,
    pub public: bool,
    pub required: Vec<String>,
    pub permissions: Vec<PermissionVerdict>,
    pub decision: &'static str,
    pub status: u16,
    pub reason: String,
    pub masking: Option<Masking>,
    pub rules_sha256: String,
}

/// Explains what the gateway would decide for `user` (None: no credentials).
pub fn explain(
    rules: &RuleSnapshot,
    user: Option<&str>,
    method: &Method,
    target: &str,
) -> Explanation {
    let path = target.split('?').next().unwrap_or(target);
    let mut e = Explanation {
        user: user.map(str::to_string),
        listed_user: user.is_some_and(|u| rules.access.users.contains_key(u)),
        data_access: None,
        method: method.to_string(),
        path: target.to_string(),
        canonical_path: None,
        considered: Vec::new(),
        route: None,
        public: false,
        required: Vec::new(),
        permissions: Vec::new(),
        decision: "deny",
        status: 0,
        reason: String::new(),
        masking: None,
        rules_sha256: rules.sha256.clone(),
    };
    let result = (|| -> Result<(), GatewayError> {
        let canonical = canonical_path(path).map_err(GatewayError::BadPath)?;
        e.canonical_path = Some(canonical.clone());
        e.considered = rules
            .matcher
            .candidates(&canonical)
            .into_iter()
            .map(|i| {
                let r = &rules.routes[i];
                RouteSummary {
                    name: r.name.clone(),
                    path: r.path.to_string(),
                    methods: r.methods.allowed(),
                }
            })
            .collect();
        let ix = decision::find_route(rules, method, &canonical)?;
        let route = &rules.routes[ix];
        e.route = Some(route.name.clone());
        e.public = route.public;
        e.required = route.require.iter().map(|p| p.to_string()).collect();
        if route.public {
            return Ok(());
        }
        let Some(user) = user else {
            return Err(GatewayError::Unauthenticated(
                crate::auth::jwt::AuthError::Missing,
            ));
        };
        let authz = decision::authorize(rules, route, user);
        e.data_access = Some(authz.resolved.data_access.as_str().to_string());
        e.permissions = authz.verdicts;
        let set = route
            .fields
            .as_ref()
            .and_then(|n| rules.fields.as_ref().and_then(|f| f.set(n)));
        let outcome = authz.outcome;
        e.masking = Some(Masking {
            field_set: route.fields.clone(),
            applies: matches!(outcome, Ok(Some(_))),
            rules: set.map(|s| s.describe()).unwrap_or_default(),
        });
        outcome.map(|_| ())
    })();
    match result {
        Ok(()) => {
            e.decision = "allow";
            e.status = 200;
            e.reason = if e.public {
                "public route".into()
            } else {
                "every required permission is granted".into()
            };
        }
        Err(err) => {
            e.status = err.status().as_u16();
            e.reason = err.to_string();
        }
    }
    e
}

pub fn render_text(e: &Explanation) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "request        {} {}", e.method, e.path);
    let _ = writeln!(
        o,
        "caller         {}{}",
        e.user.as_deref().unwrap_or("(no credentials)"),
        match (&e.user, e.listed_user) {
            (Some(_), false) => "  (not listed in access.yaml: defaults apply)",
            _ => "",
        }
    );
    if let Some(d) = &e.data_access {
        let _ = writeln!(o, "data access    {d}");
    }
    let _ = writeln!(
        o,
        "canonical path {}",
        e.canonical_path.as_deref().unwrap_or("(rejected)")
    );
    if !e.considered.is_empty() {
        let _ = writeln!(o, "routes considered (most specific first):");
        for r in &e.considered {
            let mark = if Some(&r.name) == e.route.as_ref() {
                "*"
            } else {
                " "
            };
            let _ = writeln!(
                o,
                "  {mark} {:<20} {:<32} {}",
                r.name,
                r.path,
                r.methods.join(",")
            );
        }
    }
    let _ = writeln!(
        o,
        "matched route  {}",
        e.route.as_deref().unwrap_or("(none)")
    );
    if e.public {
        let _ = writeln!(o, "               public: no authentication");
    }
    if !e.permissions.is_empty() {
        let _ = writeln!(o, "required permissions:");
        for v in &e.permissions {
            let line = match v {
                PermissionVerdict::Granted {
                    permission,
                    pattern,
                    source,
                    phi,
                } => format!(
                    "  + {permission:<24} granted by {source} (pattern {pattern}{})",
                    if *phi { ", PHI policy" } else { "" }
                ),
                PermissionVerdict::Denied {
                    permission,
                    pattern,
                } => {
                    format!("  - {permission:<24} DENIED by inline deny {pattern}")
                }
                PermissionVerdict::NotGranted { permission } => {
                    format!("  - {permission:<24} not granted")
                }
            };
            let _ = writeln!(o, "{line}");
        }
    } else if !e.required.is_empty() {
        let _ = writeln!(o, "required       {}", e.required.join(", "));
    }
    if let Some(m) = &e.masking {
        match (&m.field_set, m.applies) {
            (Some(set), true) => {
                let _ = writeln!(o, "masking        field set '{set}' applies:");
                for r in &m.rules {
                    let _ = writeln!(o, "                 {r}");
                }
            }
            (Some(_), false) if e.decision != "allow" => {
                let _ = writeln!(o, "masking        not reached: the request is refused");
            }
            (Some(set), false) => {
                let _ = writeln!(o, "masking        none for this caller (field set '{set}' applies to anonymized callers)");
            }
            (None, _) => {
                let _ = writeln!(o, "masking        none (the route names no field set)");
            }
        }
    }
    let _ = writeln!(
        o,
        "decision       {} ({}): {}",
        e.decision.to_uppercase(),
        e.status,
        e.reason
    );
    o
}
