//! Load-bench driver (used by `benches/load.sh` / `benches/load.py`).
//!
//!   bench_gateway serve [--dir D] [--listen 127.0.0.1:0] [--upstream 127.0.0.1:18080]
//!                       [--fields bench|patient] [--audit file|discard] [--workers N] [--placement pack|spread]
//!       Starts phigate in this process, over TLS (development CA, P-256 leaf like the peers),
//!       with one route `GET /patients/{file}` -> the upstream, masked with the field set
//!       `bench` (the peers' masking, see benches/common/mod.rs) or the example `patient` set.
//!       Users: full@bench.example (full access) and anon@bench.example (anonymized).
//!       Prints one JSON line {addr, pid, ca, token_full, token_anon} and serves until killed.
//!
//!   bench_gateway floor [--dir D] [--listen 127.0.0.1:0] [--upstream 127.0.0.1:18080]
//!       The floor of the stack phigate is built on: a bare hyper 1.x + tokio-rustls reverse
//!       proxy with nothing of phigate's (no auth, routing, header rules, audit, timers),
//!       one current-thread runtime per core, one upstream connection per client
//!       connection. Same TLS setup and JSON line as `serve`. What phigate costs above this
//!       is phigate's; what this costs above nginx is the stack's.
//!
//!   bench_gateway mask [--size 1KB|64KB|1MB] [--fields bench|patient] [--n 1000]
//!       Masks the synthetic patient list of that size N times in this process (the gateway's
//!       allocator, no I/O) and prints the time per document: the masker alone, for perf and
//!       callgrind (instructions per document = total / N).
//!
//!   bench_gateway idle --addr A --ca FILE --token T [--conns 1000] [--hold 5] [--pid PID]
//!       Opens N TLS keep-alive connections, makes one request on each, then holds them idle
//!       and prints the gateway's VmRSS (of --pid) before and while they are held (JSON).

#[path = "../benches/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: &str = r#"routes:
  - name: patients
    methods: [GET]
    path: /patients/{file}
    require: cdp:patient:list
    upstream: api
    fields: FIELDSET
"#;

const ACCESS: &str = r#"policies:
  everything:   { tags: [PHI], permissions: ["*"] }
  patient-read: { tags: [PHI], permissions: ["cdp:patient:list"] }
roles:
  Admin:  { policies: [everything] }
  Reader: { policies: [patient-read] }
users:
  dpo@bench.example:  { roles: [Admin],  data_access: dpo }
  full@bench.example: { roles: [Reader], data_access: full }
  anon@bench.example: { roles: [Reader], data_access: anonymized }
defaults: { roles: [] }
"#;

/// The example `patient` set of rules/fields.yaml, next to the peers' equivalent `bench` set.
fn fields_yaml() -> String {
    let example = include_str!("../rules/fields.yaml");
    let patient = example
        .split_once("  patient:\n")
        .map(|(_, rest)| rest)
        .expect("rules/fields.yaml has the patient set");
    format!(
        "{}pseudonym_key_env: PHIGATE_PSEUDONYM_KEY\n{}  patient:\n{}",
        common::BENCH_FIELDS_YAML
            .lines()
            .next()
            .map(|l| format!("{l}\n"))
            .unwrap_or_default(),
        &common::BENCH_FIELDS_YAML[common::BENCH_FIELDS_YAML.find("sets:").unwrap()..],
        patient
    )
}

fn args() -> (String, HashMap<String, String>) {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().unwrap_or_default();
    let mut m = HashMap::new();
    while let Some(k) = it.next() {
        let k = k.trim_start_matches("--").to_string();
        let v = it
            .next()
            .unwrap_or_else(|| die(&format!("--{k} needs a value")));
        m.insert(k, v);
    }
    (cmd, m)
}

fn die(msg: &str) -> ! {
    eprintln!("bench_gateway: {msg}");
    std::process::exit(2)
}

// The allocator of the `phigate` binary (see src/main.rs), so the bench measures what runs.
#[global_allocator]
static ALLOC: phigate::server::memory::Allocator = phigate::server::memory::Allocator;

fn main() {
    phigate::server::memory::disable_transparent_huge_pages();
    let (cmd, a) = args();
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    if cmd == "serve" {
        // Only accept, reloads and signals run here; connections run on the gateway's
        // own workers (`limits.workers`, `--workers`).
        b.worker_threads(1);
    }
    let rt = b.build().expect("runtime");
    if cmd == "floor" {
        return floor(a);
    }
    if cmd == "mask" {
        return mask(a);
    }
    match cmd.as_str() {
        "serve" => rt.block_on(serve(a)),
        "idle" => rt.block_on(idle(a)),
        _ => die("usage: bench_gateway serve|floor|mask|idle [--flag value]..."),
    }
}

