//! The decision itself, as pure functions of a rules snapshot: which route, is the caller
//! permitted, is the response masked. The proxy, `explain`, `test` and the admin
//! `/explain` all use these, so what they report is what the gateway enforces.

use std::sync::Arc;

use http::Method;

use crate::access::{PermissionVerdict, Resolved};
use crate::config::rules::{Route, RuleSnapshot};
use crate::error::GatewayError;
use crate::masking::FieldSet;
use crate::routing::matcher::RouteMatch;

/// Route phase: the most specific route, or a refusal (default deny).
pub fn find_route(
    rules: &RuleSnapshot,
    method: &Method,
    canonical: &str,
) -> Result<usize, GatewayError> {
    match rules.matcher.find(method, canonical) {
        RouteMatch::Found(ix) => Ok(ix),
        RouteMatch::NotFound => Err(GatewayError::NoRoute),
        RouteMatch::MethodNotAllowed(allowed) => Err(GatewayError::MethodNotAllowed(allowed)),
        RouteMatch::Ambiguous(ids) => {
            let names: Vec<&str> = ids.iter().map(|i| rules.routes[*i].name.as_str()).collect();
            tracing::error!(routes = ?names, "two path_regex routes match one request; refused");
            Err(GatewayError::AmbiguousRoute)
        }
    }
}

/// What the authorize phase concluded for one caller on one route.
pub struct Authorization {
    pub resolved: Arc<Resolved>,
    pub verdicts: Vec<PermissionVerdict>,
    pub cache_hit: bool,
    /// `Ok(Some(set))`: permitted, masked with `set`; `Ok(None)`: permitted, raw.
    pub outcome: Result<Option<Arc<FieldSet>>, GatewayError>,
}

/// Authorize phase: every required permission granted and none denied; then the masking
/// choice. An anonymized caller whose access comes from a PHI-tagged policy, on a route
/// without a field set, is refused: nobody said what to hide.
pub fn authorize(rules: &RuleSnapshot, route: &Route, user: &str) -> Authorization {
    let (resolved, cache_hit) = rules.access.resolve_cached(user);
    let (verdicts, outcome) = authorize_resolved(rules, route, &resolved);
    Authorization {
        resolved,
        verdicts,
        cache_hit,
        outcome,
    }
}

/// `authorize` for a caller already resolved: the verdicts and the outcome.
#[allow(clippy::type_complexity)]
pub fn authorize_resolved(
    rules: &RuleSnapshot,
    route: &Route,
    resolved: &Resolved,
) -> (
    Vec<PermissionVerdict>,
    Result<Option<Arc<FieldSet>>, GatewayError>,
) {
    let verdicts = resolved.check(&route.require);
    let outcome =
        permit(route, &verdicts).and_then(|()| masking(rules, route, resolved, &verdicts));
    (verdicts, outcome)
}

fn permit(route: &Route, verdicts: &[PermissionVerdict]) -> Result<(), GatewayError> {
    let missing: Vec<String> = verdicts
        .iter()
        .filter_map(|v| match v {
            PermissionVerdict::Granted { .. } => None,
            PermissionVerdict::Denied { permission, .. }
            | PermissionVerdict::NotGranted { permission } => Some(permission.clone()),
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let denied = verdicts
        .iter()
        .any(|v| matches!(v, PermissionVerdict::Denied { .. }));
    Err(GatewayError::Forbidden {
        route: route.name.clone(),
        detail: format!(
            "route '{}' requires {}{}",
            route.name,
            missing.join(", "),
            if denied {
                " (explicitly denied)"
            } else {
                " (not granted)"
            }
        ),
        missing,
    })
}

fn masking(
    rules: &RuleSnapshot,
    route: &Route,
    resolved: &Resolved,
    verdicts: &[PermissionVerdict],
) -> Result<Option<Arc<FieldSet>>, GatewayError> {
    if resolved.data_access.sees_raw() {
        return Ok(None);
    }
    match &route.fields {
        // Validation guarantees the set exists; if it did not, refuse rather than pass raw.
        Some(name) => rules
            .fields
            .as_ref()
            .and_then(|f| f.set(name))
            .cloned()
            .map(Some)
            .ok_or_else(|| {
                GatewayError::BadUpstreamResponse(format!("field set '{name}' is missing"))
            }),
        None if verdicts
            .iter()
            .any(|v| matches!(v, PermissionVerdict::Granted { phi: true, .. })) =>
        {
            Err(GatewayError::Forbidden {
                route: route.name.clone(),
                missing: Vec::new(),
                detail: format!(
                    "route '{}' carries PHI and names no field set; anonymized callers are refused",
                    route.name
                ),
            })
        }
        None => Ok(None),
    }
}
