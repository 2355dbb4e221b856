//! Audit records: one JSON line per request. Paths, routes, permissions and decisions;
//! never a token, a body or a masked value.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::StatusCode;
use serde_json::json;

use crate::access::PermissionVerdict;
use crate::error::GatewayError;
use crate::proxy::RequestCtx;

/// Long lists are cut so one record stays one reasonable line; the count is always whole.
const MAX_AUDIT_PATHS: usize = 200;

/// Builds the audit record of a finished request.
pub fn build(
    ctx: &RequestCtx,
    status: StatusCode,
    refusal: Option<&GatewayError>,
) -> serde_json::Value {
    let route = ctx.route();
    let granted_by: Vec<serde_json::Value> = ctx
        .verdicts
        .iter()
        .filter_map(|v| match v {
            PermissionVerdict::Granted {
                permission, source, ..
            } => Some(json!({ "permission": permission, "source": source.to_string() })),
            _ => None,
        })
        .collect();
    json!({
        "type": "request",
        "ts": humantime_now(),
        "request_id": ctx.request_id,
        "user": ctx.identity.as_ref().map(|i| i.user.as_str()),
        "data_access": ctx.resolved.as_ref().map(|r| r.data_access.as_str()),
        "route": route.map(|r| r.name.as_str()),
        "method": ctx.method.as_str(),
        "path": ctx.canonical_path,
        "required": route.map(|r| r.require.iter().map(|p| p.as_str()).collect::<Vec<_>>()),
        "decision": if refusal.is_some() { "deny" } else { "allow" },
        "reason": refusal.map_or(if route.is_some_and(|r| r.public) { "public_route" } else { "granted" }, |e| e.reason()),
        "granted_by": granted_by,
        "masked_count": ctx.masked.as_ref().map(|m| m.count),
        "masked_paths": ctx.masked.as_ref().map(|m| m.paths.iter().take(MAX_AUDIT_PATHS).collect::<Vec<_>>()),
        "masked_paths_truncated": ctx.masked.as_ref().is_some_and(|m| m.paths.len() > MAX_AUDIT_PATHS),
        "status": status.as_u16(),
        "upstream_status": ctx.upstream_status,
        "latency_ms": ctx.started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    Stdout,
    /// Opened for append only; never truncated or rewritten.
    File(PathBuf),
    /// Records are only counted (tests and `check`).
    Discard,
}

/// The audit log: one JSON line per event. A failed write is never silent: it is counted,
/// logged and shown on `/readyz`.
pub struct AuditLog {
    out: Mutex<Box<dyn Write + Send>>,
    failures: Arc<AtomicU64>,
    written: AtomicU64,
}

impl AuditLog {
    pub fn open(sink: &AuditSink) -> std::io::Result<AuditLog> {
        let out: Box<dyn Write + Send> = match sink {
            AuditSink::Stdout => Box::new(std::io::stdout()),
            AuditSink::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            AuditSink::Discard => Box::new(std::io::sink()),
        };
        Ok(AuditLog {
            out: Mutex::new(out),
            failures: Arc::default(),
            written: AtomicU64::new(0),
        })
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    pub fn write(&self, record: &serde_json::Value) {
        let mut line = record.to_string();
        line.push('\n');
        // One write per record under the lock, so lines never interleave.
        let result = {
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            out.write_all(line.as_bytes()).and_then(|()| out.flush())
        };
        match result {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "audit record could not be written");
            }
        }
    }

    pub fn request(&self, ctx: &RequestCtx, status: StatusCode, refusal: Option<&GatewayError>) {
        self.write(&build(ctx, status, refusal));
    }

    /// One record per rules reload, successful or not.
    pub fn reload(&self, trigger: &str, outcome: Result<(&str, u64), &str>) {
        let rec = match outcome {
            Ok((sha, generation)) => json!({
                "type": "rules_reload", "ts": humantime_now(), "trigger": trigger, "outcome": "success",
                "rules_sha256": sha, "generation": generation,
            }),
            Err(error) => json!({
                "type": "rules_reload", "ts": humantime_now(), "trigger": trigger, "outcome": "failure", "error": error,
            }),
        };
        self.write(&rec);
    }

    /// One record per admin action (explain, reload over the admin API).
    pub fn admin(
        &self,
        action: &str,
        user: Option<&str>,
        allowed: bool,
        detail: serde_json::Value,
    ) {
        self.write(&json!({
            "type": "admin", "ts": humantime_now(), "action": action, "user": user,
            "decision": if allowed { "allow" } else { "deny" }, "detail": detail,
        }));
    }
}

/// RFC 3339 UTC timestamp with milliseconds, without pulling in a date crate.
pub fn humantime_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_millis())
}

pub fn rfc3339(secs: u64, millis: u32) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_timestamps() {
        assert_eq!(super::rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(1_795_000_000, 5), "2026-11-18T11:06:40.005Z");
    }
}