fn mask(a: HashMap<String, String>) {
    let size = a.get("size").map_or("64KB", String::as_str);
    let bytes = common::SIZES
        .iter()
        .find(|(label, _)| *label == size)
        .unwrap_or_else(|| die("--size is 1KB, 64KB or 1MB"))
        .1;
    let set = a.get("fields").map_or("bench", String::as_str);
    let n: u32 = a
        .get("n")
        .map_or("1000", String::as_str)
        .parse()
        .unwrap_or_else(|_| die("bad --n"));
    let key = |_: &str| Some("bench-pseudonym-key".to_string());
    let rules =
        phigate::masking::FieldRules::compile(&fields_yaml(), Some("dpo@bench.example"), &key)
            .unwrap_or_else(|e| die(&format!("field rules: {e:?}")));
    let set = rules
        .set(set)
        .unwrap_or_else(|| die("--fields is bench or patient"))
        .clone();
    // `--ring K`: K copies of the body masked in turn, the last K outputs kept, as K
    // requests in flight on one worker would (the caches then hold less of each).
    let ring: usize = a
        .get("ring")
        .map_or("1", String::as_str)
        .parse()
        .unwrap_or_else(|_| die("bad --ring"));
    let bodies: Vec<Vec<u8>> = (0..ring.max(1))
        .map(|_| common::patient_list(bytes))
        .collect();
    let mut outs: Vec<Vec<u8>> = vec![Vec::new(); ring.max(1)];
    let start = std::time::Instant::now();
    let mut out_len = 0;
    for i in 0..n as usize {
        let k = i % bodies.len();
        let (out, report) = set
            .mask_document(std::hint::black_box(&bodies[k]), 128)
            .expect("masks");
        out_len = out.len();
        outs[k] = out;
        std::hint::black_box(report);
    }
    let body = &bodies[0];
    let per = start.elapsed() / n;
    println!(
        "{size}: {} -> {out_len} bytes, {per:?} per document",
        body.len()
    );
}

async fn serve(a: HashMap<String, String>) {
    use phigate::demo::tokens::DevIssuer;
    let dir = PathBuf::from(a.get("dir").map_or("/tmp/phigate-bench", String::as_str));
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).expect("bench dir");
    let set = a.get("fields").map_or("bench", String::as_str);
    if set != "bench" && set != "patient" {
        die("--fields is bench or patient");
    }
    std::fs::write(rules.join("routes.yaml"), ROUTES.replace("FIELDSET", set)).unwrap();
    std::fs::write(rules.join("access.yaml"), ACCESS).unwrap();
    std::fs::write(rules.join("fields.yaml"), fields_yaml()).unwrap();
    if std::env::var_os("PHIGATE_PSEUDONYM_KEY").is_none() {
        std::env::set_var("PHIGATE_PSEUDONYM_KEY", "bench-pseudonym-key");
    }
    let pki = phigate::server::tls::DevPki::generate().expect("dev PKI");
    let issuer = DevIssuer::generate(phigate::demo::ISSUER, phigate::demo::AUDIENCE).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, &issuer.jwks_json).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let listen = a
        .get("listen")
        .map_or("127.0.0.1:0", String::as_str)
        .parse()
        .unwrap_or_else(|_| die("bad --listen"));
    let upstream = a
        .get("upstream")
        .map_or("127.0.0.1:18080", String::as_str)
        .parse()
        .unwrap_or_else(|_| die("bad --upstream"));
    let mut settings = phigate::demo::settings(listen, None, rules, upstream, jwks);
    if let Some(p) = a.get("placement") {
        settings.limits.worker_placement = phigate::server::workers::Placement::parse(p)
            .unwrap_or_else(|| die("--placement is pack or spread"));
    }
    if let Some(w) = a.get("workers") {
        settings.limits.workers = w.parse().unwrap_or_else(|_| die("bad --workers"));
    }
    // Audit records are part of every request's cost: written to a file, as in production.
    settings.audit = match a.get("audit").map_or("file", String::as_str) {
        "discard" => phigate::audit::AuditSink::Discard,
        _ => phigate::audit::AuditSink::File(dir.join("audit.jsonl")),
    };
    let tls = phigate::server::tls::server_config_from_pem(&pki.cert_pem, &pki.key_pem)
        .expect("tls config");
    let running = phigate::app::start(settings, tls)
        .await
        .unwrap_or_else(|e| die(&format!("gateway did not start: {e}")));
    let info = serde_json::json!({
        "addr": running.addr.to_string(),
        "pid": std::process::id(),
        "ca": ca,
        "fields": set,
        "token_full": issuer.mint("full@bench.example", 12 * 3600),
        "token_anon": issuer.mint("anon@bench.example", 12 * 3600),
    });
    std::fs::write(dir.join("info.json"), info.to_string()).unwrap();
    println!("{info}");
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    running.shutdown().await;
}

