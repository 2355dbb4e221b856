//! The `phigate` command: demo, serve, check, test, explain, report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum TableFormat {
    Table,
    Json,
    Csv,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportKind {
    /// Who can reach PHI, through which policy and role, raw or masked.
    PhiAccess,
    /// Every user with roles, data access level and inline exceptions.
    Review,
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
    /// Run the gateway (SIGHUP reloads the rules and reopens the audit file; SIGTERM/SIGINT drain and stop).
    Serve {
        #[arg(long, default_value = "phigate.yaml")]
        config: PathBuf,
    },
    /// Validate the config and every rule file; print warnings. Exit 0 when valid.
    Check {
        #[arg(long, default_value = "phigate.yaml")]
        config: PathBuf,
        /// Exit 1 on warnings too.
        #[arg(long)]
        strict: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Run the decision tests in DIR (default: the rules directory's tests/).
    Test {
        dir: Option<PathBuf>,
        #[arg(long, default_value = "phigate.yaml")]
        config: PathBuf,
    },
    /// Explain the decision for one request: `explain --user U GET /api/patients/7`.
    Explain {
        #[arg(long, default_value = "phigate.yaml")]
        config: PathBuf,
        /// The caller (omit for a request without credentials).
        #[arg(long)]
        user: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        method: String,
        path: String,
    },
    /// Compliance reports.
    Report {
        #[arg(value_enum)]
        kind: ReportKind,
        #[arg(long, default_value = "phigate.yaml")]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: TableFormat,
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

/// Settings and rules for the offline commands (no TLS, no keys needed).
fn load(config: &Path) -> Result<(Settings, RuleSnapshot), ExitCode> {
    let settings = Settings::load(config).map_err(|e| {
        eprintln!("{e}");
        ExitCode::FAILURE
    })?;
    let rules = RuleSnapshot::load(&settings.rules_dir, &settings).map_err(|e| {
        eprintln!("{e}");
        ExitCode::FAILURE
    })?;
    Ok((settings, rules))
}

// mimalloc keeps freed memory for reuse: with glibc malloc every masked body over the mmap
// threshold cost a fresh mapping and a page fault per 4 KiB, and its small-object path is
// faster for the many short-lived allocations of a request. Huge pages are turned off at
// start (see `server::memory`), or idle connections would pin 2 MiB pages.
#[global_allocator]
static ALLOC: phigate::server::memory::Allocator = phigate::server::memory::Allocator;

fn main() -> ExitCode {
    phigate::server::memory::disable_transparent_huge_pages();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check {
            config,
            strict,
            format,
        } => check(&config, strict, format),
        Command::Serve { config } => serve(&config),
        Command::Demo {
            listen,
            admin_listen,
            rules,
            certs,
        } => demo(listen, admin_listen, rules, certs),
        Command::Test { dir, config } => test(dir, &config),
        Command::Explain {
            config,
            user,
            format,
            method,
            path,
        } => explain(&config, user, format, &method, &path),
        Command::Report {
            kind,
            config,
            format,
        } => report(kind, &config, format),
    };
    result.unwrap_or_else(|code| code)
}

#[cfg(unix)]
async fn next_signal(
    hup: &mut tokio::signal::unix::Signal,
    term: &mut tokio::signal::unix::Signal,
) -> bool {
    tokio::select! {
        _ = hup.recv() => true,
        _ = term.recv() => false,
        _ = tokio::signal::ctrl_c() => false,
    }
}

fn serve(config: &Path) -> Result<ExitCode, ExitCode> {
    init_tracing();
    let settings = Settings::load(config).map_err(|e| {
        eprintln!("{e}");
        ExitCode::FAILURE
    })?;
    runtime().block_on(async move {
        let tls =
            phigate::server::tls::server_config_from_files(&settings.tls_cert, &settings.tls_key)
                .map_err(|e| {
                eprintln!("{e}");
                ExitCode::FAILURE
            })?;
        let running = phigate::app::start(settings, tls).await.map_err(|e| {
            eprintln!("{e}");
            ExitCode::FAILURE
        })?;
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            while next_signal(&mut hup, &mut term).await {
                // The audit file first: the reload's own record lands in the new file.
                running.reopen_audit();
                let _ = running.reload("sighup").await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: draining requests in flight");
        running.shutdown().await;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn demo(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    rules: Option<PathBuf>,
    certs: PathBuf,
) -> Result<ExitCode, ExitCode> {
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
        let (running, text) = phigate::demo::start(opts).await.map_err(|e| {
            eprintln!("demo failed to start: {e}");
            ExitCode::FAILURE
        })?;
        println!("{text}");
        let _ = tokio::signal::ctrl_c().await;
        running.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

fn check(config: &Path, strict: bool, format: Format) -> Result<ExitCode, ExitCode> {
    let mut errors: Vec<String> = Vec::new();
    let settings = match Settings::load(config) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.extend(e.0.iter().map(|d| d.to_string()));
            None
        }
    };
    let mut snapshot = None;
    if let Some(settings) = &settings {
        if let Err(e) = phigate::auth::jwt::JwtVerifier::from_settings(&settings.jwt) {
            errors.push(e.to_string());
        }
        if let Err(e) =
            phigate::server::tls::server_config_from_files(&settings.tls_cert, &settings.tls_key)
        {
            errors.push(e.to_string());
        }
        match RuleSnapshot::load(&settings.rules_dir, settings) {
            Ok(s) => snapshot = Some(s),
            Err(e) => errors.extend(e.0.iter().map(|d| d.to_string())),
        }
    }
    let warnings = snapshot
        .as_ref()
        .map(phigate::report::warnings)
        .unwrap_or_default();
    let ok = errors.is_empty() && (!strict || warnings.is_empty());
    match format {
        Format::Json => {
            let v = serde_json::json!({
                "ok": ok,
                "errors": errors,
                "warnings": warnings,
                "rules_sha256": snapshot.as_ref().map(|s| s.sha256.clone()),
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Format::Text => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            for w in &warnings {
                println!("warning[{}]: {}", w.kind, w.message);
            }
            if let (Some(settings), Some(s)) = (&settings, &snapshot) {
                println!(
                    "{}: {} routes, {} policies, {} roles, {} users, {} field sets; rules sha256 {}",
                    settings.rules_dir.display(),
                    s.routes.len(),
                    s.access.policies.len(),
                    s.access.roles.len(),
                    s.access.users.len(),
                    s.fields.as_ref().map_or(0, |f| f.set_names().count()),
                    s.sha256
                );
            }
            println!(
                "{}: {} errors, {} warnings",
                if ok { "ok" } else { "failed" },
                errors.len(),
                warnings.len()
            );
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn test(dir: Option<PathBuf>, config: &Path) -> Result<ExitCode, ExitCode> {
    let (settings, rules) = load(config)?;
    let dir = dir.unwrap_or_else(|| settings.rules_dir.join("tests"));
    let report = phigate::ruletest::run_dir(&dir, &rules, &settings).map_err(|e| {
        eprintln!("{e}");
        ExitCode::FAILURE
    })?;
    print!("{}", report.render());
    Ok(if report.failed() == 0 && !report.results.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn explain(
    config: &Path,
    user: Option<String>,
    format: Format,
    method: &str,
    path: &str,
) -> Result<ExitCode, ExitCode> {
    let (_, rules) = load(config)?;
    let method =
        http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| {
            eprintln!("'{method}' is not an HTTP method");
            ExitCode::FAILURE
        })?;
    let e = phigate::explain::explain(&rules, user.as_deref(), &method, path);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&e).unwrap_or_default()),
        Format::Text => print!("{}", phigate::explain::render_text(&e)),
    }
    Ok(ExitCode::SUCCESS)
}

fn report(kind: ReportKind, config: &Path, format: TableFormat) -> Result<ExitCode, ExitCode> {
    let (_, rules) = load(config)?;
    let out = match kind {
        ReportKind::PhiAccess => {
            let r = phigate::report::phi_access(&rules);
            match format {
                TableFormat::Table => phigate::report::phi_access_table(&r),
                TableFormat::Json => serde_json::to_string_pretty(&r).unwrap_or_default() + "\n",
                TableFormat::Csv => phigate::report::phi_access_csv(&r),
            }
        }
        ReportKind::Review => {
            let r = phigate::report::review(&rules);
            match format {
                TableFormat::Table => phigate::report::review_table(&r),
                TableFormat::Json => serde_json::to_string_pretty(&r).unwrap_or_default() + "\n",
                TableFormat::Csv => phigate::report::review_csv(&r),
            }
        }
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
