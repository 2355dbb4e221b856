//! The `phigate` command: demo, serve, check.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use phigate::config::rules::RuleSnapshot;
use phigate::config::settings::Settings;

#[derive(Parser)]
#[command(
    name = "phigate",
    version,
    about = "PHI/PII enforcement gateway: route permissions and JSON masking"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on loopback: a sample API, the gateway with the example rules, dev tokens.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin_listen: SocketAddr,
        /// Rules directory (default: ./rules, else the embedded example rules).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Where the development certificate and signing key are kept.
        #[arg(long, default_value = "certs/dev")]
        certs: PathBuf,
    },
    /// Run the gateway.
    Serve {
        #[arg(long, default_value = "phigate.yaml")]
        config: PathBuf,
    },
    /// Validate the config and every rule file; exit 0 when valid, 1 otherwise.
    Check {
        #[arg(long, default_value = "phigate.yaml")]
        config: PathBuf,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PHIGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Serve { config } => {
            init_tracing();
            let settings = match Settings::load(&config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime().block_on(async move {
                let tls = match phigate::server::tls::server_config_from_files(
                    &settings.tls_cert,
                    &settings.tls_key,
                ) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                };
                match phigate::app::start(settings, tls).await {
                    Ok(running) => {
                        wait_for_signal().await;
                        tracing::info!("shutting down");
                        running.shutdown().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Demo {
            listen,
            admin_listen,
            rules,
            certs,
        } => {
            // The demo's pseudonyms need a key; a fixed development one keeps them stable.
            if std::env::var_os("PHIGATE_PSEUDONYM_KEY").is_none() {
                std::env::set_var(
                    "PHIGATE_PSEUDONYM_KEY",
                    "phigate-demo-pseudonym-key-not-for-production",
                );
            }
            init_tracing();
            runtime().block_on(async move {
                let opts = phigate::demo::DemoOptions {
                    listen,
                    admin_listen,
                    rules_dir: rules,
                    certs_dir: certs,
                };
                match phigate::demo::start(opts).await {
                    Ok((running, text)) => {
                        println!("{text}");
                        wait_for_signal().await;
                        running.shutdown().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("demo failed to start: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

fn check(config: &std::path::Path) -> ExitCode {
    let settings = match Settings::load(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    if let Err(e) = phigate::auth::jwt::JwtVerifier::from_settings(&settings.jwt) {
        eprintln!("{e}");
        ok = false;
    }
    if let Err(e) =
        phigate::server::tls::server_config_from_files(&settings.tls_cert, &settings.tls_key)
    {
        eprintln!("{e}");
        ok = false;
    }
    match RuleSnapshot::load(&settings.rules_dir, &settings) {
        Ok(snap) => println!(
            "{}: {} routes, {} policies, {} roles, {} users; rules sha256 {}",
            settings.rules_dir.display(),
            snap.routes.len(),
            snap.access.policies.len(),
            snap.access.roles.len(),
            snap.access.users.len(),
            snap.sha256
        ),
        Err(e) => {
            eprintln!("{e}");
            ok = false;
        }
    }
    if ok {
        println!("ok");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
