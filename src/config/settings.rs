//! The process configuration (`phigate.yaml`): raw file -> validated `Settings`.
//! Rule files (what ops edit every day) are loaded separately into a `RuleSnapshot`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::diag::{parse_yaml, read_file, Diagnostics, Pos};
use super::duration::{Dur, Size};
use crate::audit::AuditSink;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Spanned<String>,
    tls: RawTls,
    rules: Spanned<String>,
    upstreams: indexmap::IndexMap<String, Spanned<RawUpstream>>,
    auth: RawAuth,
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    audit: Option<RawAudit>,
    #[serde(default)]
    reload: Option<RawReload>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    sink: Spanned<String>,
    #[serde(default)]
    path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReload {
    #[serde(default)]
    poll_interval: Option<Dur>,
    #[serde(default)]
    debounce: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: Spanned<String>,
    #[serde(default)]
    ca: Option<Spanned<String>>,
    #[serde(default)]
    http2: bool,
    #[serde(default)]
    forward_authorization: bool,
    #[serde(default)]
    connect_timeout: Option<Dur>,
    #[serde(default)]
    timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    jwt: RawJwt,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    issuer: String,
    audience: String,
    #[serde(default)]
    jwks_file: Option<Spanned<String>>,
    #[serde(default)]
    hs256_secret_env: Option<Spanned<String>>,
    #[serde(default = "default_leeway")]
    leeway_s: u64,
    #[serde(default = "default_user_claim")]
    user_claim: String,
    #[serde(default = "default_token_cache")]
    cache_size: u64,
}

fn default_leeway() -> u64 {
    30
}
fn default_user_claim() -> String {
    "sub".into()
}
fn default_token_cache() -> u64 {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    handshake_timeout: Option<Dur>,
    header_read_timeout: Option<Dur>,
    idle_timeout: Option<Dur>,
    max_connections: Option<usize>,
    max_header_bytes: Option<Size>,
    max_headers: Option<usize>,
    h2_max_concurrent_streams: Option<u32>,
    workers: Option<usize>,
    worker_placement: Option<Spanned<String>>,
    max_request_body: Option<Size>,
    max_masked_body: Option<Size>,
    max_json_depth: Option<usize>,
    shutdown_deadline: Option<Dur>,
}

/// Where a JWT verification key comes from.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    pub jwks_file: Option<PathBuf>,
    /// The shared secret itself, read from the named environment variable at load.
    pub hs256_secret: Option<Vec<u8>>,
    pub leeway_s: u64,
    pub user_claim: String,
    pub cache_size: u64,
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub name: String,
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Prefix prepended to the canonical path ("" for none).
    pub base_path: String,
    pub ca: Option<PathBuf>,
    pub http2: bool,
    pub forward_authorization: bool,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// A TLS handshake that has not finished in this time is dropped.
    pub handshake_timeout: Duration,
    /// HTTP/1: the whole request head (line and headers) must arrive within this time,
    /// counted from when the gateway starts waiting for it (so it also bounds the wait for
    /// the next request on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed
    /// (HTTP/1 and HTTP/2; h2 also pings a silent peer at half this interval).
    pub idle_timeout: Duration,
    /// Connections served at once; beyond it new connections wait in the kernel backlog.
    pub max_connections: usize,
    /// Request head size (HTTP/1 request line and headers; HTTP/2 header list size): 431.
    pub max_header_bytes: u64,
    /// Number of request header fields: 431.
    pub max_headers: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients.
    pub h2_max_concurrent_streams: u32,
    /// Request body limit (413), enforced while streaming, with or without Content-Length.
    pub max_request_body: u64,
    pub max_masked_body: u64,
    pub max_json_depth: usize,
    /// How long in-flight requests may take to finish after SIGTERM / SIGINT.
    pub shutdown_deadline: Duration,
    /// Threads serving connections, each with its own event loop and upstream pool
    /// (0: one per available core).
    pub workers: usize,
    /// Which worker a new connection goes to: `spread` (default) or `pack`.
    pub worker_placement: crate::server::workers::Placement,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_header_bytes: 32 << 10,
            max_headers: 100,
            h2_max_concurrent_streams: 256,
            max_request_body: 10 << 20,
            max_masked_body: 16 << 20,
            max_json_depth: 128,
            shutdown_deadline: Duration::from_secs(30),
            workers: 0,
            worker_placement: crate::server::workers::Placement::Spread,
        }
    }
}

