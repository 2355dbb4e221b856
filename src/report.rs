//! Compliance reports and rule warnings, computed from a rules snapshot with the same
//! decision functions the proxy uses.
//! - `phi-access`: who can reach PHI, through which policy and role, raw or masked.
//! - `review`: every user with roles, data access level and inline exceptions.
//! - warnings for `check`.

use http::Method;
use serde::Serialize;
use std::collections::BTreeSet;

use crate::access::Permission;
use crate::config::rules::{Route, RoutePath, RuleSnapshot};
use crate::decision;

#[derive(Debug, Serialize)]
pub struct PhiPolicyHold {
    pub policy: String,
    /// "role Admin" or "direct".
    pub via: String,
}

#[derive(Debug, Serialize)]
pub struct PhiRouteAccess {
    pub route: String,
    /// "raw" (dpo, full) or "masked" (anonymized, with a field set).
    pub sees: &'static str,
}

#[derive(Debug, Serialize)]
pub struct UserPhiAccess {
    pub user: String,
    pub data_access: String,
    pub phi_policies: Vec<PhiPolicyHold>,
    pub phi_routes: Vec<PhiRouteAccess>,
}

#[derive(Debug, Serialize)]
pub struct PolicyHolders {
    pub policy: String,
    pub holders: Vec<PhiPolicyHold>,
}

#[derive(Debug, Serialize)]
pub struct PhiAccessReport {
    pub rules_sha256: String,
    pub users: Vec<UserPhiAccess>,
    pub phi_policies: Vec<PolicyHolders>,
}

/// Routes that carry PHI: a PHI-tagged policy names their permission, or they are masked.
fn phi_route(r: &Route) -> bool {
    !r.public && (r.carries_phi || r.fields.is_some())
}

pub fn phi_access(rules: &RuleSnapshot) -> PhiAccessReport {
    let a = &rules.access;
    let mut users = Vec::new();
    let mut holders: Vec<PolicyHolders> = a
        .policies
        .iter()
        .filter(|p| p.phi)
        .map(|p| PolicyHolders {
            policy: p.name.clone(),
            holders: Vec::new(),
        })
        .collect();
    for name in &a.user_order {
        let u = &a.users[name];
        let mut held = Vec::new();
        for &r in &u.roles {
            for &p in &a.roles[r].policies {
                if a.policies[p].phi {
                    held.push(PhiPolicyHold {
                        policy: a.policies[p].name.clone(),
                        via: format!("role {}", a.roles[r].name),
                    });
                }
            }
        }
        for &p in &u.policies {
            if a.policies[p].phi {
                held.push(PhiPolicyHold {
                    policy: a.policies[p].name.clone(),
                    via: "direct".into(),
                });
            }
        }
        for h in &held {
            if let Some(ph) = holders.iter_mut().find(|x| x.policy == h.policy) {
                ph.holders.push(PhiPolicyHold {
                    policy: name.clone(),
                    via: h.via.clone(),
                });
            }
        }
        let mut phi_routes = Vec::new();
        for route in rules.routes.iter().filter(|r| phi_route(r)) {
            let authz = decision::authorize(rules, route, name);
            match authz.outcome {
                Ok(Some(_)) => phi_routes.push(PhiRouteAccess {
                    route: route.name.clone(),
                    sees: "masked",
                }),
                Ok(None) => phi_routes.push(PhiRouteAccess {
                    route: route.name.clone(),
                    sees: "raw",
                }),
                Err(_) => {}
            }
        }
        users.push(UserPhiAccess {
            user: name.clone(),
            data_access: u.data_access.to_string(),
            phi_policies: held,
            phi_routes,
        });
    }
    PhiAccessReport {
        rules_sha256: rules.sha256.clone(),
        users,
        phi_policies: holders,
    }
}

