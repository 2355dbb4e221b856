//! Rule files (`routes.yaml`, `access.yaml`, `fields.yaml`): raw YAML -> validated, compiled
//! `RuleSnapshot`. A snapshot is immutable; a reload builds a new one and swaps it in whole.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use http::Method;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use super::diag::{parse_yaml, read_file, Diagnostics, Pos};
use super::settings::Settings;
use crate::access::{AccessModel, DataAccess, Pattern, Permission, Policy, Role, UserEntry};
use crate::routing::matcher::{parse_template, Matcher, Methods};

// ---------- routes.yaml ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoutes {
    routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    #[serde(default)]
    methods: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    path: Option<Spanned<String>>,
    #[serde(default)]
    path_regex: Option<Spanned<String>>,
    #[serde(default)]
    require: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    upstream: Option<Spanned<String>>,
    #[serde(default)]
    fields: Option<Spanned<String>>,
    #[serde(default)]
    passthrough_types: Vec<String>,
    #[serde(default)]
    passthrough_headers: Vec<String>,
}

/// `require: a:b:c` or `require: [a:b:c, d:e:f]`.
#[derive(Debug)]
struct OneOrMany(Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a permission or a list of permissions")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------- access.yaml ----------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    #[serde(default)]
    policies: indexmap::IndexMap<String, Spanned<RawPolicy>>,
    #[serde(default)]
    roles: indexmap::IndexMap<String, Spanned<RawRole>>,
    #[serde(default)]
    users: indexmap::IndexMap<String, Spanned<RawUser>>,
    #[serde(default)]
    defaults: Option<Spanned<RawDefaults>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    permissions: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    policies: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    policies: Vec<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    data_access: DataAccess,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    policies: Vec<String>,
}

// ---------- compiled ----------

/// How a route's path is matched.
#[derive(Debug, Clone)]
pub enum RoutePath {
    Template(String),
    Regex(String),
}

impl fmt::Display for RoutePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoutePath::Template(t) => f.write_str(t),
            RoutePath::Regex(r) => write!(f, "regex {r}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub methods: Methods,
    pub path: RoutePath,
    pub require: Vec<Permission>,
    pub public: bool,
    pub upstream: usize,
    /// The field set masking this route's responses for anonymized callers.
    pub fields: Option<String>,
    /// Content types passed through unmasked to anonymized callers (lower-case media types).
    pub passthrough_types: Vec<String>,
    /// Upstream response headers anonymized callers may see besides the safe defaults.
    pub passthrough_headers: Vec<String>,
    /// Some required permission is named by a PHI-tagged policy (not merely by a
    /// catch-all pattern such as `*`).
    pub carries_phi: bool,
    pub line: u64,
    /// `name` as the `X-Phigate-Route` value, made once (`None`: not a valid header value).
    pub name_header: Option<http::HeaderValue>,
}

/// One immutable, validated, compiled rule set.
pub struct RuleSnapshot {
    pub routes: Vec<Route>,
    pub matcher: Matcher,
    pub access: AccessModel,
    pub fields: Option<crate::masking::FieldRules>,
    /// SHA-256 over the rule files' names and contents, to tell versions apart.
    pub sha256: String,
    pub loaded_at: SystemTime,
    pub files: Vec<PathBuf>,
}

impl fmt::Debug for RuleSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSnapshot")
            .field("routes", &self.routes.len())
            .field("sha256", &self.sha256)
            .finish()
    }
}

pub const ROUTES_FILE: &str = "routes.yaml";
pub const ACCESS_FILE: &str = "access.yaml";
pub const FIELDS_FILE: &str = "fields.yaml";

impl RuleSnapshot {
    /// Reads and compiles the rules directory. Every problem found is reported, with file,
    /// line and column; any problem means no snapshot.
    pub fn load(dir: &Path, settings: &Settings) -> Result<RuleSnapshot, Diagnostics> {
        let sources = Self::read_sources(dir)?;
        Self::compile(&sources, settings, &|name| std::env::var(name).ok())
    }

    /// Reads every rule file once, so one load sees one consistent version of each.
    pub fn read_sources(dir: &Path) -> Result<RuleSources, Diagnostics> {
        let routes_file = dir.join(ROUTES_FILE);
        let access_file = dir.join(ACCESS_FILE);
        let fields_file = dir.join(FIELDS_FILE);
        let mut d = Diagnostics::default();
        let routes_text = read_file(&routes_file).map_err(|e| d.extend(e)).ok();
        let access_text = read_file(&access_file).map_err(|e| d.extend(e)).ok();
        let fields_text = if fields_file.exists() {
            read_file(&fields_file).map_err(|e| d.extend(e)).ok()
        } else {
            None
        };
        match (routes_text, access_text) {
            (Some(r), Some(a)) if d.is_empty() => Ok(RuleSources {
                routes: (routes_file, r),
                access: (access_file, a),
                fields: fields_text.map(|t| (fields_file, t)),
            }),
            _ => Err(d),
        }
    }

