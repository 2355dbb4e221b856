//! Who holds what: reusable policies bound to roles or users, plus per-user inline
//! exceptions (an explicit deny always wins). Resolved once per user and cached per snapshot.

pub mod permission;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

pub use permission::{Pattern, Permission};

/// How much of PII/PHI a caller may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DataAccess {
    /// The Data Privacy Officer: sees everything and owns the field rules.
    Dpo,
    /// Sees PII/PHI unmasked.
    Full,
    /// Sees masked responses: the default and the safe choice.
    #[default]
    Anonymized,
}

impl DataAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            DataAccess::Dpo => "dpo",
            DataAccess::Full => "full",
            DataAccess::Anonymized => "anonymized",
        }
    }
    pub fn sees_raw(self) -> bool {
        !matches!(self, DataAccess::Anonymized)
    }
}

impl fmt::Display for DataAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub phi: bool,
    pub patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    pub policies: Vec<usize>,
}

/// A user as written in access.yaml (or the defaults for everyone else).
#[derive(Debug, Clone)]
pub struct UserEntry {
    pub name: String,
    pub roles: Vec<usize>,
    pub policies: Vec<usize>,
    pub allow: Vec<Pattern>,
    pub deny: Vec<Pattern>,
    pub data_access: DataAccess,
}

/// Where a grant came from, for explanations and audit records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum Source {
    Role { role: String, policy: String },
    Policy { policy: String },
    InlineAllow,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Role { role, policy } => write!(f, "role {role} -> policy {policy}"),
            Source::Policy { policy } => write!(f, "policy {policy}"),
            Source::InlineAllow => f.write_str("inline allow"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Grant {
    pub pattern: Pattern,
    pub source: Source,
    pub phi: bool,
}

/// The verdict on one required permission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PermissionVerdict {
    Granted {
        permission: String,
        pattern: String,
        source: Source,
        phi: bool,
    },
    Denied {
        permission: String,
        pattern: String,
    },
    NotGranted {
        permission: String,
    },
}

impl PermissionVerdict {
    pub fn is_granted(&self) -> bool {
        matches!(self, PermissionVerdict::Granted { .. })
    }
}

/// Everything one caller holds, resolved from roles, policies and inline exceptions.
#[derive(Debug)]
pub struct Resolved {
    pub user: String,
    pub listed: bool,
    pub data_access: DataAccess,
    pub grants: Vec<Grant>,
    pub denies: Vec<Pattern>,
}

impl Resolved {
    pub fn verdict(&self, p: &Permission) -> PermissionVerdict {
        if let Some(d) = self.denies.iter().find(|d| d.matches(p)) {
            return PermissionVerdict::Denied {
                permission: p.to_string(),
                pattern: d.to_string(),
            };
        }
        match self.grants.iter().find(|g| g.pattern.matches(p)) {
            Some(g) => PermissionVerdict::Granted {
                permission: p.to_string(),
                pattern: g.pattern.to_string(),
                source: g.source.clone(),
                phi: g.phi,
            },
            None => PermissionVerdict::NotGranted {
                permission: p.to_string(),
            },
        }
    }

    /// Verdicts for all of a route's permissions (every one must be granted).
    pub fn check(&self, required: &[Permission]) -> Vec<PermissionVerdict> {
        required.iter().map(|p| self.verdict(p)).collect()
    }
}

/// The compiled access.yaml.
pub struct AccessModel {
    pub policies: Vec<Policy>,
    pub roles: Vec<Role>,
    pub users: HashMap<String, UserEntry>,
    /// In file order, for reports.
    pub user_order: Vec<String>,
    pub defaults: UserEntry,
    pub dpo: String,
    /// foldhash: keys are user names from verified tokens only.
    cache: moka::sync::Cache<String, Arc<Resolved>, foldhash::fast::RandomState>,
}

impl AccessModel {
    pub fn new(
        policies: Vec<Policy>,
        roles: Vec<Role>,
        users: Vec<UserEntry>,
        defaults: UserEntry,
        dpo: String,
    ) -> Self {
        let user_order = users.iter().map(|u| u.name.clone()).collect();
        AccessModel {
            policies,
            roles,
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            user_order,
            defaults,
            dpo,
            // Bounded: unlisted callers are resolved from the defaults and cached too.
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .build_with_hasher(foldhash::fast::RandomState::default()),
        }
    }

    /// The caller's resolved permissions, cached for the life of this rules snapshot.
    pub fn resolve(&self, user: &str) -> Arc<Resolved> {
        self.resolve_cached(user).0
    }

    /// Like `resolve`, also telling whether the answer came from the cache.
    pub fn resolve_cached(&self, user: &str) -> (Arc<Resolved>, bool) {
        if let Some(hit) = self.cache.get(user) {
            return (hit, true);
        }
        let resolved = Arc::new(self.resolve_uncached(user));
        self.cache.insert(user.to_string(), resolved.clone());
        (resolved, false)
    }

    pub fn resolve_uncached(&self, user: &str) -> Resolved {
        let (entry, listed) = match self.users.get(user) {
            Some(u) => (u, true),
            None => (&self.defaults, false),
        };
        let mut grants = Vec::new();
        for &r in &entry.roles {
            let role = &self.roles[r];
            for &p in &role.policies {
                let policy = &self.policies[p];
                for pat in &policy.patterns {
                    grants.push(Grant {
                        pattern: pat.clone(),
                        source: Source::Role {
                            role: role.name.clone(),
                            policy: policy.name.clone(),
                        },
                        phi: policy.phi,
                    });
                }
            }
        }
        for &p in &entry.policies {
            let policy = &self.policies[p];
            for pat in &policy.patterns {
                grants.push(Grant {
                    pattern: pat.clone(),
                    source: Source::Policy {
                        policy: policy.name.clone(),
                    },
                    phi: policy.phi,
                });
            }
        }
        for pat in &entry.allow {
            grants.push(Grant {
                pattern: pat.clone(),
                source: Source::InlineAllow,
                phi: false,
            });
        }
        Resolved {
            user: user.to_string(),
            listed,
            data_access: if listed {
                entry.data_access
            } else {
                DataAccess::Anonymized
            },
            grants,
            denies: entry.deny.clone(),
        }
    }

    /// Whether a PHI-tagged policy names this permission (for `check`'s PHI route warnings).
    /// Catch-all patterns (`*`, `*:*:*`) do not count: they would make every route PHI.
    pub fn is_phi_permission(&self, p: &Permission) -> bool {
        self.policies.iter().any(|pol| {
            pol.phi
                && pol
                    .patterns
                    .iter()
                    .any(|pat| !pat.is_catch_all() && pat.matches(p))
        })
    }

    pub fn cache_entries(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}
