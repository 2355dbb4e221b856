//! Live reload: the rules directory is watched (the directory, not single files, so a
//! Kubernetes ConfigMap's `..data` symlink swap is seen), polled as a fallback, and reloaded
//! on SIGHUP. A reload builds and checks a whole new snapshot and only then swaps it in
//! atomically; a failed reload keeps the last good rules in force and reports why.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::rules::RuleSnapshot;
use super::settings::Settings;
use crate::audit::AuditLog;
use crate::telemetry::Metrics;

/// Extra checks a new snapshot must pass before it is swapped in (the rule tests).
pub type Gate = Box<dyn Fn(&RuleSnapshot) -> Result<(), String> + Send + Sync>;

#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub generation: u64,
    pub loaded_at: Option<SystemTime>,
    pub last_error: Option<(SystemTime, String)>,
    /// The sha256 of the file contents that last failed, so the poll does not retry them.
    failed_sha: Option<String>,
}

pub struct RulesHandle {
    pub current: Arc<ArcSwap<RuleSnapshot>>,
    settings: Arc<Settings>,
    status: Mutex<ReloadStatus>,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
    gate: Option<Gate>,
    /// Reloads run one at a time.
    reload_lock: Mutex<()>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl RulesHandle {
    pub fn new(
        first: RuleSnapshot,
        settings: Arc<Settings>,
        audit: Arc<AuditLog>,
        metrics: Arc<Metrics>,
        gate: Option<Gate>,
    ) -> Arc<RulesHandle> {
        let loaded_at = first.loaded_at;
        audit.reload("start", Ok((&first.sha256, 1)));
        metrics.rules_generation.store(1, Ordering::Relaxed);
        metrics
            .last_reload_success_unix
            .store(unix(loaded_at), Ordering::Relaxed);
        Arc::new(RulesHandle {
            current: Arc::new(ArcSwap::from_pointee(first)),
            settings,
            status: Mutex::new(ReloadStatus {
                generation: 1,
                loaded_at: Some(loaded_at),
                ..Default::default()
            }),
            audit,
            metrics,
            gate,
            reload_lock: Mutex::new(()),
        })
    }

    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn status_json(&self) -> serde_json::Value {
        let st = self.status();
        let snap = self.current.load();
        json!({
            "rules_dir": self.settings.rules_dir.display().to_string(),
            "generation": st.generation,
            "rules_sha256": snap.sha256,
            "loaded_at": st.loaded_at.map(|t| crate::audit::rfc3339(unix(t), 0)),
            "routes": snap.routes.len(),
            "last_reload_error": st.last_error.as_ref().map(|(t, e)| json!({"at": crate::audit::rfc3339(unix(*t), 0), "error": e})),
        })
    }

    /// Reloads if the files changed (or always, when `force`). Returns whether new rules
    /// were swapped in. Blocking: call from a blocking thread.
    pub fn reload(&self, trigger: &str, force: bool) -> Result<bool, String> {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let sources = match RuleSnapshot::read_sources(&self.settings.rules_dir) {
            Ok(s) => s,
            Err(d) => return self.fail(trigger, None, d.to_string()),
        };
        let sha = sources.sha256();
        if !force {
            let st = self.status();
            if sha == self.current.load().sha256 || st.failed_sha.as_deref() == Some(sha.as_str()) {
                return Ok(false);
            }
        }
        let snapshot =
            match RuleSnapshot::compile(&sources, &self.settings, &|n| std::env::var(n).ok()) {
                Ok(s) => s,
                Err(d) => return self.fail(trigger, Some(sha), d.to_string()),
            };
        if let Some(gate) = &self.gate {
            if let Err(e) = gate(&snapshot) {
                return self.fail(
                    trigger,
                    Some(sha),
                    format!("rule tests failed, rules not applied:\n{e}"),
                );
            }
        }
        let generation = {
            let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            st.generation += 1;
            st.loaded_at = Some(snapshot.loaded_at);
            st.last_error = None;
            st.failed_sha = None;
            st.generation
        };
        self.audit
            .reload(trigger, Ok((&snapshot.sha256, generation)));
        tracing::info!(trigger, generation, sha256 = %snapshot.sha256, "rules reloaded");
        self.metrics.reload_success.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .rules_generation
            .store(generation, Ordering::Relaxed);
        self.metrics
            .last_reload_success_unix
            .store(unix(snapshot.loaded_at), Ordering::Relaxed);
        // The swap: requests in flight keep the snapshot they loaded; caches live inside it.
        self.current.store(Arc::new(snapshot));
        Ok(true)
    }

    fn fail(&self, trigger: &str, sha: Option<String>, error: String) -> Result<bool, String> {
        tracing::error!(
            trigger,
            "rules reload failed; the last good rules stay in force:\n{error}"
        );
        {
            let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            st.last_error = Some((SystemTime::now(), error.clone()));
            st.failed_sha = sha;
        }
        self.audit.reload(trigger, Err(&error));
        self.metrics.reload_failure.fetch_add(1, Ordering::Relaxed);
        Err(error)
    }
}

/// Watches the rules directory and polls it; runs until `shutdown`.
pub async fn watch(handle: Arc<RulesHandle>, mut shutdown: watch::Receiver<bool>) {
    let dir = handle.settings.rules_dir.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    // The watcher lives as long as this task; if it cannot start, the poll still works.
    let _watcher = {
        use notify::Watcher;
        let tx = tx.clone();
        match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if ev.is_ok() {
                let _ = tx.send(());
            }
        }) {
            Ok(mut w) => match w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => Some(w),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the rules directory; polling only");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "no file watcher; polling only");
                None
            }
        }
    };
    let settings = handle.settings.reload.clone();
    let mut poll = tokio::time::interval(settings.poll_interval);
    poll.tick().await;
    loop {
        let trigger = tokio::select! {
            _ = shutdown.changed() => return,
            Some(()) = rx.recv() => {
                // Debounce: editors and ConfigMap swaps write in several steps.
                tokio::time::sleep(settings.debounce).await;
                while rx.try_recv().is_ok() {}
                "watch"
            }
            _ = poll.tick() => "poll",
        };
        let h = handle.clone();
        let _ = tokio::task::spawn_blocking(move || h.reload(trigger, false)).await;
    }
}