    pub fn compile(
        src: &RuleSources,
        settings: &Settings,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RuleSnapshot, Diagnostics> {
        let mut d = Diagnostics::default();
        let access = compile_access(&src.access.0, &src.access.1, &mut d);
        let fields = match (&src.fields, &access) {
            (Some((file, text)), access) => {
                let dpo = access.as_ref().map(|a| a.dpo.as_str());
                match crate::masking::FieldRules::compile(text, dpo, env) {
                    Ok(f) => Some(f),
                    Err(issues) => {
                        for i in issues {
                            d.push(
                                file,
                                Pos {
                                    line: i.line,
                                    column: i.column,
                                },
                                i.message,
                            );
                        }
                        None
                    }
                }
            }
            (None, _) => None,
        };
        let routes = compile_routes(
            &src.routes.0,
            &src.routes.1,
            settings,
            fields.as_ref(),
            src.fields.is_some(),
            &mut d,
        );
        let (Some(access), Some((routes, matcher))) = (access, routes) else {
            return Err(d);
        };
        if !d.is_empty() {
            return Err(d);
        }
        let routes = routes
            .into_iter()
            .map(|mut r| {
                r.carries_phi = r.require.iter().any(|p| access.is_phi_permission(p));
                r
            })
            .collect();
        let mut files = vec![src.routes.0.clone(), src.access.0.clone()];
        if let Some((f, _)) = &src.fields {
            files.push(f.clone());
        }
        let sha256 = src.sha256();
        Ok(RuleSnapshot {
            routes,
            matcher,
            access,
            fields,
            sha256,
            loaded_at: SystemTime::now(),
            files,
        })
    }

    pub fn route_index(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.name == name)
    }
}

/// The text of each rule file, read once so a load sees one consistent version.
pub struct RuleSources {
    pub routes: (PathBuf, String),
    pub access: (PathBuf, String),
    pub fields: Option<(PathBuf, String)>,
}

