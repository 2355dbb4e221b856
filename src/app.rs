//! Wiring: settings + rules -> a running gateway (TLS listener, admin listener, rules
//! watcher). Used by `serve`, `demo` and the integration tests alike.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audit::AuditLog;
use crate::auth::jwt::{JwtVerifier, KeyError};
use crate::config::diag::Diagnostics;
use crate::config::reload::RulesHandle;
use crate::config::rules::RuleSnapshot;
use crate::config::settings::Settings;
use crate::proxy::upstream::{Upstream, UpstreamError};
use crate::proxy::Gateway;
use crate::server::admin::AdminState;
use crate::server::tls::TlsError;
use crate::server::workers::Workers;
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Rules(#[from] Diagnostics),
    #[error("rule tests failed:\n{0}")]
    RuleTests(String),
    #[error("{0}")]
    Keys(#[from] KeyError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A gateway running in this process.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub rules: Arc<ArcSwap<RuleSnapshot>>,
    pub rules_handle: Arc<RulesHandle>,
    pub gateway: Arc<Gateway>,
    pub tls: Arc<ArcSwap<rustls::ServerConfig>>,
    admin: Arc<AdminState>,
    workers: Arc<Workers>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.workers.stop();
    }
}

impl Running {
    /// Stops accepting, lets requests in flight finish (up to the shutdown deadline), and
    /// waits for the listeners to end.
    pub async fn shutdown(mut self) {
        self.admin.shutting_down.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        // Records still gathering for the writer thread reach the disk before we return.
        let audit = self.gateway.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.flush()).await;
    }

    /// Tasks alive on the connection workers (connections, requests, upstream connections).
    pub fn worker_tasks(&self) -> usize {
        self.workers.alive_tasks()
    }

    /// Reopens the audit file at its path (SIGHUP: after a rotation that renamed it).
    pub fn reopen_audit(&self) {
        self.gateway.audit.reopen();
    }

    /// Reloads the rules now (SIGHUP), even if the files look unchanged.
    pub async fn reload(&self, trigger: &'static str) -> Result<bool, String> {
        let h = self.rules_handle.clone();
        tokio::task::spawn_blocking(move || h.reload(trigger, true))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
    }
}

/// Loads rules and keys, binds the listeners and starts serving.
pub async fn start(
    settings: Settings,
    tls: Arc<rustls::ServerConfig>,
) -> Result<Running, StartError> {
    let snapshot = RuleSnapshot::load(&settings.rules_dir, &settings)?;
    let gate = crate::ruletest::gate_for(&settings.rules_dir, &settings);
    if let Some(g) = &gate {
        g(&snapshot).map_err(StartError::RuleTests)?;
    }
    let audit = Arc::new(AuditLog::open(&settings.audit)?);
    let metrics = Arc::new(Metrics::default());
    let jwt = JwtVerifier::from_settings(&settings.jwt)?;
    let n_workers = crate::server::workers::resolve_count(settings.limits.workers);
    let upstreams = settings
        .upstreams
        .iter()
        .map(|u| Upstream::new(u, n_workers + 1))
        .collect::<Result<Vec<_>, _>>()?;
    let workers = Arc::new(Workers::start(n_workers, settings.limits.worker_placement)?);
    let settings = Arc::new(settings);
    let rules_handle = RulesHandle::new(
        snapshot,
        settings.clone(),
        audit.clone(),
        metrics.clone(),
        gate,
    );
    let rules = rules_handle.current.clone();
    let gateway = Arc::new(Gateway::new(
        settings.clone(),
        rules.clone(),
        jwt,
        upstreams,
        audit.clone(),
        metrics.clone(),
    ));
    let (tx, rx) = watch::channel(false);
    let listener = crate::server::bind(settings.listen).await?;
    let addr = listener.local_addr()?;
    let tls = Arc::new(ArcSwap::new(tls));
    let mut tasks = vec![
        tokio::spawn(crate::server::serve(
            listener,
            tls.clone(),
            gateway.clone(),
            workers.clone(),
            rx.clone(),
        )),
        tokio::spawn(crate::config::reload::watch(
            rules_handle.clone(),
            rx.clone(),
        )),
    ];
    let admin = Arc::new(AdminState {
        rules: rules_handle.clone(),
        gateway: gateway.clone(),
        shutting_down: false.into(),
    });
    let admin_addr = match settings.admin_listen {
        Some(a) => {
            let l = crate::server::bind(a).await?;
            let addr = l.local_addr()?;
            tasks.push(tokio::spawn(crate::server::admin::serve(
                l,
                admin.clone(),
                rx,
            )));
            Some(addr)
        }
        None => None,
    };
    tracing::info!(%addr, rules = %rules.load().sha256, "phigate listening");
    Ok(Running {
        addr,
        admin_addr,
        rules,
        rules_handle,
        gateway,
        tls,
        admin,
        workers,
        shutdown: tx,
        tasks,
    })
}
