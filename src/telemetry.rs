//! Metrics in Prometheus text format, kept per gateway instance (so several gateways in one
//! process, as in tests, never mix their figures). Labels are routes, decisions and
//! statuses: never users, paths or values.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    inf: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        match BUCKETS.iter().position(|b| s <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.inf.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// (decision, status) -> count, for one route.
type ByOutcome = BTreeMap<(&'static str, u16), u64>;

#[derive(Default)]
pub struct Metrics {
    /// (route, decision, status) -> count. A short critical section, never across an await.
    requests: Mutex<BTreeMap<String, ByOutcome>>,
    latency_allow: Histogram,
    latency_deny: Histogram,
    pub masked_responses: AtomicU64,
    pub masked_fields: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub upstream_timeouts: AtomicU64,
    pub reload_success: AtomicU64,
    pub reload_failure: AtomicU64,
    pub last_reload_success_unix: AtomicU64,
    pub rules_generation: AtomicU64,
    pub token_cache_hits: AtomicU64,
    pub token_cache_misses: AtomicU64,
    pub permission_cache_hits: AtomicU64,
    pub permission_cache_misses: AtomicU64,
    pub open_connections: AtomicI64,
    pub audit_write_failures: AtomicU64,
}

impl Metrics {
    pub fn request(&self, route: Option<&str>, allowed: bool, status: u16, latency: Duration) {
        let decision = if allowed { "allow" } else { "deny" };
        {
            let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            let route = route.unwrap_or("");
            // Look up by &str first: the route's name is allocated once, not per request.
            let per_route = match map.get_mut(route) {
                Some(m) => m,
                None => map.entry(route.to_string()).or_default(),
            };
            *per_route.entry((decision, status)).or_default() += 1;
        }
        if allowed {
            &self.latency_allow
        } else {
            &self.latency_deny
        }
        .observe(latency);
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP phigate_requests_total Requests by route, decision and status.\n# TYPE phigate_requests_total counter\n");
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let rows = requests.iter().flat_map(|(route, m)| {
            m.iter()
                .map(move |((decision, status), n)| (route, decision, status, n))
        });
        for (route, decision, status, n) in rows {
            let _ = writeln!(
                out,
                "phigate_requests_total{{route=\"{}\",decision=\"{decision}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        out.push_str("# HELP phigate_request_duration_seconds Time from request to response headers.\n# TYPE phigate_request_duration_seconds histogram\n");
        for (decision, h) in [("allow", &self.latency_allow), ("deny", &self.latency_deny)] {
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += h.counts[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "phigate_request_duration_seconds_bucket{{decision=\"{decision}\",le=\"{b}\"}} {cumulative}");
            }
            cumulative += h.inf.load(Ordering::Relaxed);
            let _ = writeln!(out, "phigate_request_duration_seconds_bucket{{decision=\"{decision}\",le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(
                out,
                "phigate_request_duration_seconds_sum{{decision=\"{decision}\"}} {}",
                h.sum_us.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "phigate_request_duration_seconds_count{{decision=\"{decision}\"}} {cumulative}"
            );
        }
        let counters: [(&str, &str, &AtomicU64); 12] = [
            (
                "phigate_masked_responses_total",
                "Responses masked for anonymized callers.",
                &self.masked_responses,
            ),
            (
                "phigate_masked_fields_total",
                "Values masked in responses.",
                &self.masked_fields,
            ),
            (
                "phigate_upstream_errors_total",
                "Upstream connection or protocol failures.",
                &self.upstream_errors,
            ),
            (
                "phigate_upstream_timeouts_total",
                "Upstream responses that timed out.",
                &self.upstream_timeouts,
            ),
            (
                "phigate_rules_reload_success_total",
                "Rule reloads swapped in.",
                &self.reload_success,
            ),
            (
                "phigate_rules_reload_failure_total",
                "Rule reloads refused; the last good rules stayed.",
                &self.reload_failure,
            ),
            (
                "phigate_token_cache_hits_total",
                "Verified-token cache hits.",
                &self.token_cache_hits,
            ),
            (
                "phigate_token_cache_misses_total",
                "Verified-token cache misses.",
                &self.token_cache_misses,
            ),
            (
                "phigate_permission_cache_hits_total",
                "Resolved-permission cache hits.",
                &self.permission_cache_hits,
            ),
            (
                "phigate_permission_cache_misses_total",
                "Resolved-permission cache misses.",
                &self.permission_cache_misses,
            ),
            (
                "phigate_audit_write_failures_total",
                "Audit records that could not be written.",
                &self.audit_write_failures,
            ),
            (
                "phigate_rules_generation",
                "Generation of the rules in force.",
                &self.rules_generation,
            ),
        ];
        for (name, help, v) in counters {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP phigate_rules_last_reload_success_timestamp_seconds When rules were last loaded.\n# TYPE phigate_rules_last_reload_success_timestamp_seconds gauge\nphigate_rules_last_reload_success_timestamp_seconds {}",
            self.last_reload_success_unix.load(Ordering::Relaxed)
        );
        let ratio = |h: &AtomicU64, m: &AtomicU64| {
            let (h, m) = (
                h.load(Ordering::Relaxed) as f64,
                m.load(Ordering::Relaxed) as f64,
            );
            if h + m == 0.0 {
                0.0
            } else {
                h / (h + m)
            }
        };
        let _ = writeln!(
            out,
            "# HELP phigate_cache_hit_ratio Hit ratio of the gateway's caches.\n# TYPE phigate_cache_hit_ratio gauge\nphigate_cache_hit_ratio{{cache=\"token\"}} {}\nphigate_cache_hit_ratio{{cache=\"permission\"}} {}",
            ratio(&self.token_cache_hits, &self.token_cache_misses),
            ratio(&self.permission_cache_hits, &self.permission_cache_misses)
        );
        let _ = writeln!(
            out,
            "# HELP phigate_open_connections Client connections open now.\n# TYPE phigate_open_connections gauge\nphigate_open_connections {}",
            self.open_connections.load(Ordering::Relaxed)
        );
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.request(Some("patient-list"), true, 200, Duration::from_micros(700));
        m.request(Some("patient-list"), true, 200, Duration::from_millis(3));
        m.request(None, false, 404, Duration::from_micros(100));
        let text = m.render();
        assert!(text.contains("phigate_requests_total{route=\"patient-list\",decision=\"allow\",status=\"200\"} 2"), "{text}");
        assert!(
            text.contains("phigate_requests_total{route=\"\",decision=\"deny\",status=\"404\"} 1")
        );
        assert!(text.contains(
            "phigate_request_duration_seconds_bucket{decision=\"allow\",le=\"0.001\"} 1"
        ));
        assert!(text.contains(
            "phigate_request_duration_seconds_bucket{decision=\"allow\",le=\"0.005\"} 2"
        ));
        assert!(text.contains("phigate_request_duration_seconds_count{decision=\"allow\"} 2"));
    }
}
