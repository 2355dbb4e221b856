//! The test harness: a real echo upstream on loopback, a real gateway over real TLS with
//! rcgen certificates, real signed JWTs (ES256 via a JWK set, and an HS256 secret).

pub mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use phigate::app::Running;
use phigate::config::settings::Settings;
use phigate::demo::tokens::DevIssuer;
use phigate::server::tls::DevPki;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use upstream::{Echo, Script};

pub const HS256_SECRET: &str = "test-hs256-secret-of-at-least-32-bytes!!";

pub const PSEUDONYM_KEY: &str = "test-pseudonym-key";

/// The process environment the example rules need, set once before any gateway starts.
pub fn init_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("PHIGATE_PSEUDONYM_KEY", PSEUDONYM_KEY));
}

/// The repository's example rules.
pub fn example_rules() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules")
}

pub struct Harness {
    pub gateway: Running,
    pub upstream: Echo,
    pub issuer: DevIssuer,
    pub pki: DevPki,
    pub dir: tempfile::TempDir,
    pub h1: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    pub h2: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

pub type Tweak = Box<dyn FnOnce(&mut Settings) + Send>;

pub struct Options {
    pub rules: PathBuf,
    pub upstream_timeout: Duration,
    /// Point the upstream at a closed port.
    pub upstream_down: bool,
    pub tweak: Option<Tweak>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rules: example_rules(),
            upstream_timeout: Duration::from_secs(10),
            upstream_down: false,
            tweak: None,
        }
    }
}

pub fn client_tls(ca_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(phigate::proxy::upstream::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg
}

impl Harness {
    /// Waits until every audit record so far is on disk (the writer batches them).
    pub async fn flush_audit(&self) {
        let audit = self.gateway.gateway.audit.clone();
        tokio::task::spawn_blocking(move || audit.flush())
            .await
            .unwrap();
    }

    pub async fn start() -> Harness {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Harness {
        init_env();
        let dir = tempfile::tempdir().unwrap();
        let upstream = Echo::start().await;
        let issuer = DevIssuer::generate("https://idp.test", "phigate").unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, &issuer.jwks_json).unwrap();
        let pki = DevPki::generate().unwrap();
        let upstream_addr = if opts.upstream_down {
            closed_port()
        } else {
            upstream.addr
        };
        let mut settings = phigate::demo::settings(
            "127.0.0.1:0".parse().unwrap(),
            Some("127.0.0.1:0".parse().unwrap()),
            opts.rules.clone(),
            upstream_addr,
            jwks,
        );
        settings.jwt.issuer = "https://idp.test".into();
        settings.jwt.hs256_secret = Some(HS256_SECRET.as_bytes().to_vec());
        settings.upstreams[0].timeout = opts.upstream_timeout;
        if let Some(t) = opts.tweak {
            t(&mut settings);
        }
        let tls =
            phigate::server::tls::server_config_from_pem(&pki.cert_pem, &pki.key_pem).unwrap();
        let gateway = phigate::app::start(settings, tls).await.unwrap();
        // hyper-rustls sets ALPN itself from the enabled protocol.
        let mk = |h2: bool| {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(client_tls(&pki.ca_pem, &[]))
                .https_only();
            let https = if h2 {
                https.enable_http2().build()
            } else {
                https.enable_http1().build()
            };
            Client::builder(TokioExecutor::new())
                .http2_only(h2)
                .build(https)
        };
        let h1 = mk(false);
        let h2 = mk(true);
        Harness {
            gateway,
            upstream,
            issuer,
            pki,
            dir,
            h1,
            h2,
        }
    }

    pub fn base(&self) -> String {
        format!("https://localhost:{}", self.gateway.addr.port())
    }

    pub fn token(&self, user: &str) -> String {
        self.issuer.mint(user, 600)
    }

    /// Sends a request over HTTP/1.1 (or h2) and returns status, headers and body.
    pub async fn send(&self, h2: bool, req: Request<Full<Bytes>>) -> Reply {
        let client = if h2 { &self.h2 } else { &self.h1 };
        let resp: Response<hyper::body::Incoming> = client
            .request(req)
            .await
            .expect("request reaches the gateway");
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            version: parts.version,
        }
    }

    pub async fn get_as(&self, user: Option<&str>, path: &str) -> Reply {
        self.call(false, Method::GET, user, path).await
    }

    pub async fn call(&self, h2: bool, method: Method, user: Option<&str>, path: &str) -> Reply {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base(), path));
        if let Some(u) = user {
            b = b.header("authorization", format!("Bearer {}", self.token(u)));
        }
        self.send(h2, b.body(Full::new(Bytes::new())).unwrap())
            .await
    }

    pub async fn with_bearer(&self, token: &str, path: &str) -> Reply {
        let req = Request::get(format!("{}{}", self.base(), path))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        self.send(false, req).await
    }

    /// Writes raw bytes over TLS (HTTP/1.1) and returns everything read until close or timeout.
    pub async fn raw(&self, request: &[u8]) -> String {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(
            &self.pki.ca_pem,
            &[b"http/1.1"],
        )));
        let tcp = tokio::net::TcpStream::connect(self.gateway.addr)
            .await
            .unwrap();
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        // The gateway may answer (431, 400) and close before a large request is fully
        // written: the write then fails, and the answer is still there to read.
        let _ = tls.write_all(request).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            let mut buf = [0u8; 8192];
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        out.extend_from_slice(&buf[..n]);
                        // One response is enough: stop at the end of a problem/JSON body.
                        if response_complete(&out) {
                            break;
                        }
                    }
                }
            }
        })
        .await;
        String::from_utf8_lossy(&out).into_owned()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn response_complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
    });
    matches!(len, Some(n) if body.len() >= n)
}

/// The status code of a raw HTTP/1.1 response.
pub fn raw_status(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn request_id(&self) -> String {
        self.header("x-request-id")
            .expect("every response has x-request-id")
            .to_string()
    }
}

/// A loopback port nobody listens on.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// Writes a rules directory from the example rules with some files replaced.
pub fn rules_dir_with(dir: &Path, replace: &[(&str, &str)]) -> PathBuf {
    let d = dir.join(format!("rules-{}", rand_suffix()));
    std::fs::create_dir_all(&d).unwrap();
    for entry in std::fs::read_dir(example_rules()).unwrap() {
        let e = entry.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
    }
    for (name, text) in replace {
        std::fs::write(d.join(name), text).unwrap();
    }
    d
}

pub fn rand_suffix() -> String {
    let mut b = [0u8; 6];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// GET on the admin listener (plain HTTP), optionally with a bearer token.
pub async fn admin_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut b = Request::get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let resp = client
        .request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("admin reachable");
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `f` every 25 ms until it returns true or `within` passes; returns the time taken.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}