/// The validated process configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub file: Option<PathBuf>,
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub rules_dir: PathBuf,
    pub upstreams: Vec<UpstreamSettings>,
    pub jwt: JwtSettings,
    pub admin_listen: Option<SocketAddr>,
    pub limits: Limits,
    pub audit: AuditSink,
    pub reload: ReloadSettings,
}

/// How rule changes are noticed: a directory watch (debounced) plus a periodic poll.
#[derive(Debug, Clone)]
pub struct ReloadSettings {
    pub poll_interval: Duration,
    pub debounce: Duration,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        ReloadSettings {
            poll_interval: Duration::from_secs(5),
            debounce: Duration::from_millis(150),
        }
    }
}

impl Settings {
    pub fn upstream_index(&self, name: &str) -> Option<usize> {
        self.upstreams.iter().position(|u| u.name == name)
    }

    /// Loads and validates `phigate.yaml`; relative paths resolve against its folder.
    pub fn load(file: &Path) -> Result<Settings, Diagnostics> {
        let text = read_file(file)?;
        Self::from_yaml(file, &text, &|name| std::env::var(name).ok())
    }

    pub fn from_yaml(
        file: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, Diagnostics> {
        let raw: RawConfig = parse_yaml(file, text)?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let mut d = Diagnostics::default();
        let pos = |s: &serde_saphyr::Location| Pos::of(s);

        let listen = parse_addr(&raw.listen.value).unwrap_or_else(|e| {
            d.push(file, pos(&raw.listen.referenced), e);
            SocketAddr::from(([127, 0, 0, 1], 0))
        });
        let admin_listen = raw
            .admin
            .as_ref()
            .and_then(|a| match parse_addr(&a.listen.value) {
                Ok(addr) => Some(addr),
                Err(e) => {
                    d.push(file, pos(&a.listen.referenced), e);
                    None
                }
            });

        let mut upstreams = Vec::new();
        if raw.upstreams.is_empty() {
            d.push(
                file,
                Pos::default(),
                "'upstreams' must name at least one upstream",
            );
        }
        for (name, up) in &raw.upstreams {
            let at = pos(&up.referenced);
            let u = &up.value;
            match parse_upstream_url(&u.url.value) {
                Ok((scheme, authority, base_path)) => {
                    if u.ca.is_some() && scheme != http::uri::Scheme::HTTPS {
                        d.push(
                            file,
                            at,
                            format!("upstream '{name}': 'ca' only applies to an https:// url"),
                        );
                    }
                    upstreams.push(UpstreamSettings {
                        name: name.clone(),
                        scheme,
                        authority,
                        base_path,
                        ca: u.ca.as_ref().map(|c| resolve(&c.value)),
                        http2: u.http2,
                        forward_authorization: u.forward_authorization,
                        connect_timeout: u.connect_timeout.map_or(Duration::from_secs(5), |x| x.0),
                        timeout: u.timeout.map_or(Duration::from_secs(30), |x| x.0),
                    });
                }
                Err(e) => d.push(
                    file,
                    pos(&u.url.referenced),
                    format!("upstream '{name}': {e}"),
                ),
            }
        }

        let j = &raw.auth.jwt;
        let hs256_secret = match &j.hs256_secret_env {
            Some(var) => match env(&var.value) {
                Some(s) if s.len() >= 32 => Some(s.into_bytes()),
                Some(_) => {
                    d.push(
                        file,
                        pos(&var.referenced),
                        format!(
                            "the HS256 secret in ${} is shorter than 32 bytes",
                            var.value
                        ),
                    );
                    None
                }
                None => {
                    d.push(
                        file,
                        pos(&var.referenced),
                        format!(
                            "environment variable {} (hs256_secret_env) is not set",
                            var.value
                        ),
                    );
                    None
                }
            },
            None => None,
        };
        if j.jwks_file.is_none() && j.hs256_secret_env.is_none() {
            d.push(
                file,
                Pos::default(),
                "auth.jwt needs 'jwks_file' or 'hs256_secret_env' (or both)",
            );
        }
        let jwt = JwtSettings {
            issuer: j.issuer.clone(),
            audience: j.audience.clone(),
            jwks_file: j.jwks_file.as_ref().map(|f| resolve(&f.value)),
            hs256_secret,
            leeway_s: j.leeway_s,
            user_claim: j.user_claim.clone(),
            cache_size: j.cache_size,
        };

        let dl = Limits::default();
        let l = &raw.limits;
        let limits = Limits {
            handshake_timeout: l.handshake_timeout.map_or(dl.handshake_timeout, |x| x.0),
            header_read_timeout: l
                .header_read_timeout
                .map_or(dl.header_read_timeout, |x| x.0),
            idle_timeout: l.idle_timeout.map_or(dl.idle_timeout, |x| x.0),
            max_connections: l.max_connections.unwrap_or(dl.max_connections),
            max_header_bytes: l.max_header_bytes.map_or(dl.max_header_bytes, |x| x.0),
            max_headers: l.max_headers.unwrap_or(dl.max_headers),
            h2_max_concurrent_streams: l
                .h2_max_concurrent_streams
                .unwrap_or(dl.h2_max_concurrent_streams),
            max_request_body: l.max_request_body.map_or(dl.max_request_body, |x| x.0),
            max_masked_body: l.max_masked_body.map_or(dl.max_masked_body, |x| x.0),
            max_json_depth: l.max_json_depth.unwrap_or(dl.max_json_depth),
            shutdown_deadline: l.shutdown_deadline.map_or(dl.shutdown_deadline, |x| x.0),
            workers: l.workers.unwrap_or(dl.workers),
            worker_placement: match &l.worker_placement {
                None => dl.worker_placement,
                Some(v) => {
                    crate::server::workers::Placement::parse(&v.value).unwrap_or_else(|| {
                        d.push(
                            file,
                            pos(&v.referenced),
                            format!(
                                "limits.worker_placement: '{}' is neither 'pack' nor 'spread'",
                                v.value
                            ),
                        );
                        dl.worker_placement
                    })
                }
            },
        };
        for (key, bad) in [
            ("max_connections", limits.max_connections == 0),
            ("max_headers", limits.max_headers == 0),
            (
                "h2_max_concurrent_streams",
                limits.h2_max_concurrent_streams == 0,
            ),
            (
                "max_header_bytes (1KiB to 1MiB)",
                !(1024..=1 << 20).contains(&limits.max_header_bytes),
            ),
            ("handshake_timeout", limits.handshake_timeout.is_zero()),
            ("header_read_timeout", limits.header_read_timeout.is_zero()),
            ("idle_timeout", limits.idle_timeout.is_zero()),
            ("workers (0 to 1024)", limits.workers > 1024),
        ] {
            if bad {
                d.push(
                    file,
                    Pos::default(),
                    format!("limits.{key} is out of range"),
                );
            }
        }
        let audit = match &raw.audit {
            None => AuditSink::Stdout,
            Some(a) => match (a.sink.value.as_str(), &a.path) {
                ("stdout", None) => AuditSink::Stdout,
                ("file", Some(p)) => AuditSink::File(resolve(p)),
                ("file", None) => {
                    d.push(
                        file,
                        pos(&a.sink.referenced),
                        "audit sink 'file' needs 'path'",
                    );
                    AuditSink::Stdout
                }
                (other, _) => {
                    d.push(
                        file,
                        pos(&a.sink.referenced),
                        format!("audit sink '{other}' is not one of: stdout, file (with path)"),
                    );
                    AuditSink::Stdout
                }
            },
        };
        let reload = ReloadSettings {
            poll_interval: raw
                .reload
                .as_ref()
                .and_then(|r| r.poll_interval)
                .map_or(ReloadSettings::default().poll_interval, |x| x.0),
            debounce: raw
                .reload
                .as_ref()
                .and_then(|r| r.debounce)
                .map_or(ReloadSettings::default().debounce, |x| x.0),
        };

        let settings = Settings {
            file: Some(file.to_path_buf()),
            listen,
            tls_cert: resolve(&raw.tls.cert.value),
            tls_key: resolve(&raw.tls.key.value),
            rules_dir: resolve(&raw.rules.value),
            upstreams,
            jwt,
            admin_listen,
            limits,
            audit,
            reload,
        };
        d.into_result(settings)
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("'{s}' is not an address: write e.g. 127.0.0.1:8443 or [::1]:8443"))
}

/// `http://host:port/base` -> (scheme, authority, "/base").
pub fn parse_upstream_url(
    s: &str,
) -> Result<(http::uri::Scheme, http::uri::Authority, String), String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("'{s}' is not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("'{s}' needs http:// or https://"))?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(format!(
            "'{s}': only http:// and https:// upstreams are supported"
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("'{s}' has no host"))?;
    if uri.query().is_some() {
        return Err(format!("'{s}': an upstream URL cannot carry a query"));
    }
    let base = uri.path().trim_end_matches('/').to_string();
    Ok((scheme, authority, base))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "listen: 127.0.0.1:8443
tls: { cert: certs/gateway.pem, key: certs/gateway-key.pem }
rules: rules/
upstreams:
  api: { url: \"http://127.0.0.1:9000\" }
auth:
  jwt:
    issuer: \"https://idp.example.org\"
    audience: phigate
    jwks_file: certs/jwks.json
admin: { listen: \"127.0.0.1:9901\" }
";

    fn env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn loads_and_resolves_relative_paths() {
        let s = Settings::from_yaml(Path::new("/etc/phigate/phigate.yaml"), GOOD, &env).unwrap();
        assert_eq!(s.rules_dir, Path::new("/etc/phigate/rules/"));
        assert_eq!(
            s.jwt.jwks_file.as_deref(),
            Some(Path::new("/etc/phigate/certs/jwks.json"))
        );
        assert_eq!(s.upstreams[0].authority.as_str(), "127.0.0.1:9000");
        assert_eq!(s.jwt.leeway_s, 30);
    }

    #[test]
    fn unknown_key_is_an_error_with_position() {
        let text = GOOD.replace("rules: rules/", "rules: rules/\nrulez: x");
        let err = Settings::from_yaml(Path::new("p.yaml"), &text, &env).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("p.yaml:4:"), "{msg}");
        assert!(msg.contains("rulez"), "{msg}");
    }

    #[test]
    fn worker_placement_defaults_to_spread_and_names_a_bad_value() {
        use crate::server::workers::Placement;
        let s = Settings::from_yaml(Path::new("p.yaml"), GOOD, &env).unwrap();
        assert_eq!(s.limits.worker_placement, Placement::Spread);
        let text = format!("{GOOD}limits:\n  worker_placement: pack\n");
        let s = Settings::from_yaml(Path::new("p.yaml"), &text, &env).unwrap();
        assert_eq!(s.limits.worker_placement, Placement::Pack);
        let text = format!("{GOOD}limits:\n  worker_placement: densest\n");
        let err = Settings::from_yaml(Path::new("p.yaml"), &text, &env).unwrap_err();
        assert!(err.to_string().starts_with("p.yaml:13:"), "{err}");
        assert!(err.to_string().contains("densest"), "{err}");
    }

    #[test]
    fn bad_values_name_their_line() {
        let text = GOOD.replace("127.0.0.1:8443", "nowhere");
        let err = Settings::from_yaml(Path::new("p.yaml"), &text, &env).unwrap_err();
        assert!(err.to_string().starts_with("p.yaml:1:9:"), "{err}");
        let text = GOOD.replace("http://127.0.0.1:9000", "ftp://x");
        let err = Settings::from_yaml(Path::new("p.yaml"), &text, &env).unwrap_err();
        assert!(err.to_string().starts_with("p.yaml:5:"), "{err}");
    }

    #[test]
    fn missing_secret_env_is_reported() {
        let text = GOOD.replace(
            "jwks_file: certs/jwks.json",
            "hs256_secret_env: NOPE_SECRET",
        );
        let err = Settings::from_yaml(Path::new("p.yaml"), &text, &env).unwrap_err();
        assert!(err.to_string().contains("NOPE_SECRET"), "{err}");
    }
}
