//! `phigate demo`: everything on loopback with the repo's rules, a sample API with fake PHI,
//! a development certificate and development tokens, and commands to try.

pub mod sample_api;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::app::{self, Running, StartError};
use crate::config::settings::{JwtSettings, Limits, Settings, UpstreamSettings};
use crate::server::tls::{self, DevPki};
use tokens::DevIssuer;

pub const ISSUER: &str = "https://idp.demo.phigate.local";
pub const AUDIENCE: &str = "phigate";

/// The sample users of the example rules, and what each shows.
pub const USERS: &[(&str, &str)] = &[
    (
        "dana@clinic.example",
        "Admin and Data Privacy Officer: everything, unmasked",
    ),
    (
        "alex@clinic.example",
        "Analyst with full access: patients unmasked",
    ),
    (
        "bob@clinic.example",
        "Editor with anonymized access: patient list masked, patient detail denied",
    ),
    (
        "mia@clinic.example",
        "Marketer without PHI permissions: maps yes, patients no",
    ),
];

/// The embedded example rules, used when `./rules` is not there (e.g. an installed binary).
const EMBEDDED_RULES: &[(&str, &str)] = &[
    ("routes.yaml", include_str!("../../rules/routes.yaml")),
    ("access.yaml", include_str!("../../rules/access.yaml")),
    ("fields.yaml", include_str!("../../rules/fields.yaml")),
];

pub struct DemoOptions {
    pub listen: std::net::SocketAddr,
    pub admin_listen: std::net::SocketAddr,
    pub rules_dir: Option<PathBuf>,
    pub certs_dir: PathBuf,
}

fn write(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

/// Reuses the development PKI and signing key in `dir` when present, so printed commands
/// stay valid across runs; otherwise generates them.
fn dev_material(dir: &Path) -> Result<(DevPki, DevIssuer), StartError> {
    std::fs::create_dir_all(dir)?;
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("gateway.pem"),
        dir.join("gateway-key.pem"),
    );
    // Reused while fresh; regenerated well before the one-year validity runs out.
    let fresh = std::fs::metadata(&cert)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < std::time::Duration::from_secs(300 * 86_400));
    let pki = match (
        fresh,
        std::fs::read_to_string(&ca),
        std::fs::read_to_string(&cert),
        std::fs::read_to_string(&key),
    ) {
        (true, Ok(ca_pem), Ok(cert_pem), Ok(key_pem)) => DevPki {
            ca_pem,
            cert_pem,
            key_pem,
        },
        _ => {
            let pki = DevPki::generate().map_err(|e| std::io::Error::other(e.to_string()))?;
            write(&ca, &pki.ca_pem)?;
            write(&cert, &pki.cert_pem)?;
            write(&key, &pki.key_pem)?;
            pki
        }
    };
    let signing = dir.join("jwt-signing-key.pem");
    let issuer = match std::fs::read_to_string(&signing) {
        Ok(pem) => DevIssuer::from_key_pem(ISSUER, AUDIENCE, &pem),
        Err(_) => {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            write(&signing, &pair.serialize_pem())?;
            DevIssuer::from_key_pem(ISSUER, AUDIENCE, &pair.serialize_pem())
        }
    }
    .map_err(std::io::Error::other)?;
    write(&dir.join("jwks.json"), &issuer.jwks_json)?;
    Ok((pki, issuer))
}

