//! Response filter phase: for an anonymized caller on a masked route, the upstream's body is
//! decoded, parsed and masked before any byte of it leaves the gateway. Everything the
//! filter cannot vouch for is refused (502), never passed through.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::{full_body, Body, BoxError, GatewayError};
use crate::masking::gather::{Gathered, Gatherer};
use crate::masking::{FieldSet, MaskReport};

/// Bodies above this size are masked on a blocking thread, not on the reactor.
const BLOCKING_THRESHOLD: usize = 256 * 1024;

/// Large bodies masked at once: one per core. Unbounded, every masker shared the cores
/// with its own fresh output buffer: at 64 concurrent 1 MB responses that thrashed the
/// caches and faulted in new pages (CPU per masked request 2.6x passthrough instead of
/// 2.3x). Waiting for a slot is async: no thread is held.
fn large_mask_slots() -> Arc<tokio::sync::Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    SLOTS
        .get_or_init(|| {
            let cores = crate::server::workers::resolve_count(0);
            Arc::new(tokio::sync::Semaphore::new(cores))
        })
        .clone()
}

/// Client request headers that would let the upstream answer with less than a whole,
/// plain body (which could not be masked) are dropped on masked routes.
pub fn prepare_masked_request(h: &mut HeaderMap) {
    for name in [
        header::RANGE,
        header::IF_RANGE,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
    ] {
        h.remove(name);
    }
    h.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Ndjson,
    Passthrough,
    Refused,
}

/// Which treatment a response's media type gets on a masked route.
pub fn classify(content_type: Option<&HeaderValue>, passthrough: &[String]) -> BodyKind {
    let Some(ct) = content_type else {
        return BodyKind::Json;
    };
    let Ok(ct) = ct.to_str() else {
        return BodyKind::Refused;
    };
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media.is_empty() || media == "application/json" || media == "text/plain" {
        return BodyKind::Json;
    }
    if let Some(sub) = media.strip_prefix("application/") {
        if sub.ends_with("+json") {
            return BodyKind::Json;
        }
        if sub == "x-ndjson" || sub == "jsonl" {
            return BodyKind::Ndjson;
        }
    }
    let listed = passthrough.iter().any(|p| {
        *p == media
            || p.strip_suffix("/*")
                .is_some_and(|ty| media.split('/').next() == Some(ty))
    });
    if listed {
        BodyKind::Passthrough
    } else {
        BodyKind::Refused
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
}

fn content_coding(h: &HeaderMap) -> Result<Coding, GatewayError> {
    let mut codings = Vec::new();
    for v in h.get_all(header::CONTENT_ENCODING) {
        let v = v
            .to_str()
            .map_err(|_| refuse("unreadable Content-Encoding"))?;
        for c in v
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty())
        {
            match c.as_str() {
                "identity" => {}
                "gzip" | "x-gzip" => codings.push(Coding::Gzip),
                "deflate" => codings.push(Coding::Deflate),
                "br" => codings.push(Coding::Brotli),
                _ => {
                    return Err(refuse(
                        "the upstream used a content coding the gateway cannot decode",
                    ))
                }
            }
        }
    }
    match codings.as_slice() {
        [] => Ok(Coding::Identity),
        [one] => Ok(*one),
        _ => Err(refuse("stacked content codings are not decoded")),
    }
}

fn refuse(why: &str) -> GatewayError {
    GatewayError::BadUpstreamResponse(why.to_string())
}

/// Decodes under the same size limit as plain bodies: a decompression bomb is a 502.
fn decode(coding: Coding, data: Bytes, limit: u64) -> Result<Bytes, GatewayError> {
    fn read_capped(mut r: impl Read, limit: u64) -> Result<Bytes, GatewayError> {
        let mut out = Vec::new();
        (&mut r)
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|_| refuse("the upstream's compressed body is corrupt"))?;
        if out.len() as u64 > limit {
            return Err(refuse(
                "the decompressed body exceeds the masking size limit",
            ));
        }
        Ok(Bytes::from(out))
    }
    match coding {
        Coding::Identity => Ok(data),
        Coding::Gzip => read_capped(flate2::read::MultiGzDecoder::new(&data[..]), limit),
        // HTTP's "deflate" is zlib-wrapped; some servers send raw deflate.
        Coding::Deflate => read_capped(flate2::read::ZlibDecoder::new(&data[..]), limit)
            .or_else(|_| read_capped(flate2::read::DeflateDecoder::new(&data[..]), limit)),
        Coding::Brotli => read_capped(brotli::Decompressor::new(&data[..], 4096), limit),
    }
}