pub fn phi_access_table(r: &PhiAccessReport) -> String {
    let mut o = String::from("PHI access by user\n");
    o.push_str(&format!(
        "{:<28} {:<11} {:<40} {}\n",
        "USER", "ACCESS", "PHI POLICIES (VIA)", "PHI ROUTES (SEES)"
    ));
    for u in &r.users {
        let pols = u
            .phi_policies
            .iter()
            .map(|p| format!("{} ({})", p.policy, p.via))
            .collect::<Vec<_>>()
            .join(", ");
        let routes = u
            .phi_routes
            .iter()
            .map(|p| format!("{} ({})", p.route, p.sees))
            .collect::<Vec<_>>()
            .join(", ");
        o.push_str(&format!(
            "{:<28} {:<11} {:<40} {}\n",
            u.user,
            u.data_access,
            if pols.is_empty() { "-".into() } else { pols },
            if routes.is_empty() {
                "-".into()
            } else {
                routes
            }
        ));
    }
    o.push_str("\nHolders of PHI-tagged policies\n");
    for p in &r.phi_policies {
        let hs = p
            .holders
            .iter()
            .map(|h| format!("{} ({})", h.policy, h.via))
            .collect::<Vec<_>>()
            .join(", ");
        o.push_str(&format!(
            "{:<28} {}\n",
            p.policy,
            if hs.is_empty() { "-".into() } else { hs }
        ));
    }
    o
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One row per (user, PHI route or PHI policy).
pub fn phi_access_csv(r: &PhiAccessReport) -> String {
    let mut o = String::from("user,data_access,kind,name,via_or_sees\n");
    for u in &r.users {
        for p in &u.phi_policies {
            o.push_str(&format!(
                "{},{},policy,{},{}\n",
                csv_field(&u.user),
                u.data_access,
                csv_field(&p.policy),
                csv_field(&p.via)
            ));
        }
        for p in &u.phi_routes {
            o.push_str(&format!(
                "{},{},route,{},{}\n",
                csv_field(&u.user),
                u.data_access,
                csv_field(&p.route),
                p.sees
            ));
        }
    }
    o
}

#[derive(Debug, Serialize)]
pub struct ReviewEntry {
    pub user: String,
    pub data_access: String,
    pub roles: Vec<String>,
    pub policies: Vec<String>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

pub fn review(rules: &RuleSnapshot) -> Vec<ReviewEntry> {
    let a = &rules.access;
    a.user_order
        .iter()
        .map(|name| {
            let u = &a.users[name];
            ReviewEntry {
                user: name.clone(),
                data_access: u.data_access.to_string(),
                roles: u.roles.iter().map(|&r| a.roles[r].name.clone()).collect(),
                policies: u
                    .policies
                    .iter()
                    .map(|&p| a.policies[p].name.clone())
                    .collect(),
                allow: u.allow.iter().map(|p| p.to_string()).collect(),
                deny: u.deny.iter().map(|p| p.to_string()).collect(),
            }
        })
        .collect()
}

pub fn review_table(entries: &[ReviewEntry]) -> String {
    let mut o = format!(
        "{:<28} {:<11} {:<24} {:<20} {:<22} {}\n",
        "USER", "ACCESS", "ROLES", "POLICIES", "ALLOW", "DENY"
    );
    let j = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    for e in entries {
        o.push_str(&format!(
            "{:<28} {:<11} {:<24} {:<20} {:<22} {}\n",
            e.user,
            e.data_access,
            j(&e.roles),
            j(&e.policies),
            j(&e.allow),
            j(&e.deny)
        ));
    }
    o
}

pub fn review_csv(entries: &[ReviewEntry]) -> String {
    let mut o = String::from("user,data_access,roles,policies,allow,deny\n");
    for e in entries {
        o.push_str(&format!(
            "{},{},{},{},{},{}\n",
            csv_field(&e.user),
            e.data_access,
            csv_field(&e.roles.join(" ")),
            csv_field(&e.policies.join(" ")),
            csv_field(&e.allow.join(" ")),
            csv_field(&e.deny.join(" "))
        ));
    }
    o
}

/// A `check` warning: not an error, but worth a look.
#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    pub kind: &'static str,
    pub subject: String,
    pub message: String,
}

pub fn warnings(rules: &RuleSnapshot) -> Vec<Warning> {
    let a = &rules.access;
    let mut w = Vec::new();
    let mut callers: Vec<&str> = a.user_order.iter().map(String::as_str).collect();
    callers.push(""); // the defaults, for any unlisted caller
    for route in rules.routes.iter().filter(|r| !r.public) {
        let reachable = callers.iter().any(|u| {
            let name = if u.is_empty() { "\u{0}unlisted" } else { u };
            decision::authorize(rules, route, name).outcome.is_ok()
        });
        if !reachable {
            w.push(Warning {
                kind: "unreachable_route",
                subject: route.name.clone(),
                message: format!("no caller can reach route '{}'", route.name),
            });
        }
        if route.carries_phi && route.fields.is_none() {
            w.push(Warning {
                kind: "phi_route_without_field_set",
                subject: route.name.clone(),
                message: format!(
                    "route '{}' requires PHI-tagged permissions but names no field set: anonymized callers are refused",
                    route.name
                ),
            });
        }
    }
    let mut ungranted = BTreeSet::new();
    for route in &rules.routes {
        for p in &route.require {
            if !grantable(rules, p) {
                ungranted.insert((p.to_string(), route.name.clone()));
            }
        }
    }
    for (p, route) in ungranted {
        w.push(Warning {
            kind: "permission_not_granted",
            subject: p.clone(),
            message: format!(
                "route '{route}' requires '{p}', which no policy or inline allow names (catch-alls aside)"
            ),
        });
    }
    let mut used_policies = BTreeSet::new();
    let mut used_roles = BTreeSet::new();
    for u in a.users.values().chain(std::iter::once(&a.defaults)) {
        used_roles.extend(u.roles.iter().copied());
        used_policies.extend(u.policies.iter().copied());
        if !u.allow.is_empty() || !u.deny.is_empty() {
            w.push(Warning {
                kind: "inline_exceptions",
                subject: u.name.clone(),
                message: format!(
                    "user '{}' has inline exceptions (allow: [{}], deny: [{}]); review them periodically",
                    u.name,
                    u.allow.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
                    u.deny.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    for &r in &used_roles {
        used_policies.extend(a.roles[r].policies.iter().copied());
    }
    for (i, p) in a.policies.iter().enumerate() {
        if !used_policies.contains(&i) {
            w.push(Warning {
                kind: "unused_policy",
                subject: p.name.clone(),
                message: format!("policy '{}' is bound to no role and no user", p.name),
            });
        }
    }
    for (i, r) in a.roles.iter().enumerate() {
        if !used_roles.contains(&i) {
            w.push(Warning {
                kind: "unused_role",
                subject: r.name.clone(),
                message: format!("role '{}' is given to no user", r.name),
            });
        }
    }
    w.extend(shadowing(rules));
    w
}

fn grantable(rules: &RuleSnapshot, p: &Permission) -> bool {
    let a = &rules.access;
    // Catch-all grants (`*`) do not count: a permission only they cover is likely a typo.
    let named = |pat: &crate::access::Pattern| !pat.is_catch_all() && pat.matches(p);
    a.policies.iter().any(|pol| pol.patterns.iter().any(named))
        || a.users.values().any(|u| u.allow.iter().any(named))
}

/// A legacy regex route that also matches the paths of a template route is shadowed there
/// (templates always win); two regex routes matching the same sample are refused at runtime.
fn shadowing(rules: &RuleSnapshot) -> Vec<Warning> {
    let mut w = Vec::new();
    for route in &rules.routes {
        let RoutePath::Template(t) = &route.path else {
            continue;
        };
        let sample: String = t
            .split('/')
            .map(|s| if s.starts_with('{') { "x1" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let method = match &route.methods {
            crate::routing::matcher::Methods::Only(m) => m.first().cloned().unwrap_or(Method::GET),
            crate::routing::matcher::Methods::Any => Method::GET,
        };
        for other in rules.matcher.candidates(&sample) {
            let o = &rules.routes[other];
            if o.name != route.name
                && matches!(o.path, RoutePath::Regex(_))
                && o.methods.accepts(&method)
            {
                w.push(Warning {
                    kind: "shadowed_route",
                    subject: o.name.clone(),
                    message: format!(
                        "regex route '{}' also matches {} ({}), where template route '{}' wins",
                        o.name, sample, method, route.name
                    ),
                });
            }
        }
    }
    w
}
