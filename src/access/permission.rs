//! Permissions are `feature:resource:action` (two to four segments, e.g. `report:export`);
//! a grant may use `*` for one whole segment, and `*` alone grants everything.

use std::fmt;

/// A concrete permission a route requires, e.g. `cdp:patient:view`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission(String);

/// A granted or denied pattern, e.g. `map:embed:*`; `None` segments are `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    /// `None` for the lone `*` (everything).
    segs: Option<Vec<Option<String>>>,
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' || b == b'.'
        })
}

fn split(s: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = s.split(':').collect();
    (2..=4).contains(&parts.len()).then_some(parts)
}

impl Permission {
    pub fn parse(s: &str) -> Result<Self, String> {
        match split(s) {
            Some(parts) if parts.iter().all(|p| valid_segment(p)) => Ok(Permission(s.to_string())),
            Some(parts) if parts.contains(&"*") => Err(format!(
                "'{s}': a route requires concrete permissions; '*' is only for grants"
            )),
            _ => Err(format!(
                "'{s}' is not a permission: expected feature:resource:action, two to four segments (lower-case letters, digits, '_', '-', '.')"
            )),
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Pattern {
                text: s.into(),
                segs: None,
            });
        }
        let parts = split(s).ok_or_else(|| {
            format!("'{s}' is not a permission pattern: expected feature:resource:action, '*' for a whole segment")
        })?;
        let mut segs = Vec::with_capacity(parts.len());
        for p in parts {
            if p == "*" {
                segs.push(None);
            } else if valid_segment(p) {
                segs.push(Some(p.to_string()));
            } else {
                return Err(format!(
                    "'{s}': segment '{p}' must be '*' or lower-case letters, digits, '_', '-', '.'"
                ));
            }
        }
        Ok(Pattern {
            text: s.to_string(),
            segs: Some(segs),
        })
    }

    pub fn matches(&self, p: &Permission) -> bool {
        let Some(segs) = &self.segs else { return true };
        let mut parts = p.0.split(':');
        segs.iter().all(|want| match (want, parts.next()) {
            (None, Some(_)) => true,
            (Some(w), Some(got)) => w == got,
            (_, None) => false,
        }) && parts.next().is_none()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `*` or all-wildcard patterns like `*:*:*`.
    pub fn is_catch_all(&self) -> bool {
        self.segs
            .as_ref()
            .is_none_or(|s| s.iter().all(Option::is_none))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_one_segment_per_star() {
        let p = Pattern::parse("map:embed:*").unwrap();
        assert!(p.matches(&Permission::parse("map:embed:view").unwrap()));
        assert!(!p.matches(&Permission::parse("map:other:view").unwrap()));
        let three = Pattern::parse("*:*:*").unwrap();
        assert!(three.matches(&Permission::parse("cdp:patient:view").unwrap()));
        assert!(!three.matches(&Permission::parse("report:export").unwrap()));
        let all = Pattern::parse("*").unwrap();
        assert!(all.matches(&Permission::parse("report:export").unwrap()));
        let two = Pattern::parse("report:*").unwrap();
        assert!(two.matches(&Permission::parse("report:export").unwrap()));
        assert!(!two.matches(&Permission::parse("report:export:csv").unwrap()));
    }

    #[test]
    fn malformed_permissions_are_rejected() {
        for bad in [
            "cdp",
            "a:b:c:d:e",
            "CDP:patient:view",
            "cdp::view",
            "cdp:pat ient:view",
            "",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
            assert!(Permission::parse(bad).is_err(), "{bad}");
        }
        assert!(Permission::parse("map:embed:*").is_err());
        assert!(Pattern::parse("map:emb*:view").is_err());
    }
}