fn accepts_gzip(accept_encoding: Option<&HeaderValue>) -> bool {
    let Some(v) = accept_encoding.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    v.split(',').any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q_zero = parts.any(|p| {
            let p = p.trim().to_ascii_lowercase();
            p.strip_prefix("q=")
                .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
        });
        (coding == "gzip" || coding == "x-gzip") && !q_zero
    })
}

/// Upstream response headers an anonymized caller may see on a masked route. Anything else
/// could carry PHI (a patient name in a custom header, an id in `Location`, a cookie) and is
/// dropped unless the route lists it under `passthrough_headers`.
const SAFE_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-language",
    "date",
    "retry-after",
    "www-authenticate",
    "allow",
];

/// Keeps only safe headers, then tells caches the response is private to this caller.
/// Validators and digests of the unmasked representation never survive.
fn set_masked_headers(h: &mut HeaderMap, passthrough_headers: &[String]) {
    let dropped: Vec<header::HeaderName> = h
        .keys()
        .filter(|k| {
            let k = k.as_str();
            !SAFE_RESPONSE_HEADERS.contains(&k) && !passthrough_headers.iter().any(|p| p == k)
        })
        .cloned()
        .collect();
    for name in dropped {
        h.remove(name);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    h.insert(
        header::VARY,
        HeaderValue::from_static("Authorization, Accept-Encoding"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

pub struct Filtered {
    pub response: Response<Body>,
    pub report: Option<MaskReport>,
    /// The upstream body was read to its end here (its connection can serve again).
    pub body_read_whole: bool,
}

pub struct MaskJob<'a> {
    pub set: Arc<FieldSet>,
    pub passthrough_types: &'a [String],
    pub passthrough_headers: &'a [String],
    pub is_head: bool,
    pub accept_encoding: Option<HeaderValue>,
    pub max_body: u64,
    pub max_depth: usize,
}

impl MaskJob<'_> {
    /// Masks one upstream response, or refuses it.
    pub async fn run(self, resp: Response<Incoming>) -> Result<Filtered, GatewayError> {
        let (mut parts, body) = resp.into_parts();
        if parts.status == StatusCode::PARTIAL_CONTENT {
            return Err(refuse("a partial (206) response cannot be masked"));
        }
        if parts.status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(refuse("protocol switches are not proxied on masked routes"));
        }
        // Two Content-Type headers: which one a client honours is anybody's guess.
        if parts
            .headers
            .get_all(header::CONTENT_TYPE)
            .iter()
            .nth(1)
            .is_some()
        {
            return Err(refuse("the upstream sent more than one Content-Type"));
        }
        let kind = classify(
            parts.headers.get(header::CONTENT_TYPE),
            self.passthrough_types,
        );
        let no_body = self.is_head
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        if no_body {
            // A HEAD answer would otherwise reveal the unmasked length.
            set_masked_headers(&mut parts.headers, self.passthrough_headers);
            return Ok(Filtered {
                response: Response::from_parts(parts, crate::error::empty_body()),
                report: None,
                body_read_whole: body.is_end_stream(),
            });
        }
        match kind {
            BodyKind::Refused => Err(refuse("the upstream's content type cannot be masked")),
            BodyKind::Passthrough => {
                // The body type is listed as safe by the route and passes as is, with its
                // framing; the headers get the same allowlist as masked bodies.
                let framing: Vec<_> = [header::CONTENT_LENGTH, header::CONTENT_ENCODING]
                    .into_iter()
                    .filter_map(|n| parts.headers.get(&n).cloned().map(|v| (n, v)))
                    .collect();
                set_masked_headers(&mut parts.headers, self.passthrough_headers);
                for (n, v) in framing {
                    parts.headers.insert(n, v);
                }
                Ok(Filtered {
                    response: Response::from_parts(
                        parts,
                        body.map_err(BoxError::from).boxed_unsync(),
                    ),
                    report: None,
                    body_read_whole: false,
                })
            }
            BodyKind::Json => {
                let coding = content_coding(&parts.headers)?;
                let raw = self.collect(body, &parts.headers).await?;
                let plain = match coding {
                    Coding::Identity => raw,
                    _ => Gathered::new(decode(coding, raw.into_bytes(), self.max_body)?),
                };
                let (set, depth) = (self.set.clone(), self.max_depth);
                let masked = if plain.bytes().len() > BLOCKING_THRESHOLD {
                    let slot = large_mask_slots()
                        .acquire_owned()
                        .await
                        .map_err(|_| refuse("masking failed"))?;
                    // Held by the masking thread: a client gone meanwhile frees no slot early.
                    tokio::task::spawn_blocking(move || {
                        let _slot = slot;
                        set.mask_gathered(&plain, depth)
                    })
                    .await
                    .map_err(|_| refuse("masking failed"))?
                } else {
                    set.mask_gathered(&plain, depth)
                };
                let (out, report) = masked.map_err(|e| {
                    refuse(&format!(
                        "the upstream's body is not one valid JSON value ({e})"
                    ))
                })?;
                set_masked_headers(&mut parts.headers, self.passthrough_headers);
                let out = self.maybe_gzip(&mut parts.headers, out);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
                parts.headers.insert(
                    super::headers::X_PHIGATE_MASKED,
                    HeaderValue::from(report.count),
                );
                Ok(Filtered {
                    response: Response::from_parts(parts, full_body(out)),
                    report: Some(report),
                    body_read_whole: true,
                })
            }
            BodyKind::Ndjson => {
                let coding = content_coding(&parts.headers)?;
                set_masked_headers(&mut parts.headers, self.passthrough_headers);
                parts.headers.insert(
                    super::headers::X_PHIGATE_MASKED,
                    HeaderValue::from_static("stream"),
                );
                let streamed = coding == Coding::Identity;
                let body: Body = if streamed {
                    NdjsonMasker::new(
                        body.map_err(BoxError::from).boxed_unsync(),
                        self.set.clone(),
                        self.max_body as usize,
                        self.max_depth,
                    )
                    .boxed_unsync()
                } else {
                    // Compressed streams are decoded whole (under the limit), then masked per line.
                    let raw = self.collect(body, &parts.headers).await?.into_bytes();
                    let plain = decode(coding, raw, self.max_body)?;
                    let mut out = Vec::with_capacity(plain.len());
                    for line in plain.split(|b| *b == b'\n') {
                        let (m, _) = self.set.mask_line(line, self.max_depth).map_err(|e| {
                            refuse(&format!("an NDJSON line is not valid JSON ({e})"))
                        })?;
                        if !m.is_empty() {
                            out.extend_from_slice(&m);
                            out.push(b'\n');
                        }
                    }
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
                    full_body(out)
                };
                Ok(Filtered {
                    response: Response::from_parts(parts, body),
                    report: None,
                    body_read_whole: !streamed,
                })
            }
        }
    }

    /// The whole body, within the limit; an upstream failure mid-body is a 502, never a
    /// partial body.
    async fn collect(&self, body: Incoming, headers: &HeaderMap) -> Result<Gathered, GatewayError> {
        const TOO_LARGE: &str = "the upstream's body exceeds the masking size limit";
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body) {
            return Err(refuse(TOO_LARGE));
        }
        // Within the limit checked above: sizes the buffer once.
        let mut gathered = Gatherer::new(declared);
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| refuse("the upstream failed while sending the body"))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers: not part of the document
            };
            if (gathered.len() + data.len()) as u64 > self.max_body {
                return Err(refuse(TOO_LARGE));
            }
            gathered.push(data);
        }
        Ok(gathered.finish())
    }

    fn maybe_gzip(&self, h: &mut HeaderMap, out: Vec<u8>) -> Vec<u8> {
        if out.len() < 1024 || !accepts_gzip(self.accept_encoding.as_ref()) {
            return out;
        }
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(out.len() / 4),
            flate2::Compression::fast(),
        );
        if enc.write_all(&out).is_err() {
            return out;
        }
        match enc.finish() {
            Ok(z) => {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                z
            }
            Err(_) => out,
        }
    }
}

