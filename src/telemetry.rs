//! Metrics in Prometheus text format, kept per gateway instance (so several gateways in one
//! process, as in tests, never mix their figures). Labels are routes, decisions and
//! statuses: never users, paths or values.

use crate::server::workers::{current_shard, SHARDS};
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

/// What every request counts, one copy per worker (`workers::SHARDS`); summed when rendered.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    /// (route, decision, status) -> count. A short critical section, never across an await.
    requests: Mutex<BTreeMap<String, ByOutcome>>,
    latency_allow: Histogram,
    latency_deny: Histogram,
    masked_responses: AtomicU64,
    masked_fields: AtomicU64,
    token_cache_hits: AtomicU64,
    token_cache_misses: AtomicU64,
    permission_cache_hits: AtomicU64,
    permission_cache_misses: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    shards: [Shard; SHARDS],
    pub upstream_errors: AtomicU64,
    pub upstream_timeouts: AtomicU64,
    pub reload_success: AtomicU64,
    pub reload_failure: AtomicU64,
    pub last_reload_success_unix: AtomicU64,
    pub rules_generation: AtomicU64,
    pub open_connections: AtomicI64,
    pub audit_write_failures: AtomicU64,
}

impl Metrics {
    /// This thread's shard: its own on a worker, shard 0 elsewhere.
    fn shard(&self) -> &Shard {
        &self.shards[current_shard()]
    }

    fn sum(&self, f: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum()
    }

    pub fn token_cache(&self, hit: bool) {
        let s = self.shard();
        hit_or_miss(hit, &s.token_cache_hits, &s.token_cache_misses);
    }

    pub fn permission_cache(&self, hit: bool) {
        let s = self.shard();
        hit_or_miss(hit, &s.permission_cache_hits, &s.permission_cache_misses);
    }

    /// One response masked, with `fields` values masked in it.
    pub fn masked(&self, fields: u64) {
        let s = self.shard();
        s.masked_responses.fetch_add(1, Ordering::Relaxed);
        s.masked_fields.fetch_add(fields, Ordering::Relaxed);
    }