fn rules_dir(opt: &Option<PathBuf>) -> std::io::Result<PathBuf> {
    if let Some(d) = opt {
        return Ok(d.clone());
    }
    let local = PathBuf::from("rules");
    if local.join("routes.yaml").exists() {
        return Ok(local);
    }
    let tmp = std::env::temp_dir().join(format!("phigate-demo-rules-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    for (name, text) in EMBEDDED_RULES {
        write(&tmp.join(name), text)?;
    }
    Ok(tmp)
}

pub fn settings(
    listen: std::net::SocketAddr,
    admin: Option<std::net::SocketAddr>,
    rules_dir: PathBuf,
    upstream: std::net::SocketAddr,
    jwks_file: PathBuf,
) -> Settings {
    Settings {
        file: None,
        listen,
        tls_cert: PathBuf::new(),
        tls_key: PathBuf::new(),
        rules_dir,
        upstreams: vec![UpstreamSettings {
            name: "api".into(),
            scheme: http::uri::Scheme::HTTP,
            authority: upstream
                .to_string()
                .parse()
                .expect("socket address is an authority"),
            base_path: String::new(),
            ca: None,
            http2: false,
            forward_authorization: false,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        }],
        jwt: JwtSettings {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            jwks_file: Some(jwks_file),
            hs256_secret: None,
            leeway_s: 30,
            user_claim: "sub".into(),
            cache_size: 10_000,
        },
        admin_listen: admin,
        limits: Limits::default(),
        audit: crate::audit::AuditSink::Stdout,
        reload: Default::default(),
    }
}

/// Starts the sample API and the gateway; returns the running gateway and the text to print.
pub async fn start(opts: DemoOptions) -> Result<(Running, String), StartError> {
    let (pki, issuer) = dev_material(&opts.certs_dir)?;
    let rules = rules_dir(&opts.rules_dir)?;
    let (listener, api_addr) = sample_api::bind().await?;
    tokio::spawn(sample_api::serve(listener));
    let s = settings(
        opts.listen,
        Some(opts.admin_listen),
        rules.clone(),
        api_addr,
        opts.certs_dir.join("jwks.json"),
    );
    let tls_config = tls::server_config_from_pem(&pki.cert_pem, &pki.key_pem)?;
    let running = app::start(s, tls_config).await?;
    let ca = opts.certs_dir.join("ca.pem");
    let base = format!("https://{}", running.addr);
    let mut out = String::new();
    out.push_str(&format!(
        "phigate demo\n  gateway   {base}  (rules: {})\n  admin     http://{}\n  sample API http://{api_addr} (upstream 'api')\n  CA        {}\n\nDevelopment tokens (valid 12 hours; paste these lines into a shell):\n",
        rules.display(),
        running.admin_addr.map_or("-".into(), |a| a.to_string()),
        ca.display()
    ));
    for (user, what) in USERS {
        let var = format!(
            "TOKEN_{}",
            user.split('@').next().unwrap_or(user).to_ascii_uppercase()
        );
        out.push_str(&format!(
            "  # {user}: {what}\n  export {var}={}\n",
            issuer.mint(user, 12 * 3600)
        ));
    }
    let curl = format!("curl -s --cacert {}", ca.display());
    out.push_str(&format!(
        "\nThings to try:\n\
  {curl} {base}/healthz                                               # public: 200, no token\n\
  {curl} {base}/api/patients                                          # 401: no token\n\
  {curl} -H \"Authorization: Bearer $TOKEN_DANA\" {base}/api/patients    # DPO: 200, everything\n\
  {curl} -H \"Authorization: Bearer $TOKEN_ALEX\" {base}/api/patients/1  # full access: 200, unmasked\n\
  {curl} -H \"Authorization: Bearer $TOKEN_BOB\"  {base}/api/patients    # anonymized: 200\n\
  {curl} -H \"Authorization: Bearer $TOKEN_BOB\"  {base}/api/patients/1  # 403: inline deny of cdp:patient:view\n\
  {curl} -H \"Authorization: Bearer $TOKEN_MIA\"  {base}/api/maps/3/embed # marketer: 200\n\
  {curl} -H \"Authorization: Bearer $TOKEN_MIA\"  {base}/api/patients    # 403: no PHI permission\n\
  {curl} --path-as-is -H \"Authorization: Bearer $TOKEN_ALEX\" {base}/api/../admin  # 400: dot segment\n\
  {curl} --http2 -H \"Authorization: Bearer $TOKEN_DANA\" {base}/api/reports  # HTTP/2\n\
  curl -s http://{}/readyz\n\nCtrl-C stops the demo.\n",
        running.admin_addr.map_or("127.0.0.1:9901".into(), |a| a.to_string()),
    ));
    Ok((running, out))
}