fn rss_kb(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn one_connection(
    cx: tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    req: Arc<Vec<u8>>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = cx.connect(name, tcp).await?;
    s.write_all(&req).await?;
    // Read the response head, then exactly Content-Length bytes: the connection stays usable.
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let (head_end, len) = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the response"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                return Err(std::io::Error::other(format!(
                    "unexpected response: {}",
                    head.lines().next().unwrap_or("")
                )));
            }
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (p + 4, len);
        }
    };
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed mid-body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(s)
}

async fn idle(a: HashMap<String, String>) {
    let addr: std::net::SocketAddr = a
        .get("addr")
        .unwrap_or_else(|| die("--addr"))
        .parse()
        .unwrap_or_else(|_| die("bad --addr"));
    let ca = Path::new(a.get("ca").unwrap_or_else(|| die("--ca")));
    let token = a.get("token").unwrap_or_else(|| die("--token"));
    let path = a.get("path").map_or("/patients/small.json", String::as_str);
    let n: usize = a.get("conns").map_or(1000, |v| v.parse().unwrap());
    let hold: u64 = a.get("hold").map_or(5, |v| v.parse().unwrap());
    let pid = a.get("pid").cloned().unwrap_or_default();

    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let cx = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let req = Arc::new(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n")
            .into_bytes(),
    );
    let before = rss_kb(&pid);
    let mut held = Vec::with_capacity(n);
    let mut failed = 0usize;
    let mut first_error = None;
    // Batches of 50 so handshakes never queue past the gateway's handshake timeout.
    for batch in (0..n).collect::<Vec<_>>().chunks(50) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|_| tokio::spawn(one_connection(cx.clone(), addr, req.clone())))
            .collect();
        for t in tasks {
            match t.await.unwrap() {
                Ok(s) => held.push(s),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(hold.max(1))).await;
    let during = rss_kb(&pid);
    let out = serde_json::json!({
        "conns_open": held.len(),
        "failed": failed,
        "first_error": first_error,
        "gateway_rss_kb_before": before,
        "gateway_rss_kb_held": during,
    });
    println!("{out}");
    drop(held);
}

/// `floor`: see the module doc.
fn floor(a: HashMap<String, String>) {
    let dir = PathBuf::from(a.get("dir").map_or("/tmp/phigate-floor", String::as_str));
    std::fs::create_dir_all(&dir).expect("floor dir");
    let pki = phigate::server::tls::DevPki::generate().expect("dev PKI");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let tls = phigate::server::tls::server_config_from_pem(&pki.cert_pem, &pki.key_pem)
        .expect("tls config");
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let upstream: std::net::SocketAddr = a
        .get("upstream")
        .map_or("127.0.0.1:18080", String::as_str)
        .parse()
        .unwrap_or_else(|_| die("bad --upstream"));
    let listener =
        std::net::TcpListener::bind(a.get("listen").map_or("127.0.0.1:0", String::as_str))
            .unwrap_or_else(|e| die(&format!("bind: {e}")));
    listener.set_nonblocking(true).unwrap();
    let info = serde_json::json!({
        "addr": listener.local_addr().unwrap().to_string(),
        "pid": std::process::id(),
        "ca": ca,
        "token_full": "none",
        "token_anon": "none",
    });
    println!("{info}");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let l = listener.try_clone().expect("listener clone");
            let acceptor = acceptor.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let l = tokio::net::TcpListener::from_std(l).expect("listener");
                    while let Ok((tcp, _)) = l.accept().await {
                        let _ = tcp.set_nodelay(true);
                        tokio::spawn(floor_connection(tcp, acceptor.clone(), upstream));
                    }
                })
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

async fn floor_connection(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    upstream: std::net::SocketAddr,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use hyper_util::rt::TokioIo;
    let tls = acceptor.accept(tcp).await?;
    let up = tokio::net::TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(up)).await?;
    tokio::spawn(conn);
    // HTTP/1.1: one request at a time per connection, so this lock never waits.
    let sender = Arc::new(std::sync::Mutex::new(sender));
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        sender.lock().unwrap().send_request(req)
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), svc)
        .await?;
    Ok(())
}
