//! Wiring: settings + rules -> a running gateway (TLS listener, admin listener).
//! Used by `serve`, `demo` and the integration tests alike.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::jwt::{JwtVerifier, KeyError};
use crate::config::diag::Diagnostics;
use crate::config::rules::RuleSnapshot;
use crate::config::settings::Settings;
use crate::proxy::upstream::{Upstream, UpstreamError};
use crate::proxy::Gateway;
use crate::server::admin::AdminState;
use crate::server::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Rules(#[from] Diagnostics),
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
    pub gateway: Arc<Gateway>,
    admin: Arc<AdminState>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish, and waits for the listeners to end.
    pub async fn shutdown(self) {
        self.admin.shutting_down.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Loads rules and keys, binds the listeners and starts serving.
pub async fn start(
    settings: Settings,
    tls: Arc<rustls::ServerConfig>,
) -> Result<Running, StartError> {
    let snapshot = RuleSnapshot::load(&settings.rules_dir, &settings)?;
    let rules = Arc::new(ArcSwap::from_pointee(snapshot));
    let jwt = JwtVerifier::from_settings(&settings.jwt)?;
    let upstreams = settings
        .upstreams
        .iter()
        .map(Upstream::new)
        .collect::<Result<Vec<_>, _>>()?;
    let settings = Arc::new(settings);
    let gateway = Arc::new(Gateway::new(
        settings.clone(),
        rules.clone(),
        jwt,
        upstreams,
    ));
    let (tx, rx) = watch::channel(false);
    let listener = crate::server::bind(settings.listen).await?;
    let addr = listener.local_addr()?;
    let tls = Arc::new(ArcSwap::new(tls));
    let mut tasks = vec![tokio::spawn(crate::server::serve(
        listener,
        tls,
        gateway.clone(),
        rx.clone(),
    ))];
    let admin = Arc::new(AdminState {
        rules: rules.clone(),
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
        gateway,
        admin,
        shutdown: tx,
        tasks,
    })
}