/// Masks NDJSON line by line as it streams: complete lines are masked and sent, a partial
/// line waits for the rest. A line that is not valid JSON, a line over the limit, or an
/// upstream error ends the stream with an error (the client sees a broken response).
pub struct NdjsonMasker {
    inner: Body,
    set: Arc<FieldSet>,
    pending: BytesMut,
    max_line: usize,
    max_depth: usize,
    done: bool,
}

impl NdjsonMasker {
    pub fn new(inner: Body, set: Arc<FieldSet>, max_line: usize, max_depth: usize) -> Self {
        NdjsonMasker {
            inner,
            set,
            pending: BytesMut::new(),
            max_line,
            max_depth,
            done: false,
        }
    }

    /// Masks every complete line in `pending` (all of it when `last`).
    fn drain(&mut self, last: bool) -> Result<Option<Bytes>, BoxError> {
        let cut = if last {
            self.pending.len()
        } else {
            self.pending
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |p| p + 1)
        };
        if cut == 0 {
            return Ok(None);
        }
        let chunk = self.pending.split_to(cut);
        let mut out = Vec::with_capacity(chunk.len());
        for line in chunk[..].split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let (m, _) = self
                .set
                .mask_line(line, self.max_depth)
                .map_err(|e| -> BoxError { format!("NDJSON line refused: {e}").into() })?;
            if !m.is_empty() {
                out.extend_from_slice(&m);
                out.push(b'\n');
            }
        }
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }
}