    pub fn request(&self, route: Option<&str>, allowed: bool, status: u16, latency: Duration) {
        let decision = if allowed { "allow" } else { "deny" };
        let shard = self.shard();
        {
            let mut map = shard.requests.lock().unwrap_or_else(|p| p.into_inner());
            let route = route.unwrap_or("");
            // Look up by &str first: the route's name is allocated once, not per request.
            let per_route = match map.get_mut(route) {
                Some(m) => m,
                None => map.entry(route.to_string()).or_default(),
            };
            *per_route.entry((decision, status)).or_default() += 1;
        }
        if allowed {
            &shard.latency_allow
        } else {
            &shard.latency_deny
        }
        .observe(latency);
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP phigate_requests_total Requests by route, decision and status.\n# TYPE phigate_requests_total counter\n");
        let mut requests: BTreeMap<String, ByOutcome> = BTreeMap::new();
        for shard in &self.shards {
            let map = shard.requests.lock().unwrap_or_else(|p| p.into_inner());
            for (route, m) in map.iter() {
                let into = requests.entry(route.clone()).or_default();
                for (k, n) in m {
                    *into.entry(*k).or_default() += n;
                }
            }
        }
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
        for (decision, allowed) in [("allow", true), ("deny", false)] {
            let hs: Vec<&Histogram> = self
                .shards
                .iter()
                .map(|s| {
                    if allowed {
                        &s.latency_allow
                    } else {
                        &s.latency_deny
                    }
                })
                .collect();
            let total = |f: &dyn Fn(&Histogram) -> &AtomicU64| -> u64 {
                hs.iter().map(|h| f(h).load(Ordering::Relaxed)).sum()
            };
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += total(&|h| &h.counts[i]);
                let _ = writeln!(out, "phigate_request_duration_seconds_bucket{{decision=\"{decision}\",le=\"{b}\"}} {cumulative}");
            }
            cumulative += total(&|h| &h.inf);
            let _ = writeln!(out, "phigate_request_duration_seconds_bucket{{decision=\"{decision}\",le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(
                out,
                "phigate_request_duration_seconds_sum{{decision=\"{decision}\"}} {}",
                total(&|h| &h.sum_us) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "phigate_request_duration_seconds_count{{decision=\"{decision}\"}} {cumulative}"
            );
        }
        let counters: [(&str, &str, u64); 12] = [
            (
                "phigate_masked_responses_total",
                "Responses masked for anonymized callers.",
                self.sum(|s| &s.masked_responses),
            ),
            (
                "phigate_masked_fields_total",
                "Values masked in responses.",
                self.sum(|s| &s.masked_fields),
            ),
            (
                "phigate_upstream_errors_total",
                "Upstream connection or protocol failures.",
                self.upstream_errors.load(Ordering::Relaxed),
            ),
            (
                "phigate_upstream_timeouts_total",
                "Upstream responses that timed out.",
                self.upstream_timeouts.load(Ordering::Relaxed),
            ),
            (
                "phigate_rules_reload_success_total",
                "Rule reloads swapped in.",
                self.reload_success.load(Ordering::Relaxed),
            ),
            (
                "phigate_rules_reload_failure_total",
                "Rule reloads refused; the last good rules stayed.",
                self.reload_failure.load(Ordering::Relaxed),
            ),
            (
                "phigate_token_cache_hits_total",
                "Verified-token cache hits.",
                self.sum(|s| &s.token_cache_hits),
            ),
            (
                "phigate_token_cache_misses_total",
                "Verified-token cache misses.",
                self.sum(|s| &s.token_cache_misses),
            ),
            (
                "phigate_permission_cache_hits_total",
                "Resolved-permission cache hits.",
                self.sum(|s| &s.permission_cache_hits),
            ),
            (
                "phigate_permission_cache_misses_total",
                "Resolved-permission cache misses.",
                self.sum(|s| &s.permission_cache_misses),
            ),
            (
                "phigate_audit_write_failures_total",
                "Audit records that could not be written.",
                self.audit_write_failures.load(Ordering::Relaxed),
            ),
            (
                "phigate_rules_generation",
                "Generation of the rules in force.",
                self.rules_generation.load(Ordering::Relaxed),
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
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP phigate_rules_last_reload_success_timestamp_seconds When rules were last loaded.\n# TYPE phigate_rules_last_reload_success_timestamp_seconds gauge\nphigate_rules_last_reload_success_timestamp_seconds {}",
            self.last_reload_success_unix.load(Ordering::Relaxed)
        );
        let ratio = |h: u64, m: u64| {
            let (h, m) = (h as f64, m as f64);
            if h + m == 0.0 {
                0.0
            } else {
                h / (h + m)
            }
        };
        let _ = writeln!(
            out,
            "# HELP phigate_cache_hit_ratio Hit ratio of the gateway's caches.\n# TYPE phigate_cache_hit_ratio gauge\nphigate_cache_hit_ratio{{cache=\"token\"}} {}\nphigate_cache_hit_ratio{{cache=\"permission\"}} {}",
            ratio(
                self.sum(|s| &s.token_cache_hits),
                self.sum(|s| &s.token_cache_misses),
            ),
            ratio(
                self.sum(|s| &s.permission_cache_hits),
                self.sum(|s| &s.permission_cache_misses),
            )
        );
        let _ = writeln!(
            out,
            "# HELP phigate_open_connections Client connections open now.\n# TYPE phigate_open_connections gauge\nphigate_open_connections {}",
            self.open_connections.load(Ordering::Relaxed)
        );
        out
    }
}

fn hit_or_miss(hit: bool, hits: &AtomicU64, misses: &AtomicU64) {
    if hit { hits } else { misses }.fetch_add(1, Ordering::Relaxed);
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

    /// Each worker counts in its own shard; what is rendered is the sum over all of them.
    #[test]
    fn counts_from_every_worker_are_summed() {
        let m = std::sync::Arc::new(Metrics::default());
        let w =
            crate::server::workers::Workers::start(3, crate::server::workers::Placement::Spread)
                .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..6u64 {
            let (m, tx) = (m.clone(), tx.clone());
            w.spawn(async move {
                m.request(Some("r"), true, 200, Duration::from_micros(100));
                m.token_cache(i % 2 == 0);
                m.masked(i);
                tx.send(()).unwrap();
            });
        }
        for _ in 0..6 {
            rx.recv().unwrap();
        }
        m.request(Some("r"), true, 200, Duration::from_micros(100));
        w.stop();
        let text = m.render();
        assert!(
            text.contains(
                "phigate_requests_total{route=\"r\",decision=\"allow\",status=\"200\"} 7"
            ),
            "{text}"
        );
        assert!(
            text.contains("phigate_request_duration_seconds_count{decision=\"allow\"} 7"),
            "{text}"
        );
        assert!(text.contains("phigate_token_cache_hits_total 3"), "{text}");
        assert!(
            text.contains("phigate_token_cache_misses_total 3"),
            "{text}"
        );
        assert!(text.contains("phigate_masked_responses_total 6"), "{text}");
        assert!(text.contains("phigate_masked_fields_total 15"), "{text}");
        assert!(
            text.contains("phigate_cache_hit_ratio{cache=\"token\"} 0.5"),
            "{text}"
        );
    }
}
