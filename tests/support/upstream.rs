//! A real HTTP upstream on loopback that records what it received and echoes it back.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub version: http::Version,
    /// Path and query exactly as received.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn has_header_like(&self, folded: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.to_ascii_lowercase().replace(['_', '.'], "-") == folded)
    }
}

/// A canned response the upstream sends instead of its echo (for masking tests).
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub chunks: Vec<Bytes>,
    /// After the chunks, fail the body (the connection is cut mid-body).
    pub fail_mid_body: bool,
}

impl Script {
    /// A 200 with one body and a content type.
    pub fn body(content_type: &str, body: impl Into<Bytes>) -> Script {
        Script {
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
            chunks: vec![body.into()],
            fail_mid_body: false,
        }
    }
    pub fn json(v: &serde_json::Value) -> Script {
        Script::body("application/json", v.to_string())
    }
    pub fn header(mut self, k: &str, v: &str) -> Script {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn status(mut self, s: u16) -> Script {
        self.status = s;
        self
    }
}

struct ScriptBody {
    chunks: std::collections::VecDeque<Bytes>,
    fail: bool,
    /// Before failing, wait so the head and the chunks really leave (a cut *after* a
    /// partial body, not before the response).
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for ScriptBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if let Some(c) = self.chunks.pop_front() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(c))));
        }
        if self.fail {
            let pause = self
                .pause
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(100))));
            if std::future::Future::poll(pause.as_mut(), cx).is_pending() {
                return std::task::Poll::Pending;
            }
            self.fail = false;
            return std::task::Poll::Ready(Some(Err(std::io::Error::other("cut mid-body"))));
        }
        std::task::Poll::Ready(None)
    }
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

#[derive(Clone)]
pub struct Echo {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<Option<Script>>>,
    /// Connections accepted so far.
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Echo {
    pub async fn start() -> Echo {
        Self::start_with_tls(None).await
    }

    /// An echo upstream behind TLS (HTTP/1.1 and h2 by ALPN), for `https://` upstreams.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Echo {
        Self::start_with_tls(Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with_tls(tls: Option<tokio_rustls::TlsAcceptor>) -> Echo {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script: Arc<Mutex<Option<Script>>> = Arc::default();
        let record = seen.clone();
        let scripted = script.clone();
        let connections: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let accepted = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let record = record.clone();
                let scripted = scripted.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let record = record.clone();
                        let script = scripted.lock().unwrap().clone();
                        async move { Ok::<_, Infallible>(echo(req, record, script).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Echo {
            addr,
            seen,
            script,
            connections,
        }
    }

    /// Connections the gateway opened to this upstream so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// From now on, answer every request with this script.
    pub fn script(&self, s: Script) {
        *self.script.lock().unwrap() = Some(s);
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The request the gateway forwarded with this request id, if any.
    pub fn by_request_id(&self, id: &str) -> Option<Seen> {
        self.requests()
            .into_iter()
            .find(|s| s.header("x-request-id") == Some(id))
    }
}

async fn echo(
    req: Request<Incoming>,
    record: Arc<Mutex<Vec<Seen>>>,
    script: Option<Script>,
) -> Response<EchoBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    record.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        version: parts.version,
        target: target.clone(),
        headers: headers.clone(),
        body: body.clone(),
    });
    // `?sleep_ms=N` makes the upstream slow.
    if let Some(ms) = parts
        .uri
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("sleep_ms=")))
    {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if let Some(s) = script {
        let mut resp = Response::new(
            ScriptBody {
                chunks: s.chunks.into_iter().collect(),
                fail: s.fail_mid_body,
                pause: None,
            }
            .boxed(),
        );
        *resp.status_mut() = http::StatusCode::from_u16(s.status).unwrap();
        for (k, v) in s.headers {
            resp.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(&v).unwrap(),
            );
        }
        return resp;
    }
    let map: BTreeMap<String, String> = headers.into_iter().collect();
    let out = json!({"method": parts.method.as_str(), "target": target, "headers": map, "body_len": body.len()});
    let mut resp = Response::new(
        Full::new(Bytes::from(out.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