impl HttpBody for NdjsonMasker {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are dropped: they are not masked.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    this.pending.extend_from_slice(&data);
                    match this.drain(false) {
                        Err(e) => {
                            this.done = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                        Ok(Some(out)) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Ok(None) if this.pending.len() > this.max_line => {
                            this.done = true;
                            return Poll::Ready(Some(
                                Err("NDJSON line over the size limit".into()),
                            ));
                        }
                        Ok(None) => continue,
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return match this.drain(true) {
                        Err(e) => Poll::Ready(Some(Err(e))),
                        Ok(Some(out)) => Poll::Ready(Some(Ok(Frame::data(out)))),
                        Ok(None) => Poll::Ready(None),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_media_types() {
        let hv = |s: &'static str| HeaderValue::from_static(s);
        let none: &[String] = &[];
        assert_eq!(classify(None, none), BodyKind::Json);
        assert_eq!(
            classify(Some(&hv("application/json; charset=utf-8")), none),
            BodyKind::Json
        );
        assert_eq!(
            classify(Some(&hv("application/problem+json")), none),
            BodyKind::Json
        );
        assert_eq!(
            classify(Some(&hv("Application/FHIR+JSON")), none),
            BodyKind::Json
        );
        assert_eq!(classify(Some(&hv("text/plain")), none), BodyKind::Json);
        assert_eq!(
            classify(Some(&hv("application/x-ndjson")), none),
            BodyKind::Ndjson
        );
        assert_eq!(
            classify(Some(&hv("application/jsonl")), none),
            BodyKind::Ndjson
        );
        for refused in [
            "text/html",
            "image/png",
            "text/event-stream",
            "application/octet-stream",
            "text/json+html",
        ] {
            assert_eq!(
                classify(Some(&HeaderValue::from_str(refused).unwrap()), none),
                BodyKind::Refused,
                "{refused}"
            );
        }
        let pt = vec!["image/*".to_string(), "application/pdf".to_string()];
        assert_eq!(classify(Some(&hv("image/png")), &pt), BodyKind::Passthrough);
        assert_eq!(
            classify(Some(&hv("application/pdf")), &pt),
            BodyKind::Passthrough
        );
        assert_eq!(classify(Some(&hv("text/html")), &pt), BodyKind::Refused);
    }

    #[test]
    fn decoding_is_capped() {
        use std::io::Write;
        let zeros = vec![0u8; 1 << 20];
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&zeros).unwrap();
        let bomb = Bytes::from(enc.finish().unwrap());
        assert!(bomb.len() < 10_000);
        assert!(decode(Coding::Gzip, bomb.clone(), 1 << 20).is_ok());
        assert!(decode(Coding::Gzip, bomb, (1 << 20) - 1).is_err());
        assert!(decode(Coding::Gzip, Bytes::from_static(b"not gzip"), 100).is_err());
    }

    #[test]
    fn content_codings() {
        let mut h = HeaderMap::new();
        assert_eq!(content_coding(&h).unwrap(), Coding::Identity);
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("GZIP"));
        assert_eq!(content_coding(&h).unwrap(), Coding::Gzip);
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        assert!(content_coding(&h).is_err());
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("gzip, br"),
        );
        assert!(content_coding(&h).is_err());
    }

    #[test]
    fn gzip_acceptance() {
        assert!(accepts_gzip(Some(&HeaderValue::from_static(
            "gzip, deflate, br"
        ))));
        assert!(!accepts_gzip(Some(&HeaderValue::from_static(
            "gzip;q=0, br"
        ))));
        assert!(!accepts_gzip(None));
    }
}