impl RuleSources {
    /// SHA-256 over the files' names and contents: the rules' version.
    pub fn sha256(&self) -> String {
        let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for (f, t) in [Some(&self.routes), Some(&self.access), self.fields.as_ref()]
            .into_iter()
            .flatten()
        {
            hasher.update(
                f.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
            hasher.update(&[0]);
            hasher.update(t.as_bytes());
            hasher.update(&[0]);
        }
        hex(hasher.finish().as_ref())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pos_of<T>(s: &Spanned<T>) -> Pos {
    Pos::of(&s.referenced)
}

fn compile_routes(
    file: &Path,
    text: &str,
    settings: &Settings,
    fields: Option<&crate::masking::FieldRules>,
    fields_file_present: bool,
    d: &mut Diagnostics,
) -> Option<(Vec<Route>, Matcher)> {
    let raw: RawRoutes = match parse_yaml(file, text) {
        Ok(r) => r,
        Err(e) => {
            d.extend(e);
            return None;
        }
    };
    let mut routes = Vec::new();
    let mut matcher = Matcher::new();
    let mut names: HashMap<String, u64> = HashMap::new();
    for spanned in &raw.routes {
        let at = pos_of(spanned);
        let r = &spanned.value;
        let errors_before = d.0.len();
        if r.name.trim().is_empty() {
            d.push(file, at, "a route needs a non-empty 'name'");
        }
        if let Some(first) = names.insert(r.name.clone(), at.line) {
            d.push(
                file,
                at,
                format!("route name '{}' is already used on line {first}", r.name),
            );
        }
        let methods = match &r.methods {
            None => Methods::Any,
            Some(list) if list.is_empty() => {
                d.push(
                    file,
                    at,
                    format!(
                        "route '{}': 'methods' is empty; omit it to allow every method",
                        r.name
                    ),
                );
                Methods::Any
            }
            Some(list) => {
                let mut out = Vec::new();
                for m in list {
                    let upper = m.value.to_ascii_uppercase();
                    match Method::from_bytes(upper.as_bytes()) {
                        Ok(method) if m.value == upper && !matches!(method, Method::CONNECT | Method::TRACE) => {
                            out.push(method)
                        }
                        _ => d.push(
                            file,
                            pos_of(m),
                            format!("route '{}': '{}' is not an allowed method (upper-case; CONNECT and TRACE are never proxied)", r.name, m.value),
                        ),
                    }
                }
                Methods::Only(out)
            }
        };
        let require = match (&r.require, r.public) {
            (Some(req), true) => {
                d.push(
                    file,
                    pos_of(req),
                    format!(
                        "route '{}' is public: it cannot also 'require' permissions",
                        r.name
                    ),
                );
                Vec::new()
            }
            (None, false) => {
                d.push(
                    file,
                    at,
                    format!(
                        "route '{}' needs 'require' (the permissions it needs) or 'public: true'",
                        r.name
                    ),
                );
                Vec::new()
            }
            (None, true) => Vec::new(),
            (Some(req), false) => {
                if req.value.0.is_empty() {
                    d.push(
                        file,
                        pos_of(req),
                        format!("route '{}': 'require' is empty", r.name),
                    );
                }
                let mut out = Vec::new();
                for p in &req.value.0 {
                    match Permission::parse(p) {
                        Ok(p) => out.push(p),
                        Err(e) => d.push(file, pos_of(req), format!("route '{}': {e}", r.name)),
                    }
                }
                out
            }
        };
        let upstream = match &r.upstream {
            Some(u) => settings.upstream_index(&u.value).unwrap_or_else(|| {
                d.push(
                    file,
                    pos_of(u),
                    format!(
                        "route '{}': unknown upstream '{}' (phigate.yaml defines: {})",
                        r.name,
                        u.value,
                        upstream_names(settings)
                    ),
                );
                0
            }),
            None if settings.upstreams.len() == 1 => 0,
            None => {
                d.push(
                    file,
                    at,
                    format!(
                        "route '{}' needs 'upstream' (one of: {})",
                        r.name,
                        upstream_names(settings)
                    ),
                );
                0
            }
        };
        if let Some(set) = &r.fields {
            if r.public {
                d.push(
                    file,
                    pos_of(set),
                    format!(
                        "route '{}' is public: masking needs an authenticated caller",
                        r.name
                    ),
                );
            }
            match fields {
                Some(f) if f.set(&set.value).is_none() => d.push(
                    file,
                    pos_of(set),
                    format!(
                        "route '{}': field set '{}' is not defined in fields.yaml",
                        r.name, set.value
                    ),
                ),
                None if !fields_file_present => d.push(
                    file,
                    pos_of(set),
                    format!(
                        "route '{}' names field set '{}' but there is no fields.yaml",
                        r.name, set.value
                    ),
                ),
                _ => {}
            }
        }
        let mut passthrough_types = Vec::new();
        for t in &r.passthrough_types {
            let t = t.trim().to_ascii_lowercase();
            if !t.contains('/') || t.contains(';') {
                d.push(
                    file,
                    at,
                    format!(
                        "route '{}': passthrough type '{t}' must be a media type like image/png",
                        r.name
                    ),
                );
            }
            passthrough_types.push(t);
        }
        let mut passthrough_headers = Vec::new();
        for h in &r.passthrough_headers {
            let lower = h.trim().to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                d.push(
                    file,
                    at,
                    format!("route '{}': '{h}' is not a header name", r.name),
                );
            }
            if r.fields.is_none() {
                d.push(
                    file,
                    at,
                    format!(
                        "route '{}': passthrough_headers only apply to a route with a field set",
                        r.name
                    ),
                );
            }
            passthrough_headers.push(lower);
        }
        let id = routes.len();
        let path = match (&r.path, &r.path_regex) {
            (Some(p), None) => match parse_template(&p.value) {
                Ok(segs) => {
                    if d.0.len() == errors_before {
                        if let Err(e) = matcher.add_template(id, &r.name, &segs, methods.clone()) {
                            d.push(file, pos_of(p), e);
                        }
                    }
                    RoutePath::Template(p.value.clone())
                }
                Err(e) => {
                    d.push(file, pos_of(p), format!("route '{}': {e}", r.name));
                    RoutePath::Template(p.value.clone())
                }
            },
            (None, Some(re)) => {
                if d.0.len() == errors_before {
                    if let Err(e) = matcher.add_regex(id, &r.name, &re.value, methods.clone()) {
                        d.push(file, pos_of(re), format!("route '{}': {e}", r.name));
                    }
                }
                RoutePath::Regex(re.value.clone())
            }
            _ => {
                d.push(
                    file,
                    at,
                    format!(
                        "route '{}' needs exactly one of 'path' and 'path_regex'",
                        r.name
                    ),
                );
                RoutePath::Template(String::new())
            }
        };
        routes.push(Route {
            name: r.name.clone(),
            methods,
            path,
            require,
            public: r.public,
            upstream,
            fields: r.fields.as_ref().map(|f| f.value.clone()),
            passthrough_types,
            passthrough_headers,
            carries_phi: false,
            line: at.line,
            name_header: http::HeaderValue::from_str(&r.name).ok(),
        });
    }
    Some((routes, matcher))
}

fn upstream_names(s: &Settings) -> String {
    s.upstreams
        .iter()
        .map(|u| u.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn compile_access(file: &Path, text: &str, d: &mut Diagnostics) -> Option<AccessModel> {
    let raw: RawAccess = match parse_yaml(file, text) {
        Ok(r) => r,
        Err(e) => {
            d.extend(e);
            return None;
        }
    };
    let before = d.0.len();
    let mut policies = Vec::new();
    for (name, p) in &raw.policies {
        let at = pos_of(p);
        let phi = p.value.tags.iter().any(|t| t == "PHI");
        let non_phi = p.value.tags.iter().any(|t| t == "non-PHI");
        for t in &p.value.tags {
            if t != "PHI" && t != "non-PHI" {
                d.push(
                    file,
                    at,
                    format!("policy '{name}': unknown tag '{t}' (use PHI or non-PHI)"),
                );
            }
        }
        if phi == non_phi {
            d.push(
                file,
                at,
                format!("policy '{name}' must be tagged exactly one of PHI or non-PHI"),
            );
        }
        let _ = &p.value.description;
        let mut patterns = Vec::new();
        for perm in &p.value.permissions {
            match Pattern::parse(perm) {
                Ok(pat) => patterns.push(pat),
                Err(e) => d.push(file, at, format!("policy '{name}': {e}")),
            }
        }
        policies.push(Policy {
            name: name.clone(),
            phi,
            patterns,
        });
    }
    let policy_ix: HashMap<&str, usize> = raw
        .policies
        .keys()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let lookup_policies =
        |owner: &str, names: &[String], at: Pos, d: &mut Diagnostics| -> Vec<usize> {
            names
                .iter()
                .filter_map(|n| {
                    let ix = policy_ix.get(n.as_str()).copied();
                    if ix.is_none() {
                        d.push(file, at, format!("{owner}: unknown policy '{n}'"));
                    }
                    ix
                })
                .collect()
        };
    let mut roles = Vec::new();
    for (name, r) in &raw.roles {
        let _ = &r.value.description;
        roles.push(Role {
            name: name.clone(),
            policies: lookup_policies(&format!("role '{name}'"), &r.value.policies, pos_of(r), d),
        });
    }
    let role_ix: HashMap<&str, usize> = raw
        .roles
        .keys()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    let lookup_roles =
        |owner: &str, names: &[String], at: Pos, d: &mut Diagnostics| -> Vec<usize> {
            names
                .iter()
                .filter_map(|n| {
                    let ix = role_ix.get(n.as_str()).copied();
                    if ix.is_none() {
                        d.push(file, at, format!("{owner}: unknown role '{n}'"));
                    }
                    ix
                })
                .collect()
        };
    let patterns = |owner: &str, list: &[String], at: Pos, d: &mut Diagnostics| -> Vec<Pattern> {
        list.iter()
            .filter_map(|p| {
                Pattern::parse(p)
                    .map_err(|e| d.push(file, at, format!("{owner}: {e}")))
                    .ok()
            })
            .collect()
    };
    let mut users = Vec::new();
    let mut dpos = Vec::new();
    for (name, u) in &raw.users {
        let at = pos_of(u);
        let owner = format!("user '{name}'");
        if name.trim().is_empty() {
            d.push(file, at, "a user needs a non-empty name");
        }
        if u.value.data_access == DataAccess::Dpo {
            dpos.push((name.clone(), at));
        }
        users.push(UserEntry {
            name: name.clone(),
            roles: lookup_roles(&owner, &u.value.roles, at, d),
            policies: lookup_policies(&owner, &u.value.policies, at, d),
            allow: patterns(&owner, &u.value.allow, at, d),
            deny: patterns(&owner, &u.value.deny, at, d),
            data_access: u.value.data_access,
        });
    }
    let defaults = match &raw.defaults {
        Some(def) => UserEntry {
            name: String::new(),
            roles: lookup_roles("defaults", &def.value.roles, pos_of(def), d),
            policies: lookup_policies("defaults", &def.value.policies, pos_of(def), d),
            allow: Vec::new(),
            deny: Vec::new(),
            data_access: DataAccess::Anonymized,
        },
        None => UserEntry {
            name: String::new(),
            roles: Vec::new(),
            policies: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            data_access: DataAccess::Anonymized,
        },
    };
    let dpo = match dpos.as_slice() {
        [(name, _)] => name.clone(),
        [] => {
            d.push(file, Pos::default(), "exactly one user must have 'data_access: dpo' (the Data Privacy Officer); there is none");
            String::new()
        }
        [(first, _), rest @ ..] => {
            for (name, at) in rest {
                d.push(
                    file,
                    *at,
                    format!("user '{name}' is a second 'data_access: dpo'; '{first}' already is the one Data Privacy Officer"),
                );
            }
            String::new()
        }
    };
    if d.0.len() > before {
        return None;
    }
    Some(AccessModel::new(policies, roles, users, defaults, dpo))
}
