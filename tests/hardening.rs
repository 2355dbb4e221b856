//! Issue 5: every resource limit, exercised over real sockets. Connection limit, TLS
//! handshake timeout, slow-loris header read timeout, header size and count (431), the
//! streamed request body limit (413, also chunked and h2), upstream connect timeout (502),
//! HTTP/2 settings, rapid reset and CONTINUATION floods, the idle timeout, and certificate
//! reload without restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::{client_tls, raw_status, Harness, Options};

pub const DPO: &str = "dana@clinic.example";

/// A TLS connection to the gateway with the given ALPN (empty: none offered).
pub async fn tls_connect(h: &Harness, alpn: &[u8]) -> TlsStream<TcpStream> {
    tls_connect_ca(h.gateway.addr, &h.pki.ca_pem, alpn)
        .await
        .expect("TLS handshake")
}

pub async fn tls_connect_ca(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    alpn: &[u8],
) -> std::io::Result<TlsStream<TcpStream>> {
    let offered: &[&[u8]] = if alpn.is_empty() { &[] } else { &[alpn] };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(ca_pem, offered)));
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Reads one HTTP/1.1 response (head plus Content-Length body) from a kept-alive stream.
pub async fn read_h1_response<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    within: Duration,
) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    tokio::time::timeout(within, async {
        loop {
            let text = String::from_utf8_lossy(&out).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return Some(text);
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// True if the peer closes the stream (EOF or error) within `within`; bytes read before
/// that are ignored.
pub async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

pub fn get(path: &str, token: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n")
        .into_bytes()
}

/// A raw HTTP/2 client: frames written by hand, so it can send what a well-behaved client
/// never would.
#[allow(dead_code)] // shared with the smuggling tests
pub mod h2raw {
    use super::*;

    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const GOAWAY: u8 = 7;
    pub const CONTINUATION: u8 = 9;
    pub const END_STREAM: u8 = 1;
    pub const END_HEADERS: u8 = 4;

    pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut v: usize) {
        let max = (1usize << prefix_bits) - 1;
        if v < max {
            out.push(first | v as u8);
            return;
        }
        out.push(first | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128 + 128) as u8);
            v /= 128;
        }
        out.push(v as u8);
    }

    /// A header block of literal fields without indexing, no Huffman coding.
    pub fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in fields {
            out.push(0x00);
            hpack_int(&mut out, 0, 7, k.len());
            out.extend_from_slice(k.as_bytes());
            hpack_int(&mut out, 0, 7, v.len());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    pub fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut f = vec![
            (":method", method),
            (":scheme", "https"),
            (":path", path),
            (":authority", "localhost"),
        ];
        f.extend_from_slice(extra);
        hpack(&f)
    }

    #[derive(Debug)]
    pub struct Frame {
        pub ty: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// The error code of a RST_STREAM or GOAWAY.
        pub fn error_code(&self) -> Option<u32> {
            let at = match self.ty {
                RST_STREAM => 0,
                GOAWAY => 4,
                _ => return None,
            };
            self.payload
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
        }
    }

    pub struct Conn {
        pub tls: TlsStream<TcpStream>,
        buf: Vec<u8>,
    }

    impl Conn {
        /// Connects with ALPN h2 and sends the preface and an empty SETTINGS.
        pub async fn open(h: &Harness) -> Conn {
            let mut tls = tls_connect(h, b"h2").await;
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            hello.extend(frame(SETTINGS, 0, 0, &[]));
            tls.write_all(&hello).await.unwrap();
            Conn {
                tls,
                buf: Vec::new(),
            }
        }

        pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.tls.write_all(bytes).await?;
            self.tls.flush().await
        }

        /// The next frame, or None at EOF, error or timeout. SETTINGS are acknowledged.
        pub async fn next(&mut self, within: Duration) -> Option<Frame> {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                if self.buf.len() >= 9 {
                    let len = (self.buf[0] as usize) << 16
                        | (self.buf[1] as usize) << 8
                        | self.buf[2] as usize;
                    if self.buf.len() >= 9 + len {
                        let f = Frame {
                            ty: self.buf[3],
                            flags: self.buf[4],
                            stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap())
                                & 0x7fff_ffff,
                            payload: self.buf[9..9 + len].to_vec(),
                        };
                        self.buf.drain(..9 + len);
                        if f.ty == SETTINGS && f.flags & 1 == 0 {
                            let _ = self.send(&frame(SETTINGS, 1, 0, &[])).await;
                        }
                        return Some(f);
                    }
                }
                let mut chunk = [0u8; 16384];
                match tokio::time::timeout_at(deadline, self.tls.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                    _ => return None,
                }
            }
        }

        /// Frames until EOF or `within` passes.
        pub async fn drain(&mut self, within: Duration) -> Vec<Frame> {
            let deadline = tokio::time::Instant::now() + within;
            let mut out = Vec::new();
            while let Some(f) = self
                .next(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await
            {
                out.push(f);
            }
            out
        }

        /// Sends one complete request (a HEADERS frame ending the stream) and returns the
        /// frames up to its end.
        pub async fn roundtrip(&mut self, stream: u32, block: &[u8]) -> Vec<Frame> {
            self.send(&frame(HEADERS, END_HEADERS | END_STREAM, stream, block))
                .await
                .unwrap();
            self.until_stream_end(stream, Duration::from_secs(3)).await
        }

        /// Frames until one on `stream` that ends it (END_STREAM or RST_STREAM) or a GOAWAY.
        pub async fn until_stream_end(&mut self, stream: u32, within: Duration) -> Vec<Frame> {
            let deadline = tokio::time::Instant::now() + within;
            let mut out = Vec::new();
            while let Some(f) = self
                .next(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await
            {
                let end = f.ty == GOAWAY
                    || (f.stream == stream
                        && (f.ty == RST_STREAM || f.flags & END_STREAM != 0)
                        && f.ty != SETTINGS);
                out.push(f);
                if end {
                    break;
                }
            }
            out
        }
    }
}

#[tokio::test]
async fn connection_limit_queues_new_connections_and_existing_ones_keep_working() {
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(|s| s.limits.max_connections = 2)),
        ..Options::default()
    })
    .await;
    let t = h.token(DPO);
    let mut a = tls_connect(&h, b"http/1.1").await;
    let mut b = tls_connect(&h, b"http/1.1").await;
    // A third connection is accepted by the kernel but not served: its handshake waits.
    let (addr, ca) = (h.gateway.addr, h.pki.ca_pem.clone());
    let third = tokio::spawn(async move { tls_connect_ca(addr, &ca, b"http/1.1").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "third connection served beyond the limit"
    );
    // The two within the limit keep working, several requests each.
    for _ in 0..3 {
        for s in [&mut a, &mut b] {
            s.write_all(&get("/api/reports", &t)).await.unwrap();
            let r = read_h1_response(s, Duration::from_secs(5)).await.unwrap();
            assert_eq!(raw_status(&r), 200, "{r}");
        }
    }
    assert!(!third.is_finished());
    // One closes: the waiting connection is served.
    drop(a);
    let mut c = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot frees")
        .unwrap()
        .expect("handshake");
    c.write_all(&get("/api/reports", &t)).await.unwrap();
    let r = read_h1_response(&mut c, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(raw_status(&r), 200, "{r}");
}

#[tokio::test]
async fn tls_handshake_timeout_drops_a_silent_client() {
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(|s| {
            s.limits.handshake_timeout = Duration::from_millis(400)
        })),
        ..Options::default()
    })
    .await;
    let t = Instant::now();
    let mut tcp = TcpStream::connect(h.gateway.addr).await.unwrap();
    // Half a ClientHello record header, then nothing.
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    assert!(closed_within(&mut tcp, Duration::from_secs(5)).await);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Others are still served.
    assert_eq!(h.get_as(Some(DPO), "/api/reports").await.status, 200);
}

#[tokio::test]
async fn slow_loris_is_cut_off_by_the_header_read_timeout() {
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(|s| {
            s.limits.header_read_timeout = Duration::from_secs(1)
        })),
        ..Options::default()
    })
    .await;
    let t = h.token(DPO);
    let mut s = tls_connect(&h, b"http/1.1").await;
    let request = get("/api/reports", &t);
    let started = Instant::now();
    let mut cut_after = None;
    // One byte every 300 ms: the whole head would take minutes.
    for (i, b) in request.iter().enumerate().take(40) {
        if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
            cut_after = Some(i);
            break;
        }
        let mut probe = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_after = Some(i);
                break;
            }
            Ok(Ok(_)) => {
                // hyper may answer 408 before closing; then it closes.
                assert!(closed_within(&mut s, Duration::from_secs(2)).await);
                cut_after = Some(i);
                break;
            }
            Err(_) => {}
        }
    }
    let took = started.elapsed();
    assert!(cut_after.is_some(), "a slow client was never cut off");
    assert!(
        took < Duration::from_secs(3),
        "cut off after {took:?}, bytes {cut_after:?}"
    );
    assert_eq!(h.upstream.count(), 0);
    assert_eq!(h.get_as(Some(DPO), "/api/reports").await.status, 200);
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_431() {
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(|s| {
            s.limits.max_headers = 20;
            s.limits.max_header_bytes = 4096;
        })),
        ..Options::default()
    })
    .await;
    let t = h.token(DPO);
    let with = |extra: String| {
        format!(
            "GET /api/reports HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\n{extra}\r\n"
        )
    };
    // Count: 25 fields, within hyper's cap (twice the limit): the gateway's 431.
    let many: String = (0..25).map(|i| format!("x-h{i}: v\r\n")).collect();
    let out = h.raw(with(many).as_bytes()).await;
    assert_eq!(raw_status(&out), 431, "{out}");
    assert!(out.contains("headers-too-large"), "{out}");
    // Far beyond: cut off by the HTTP layer, still 431.
    let lots: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let out = h.raw(with(lots).as_bytes()).await;
    assert_eq!(raw_status(&out), 431, "{out}");
    // Size: one 5 KiB header, then one 200 KiB header.
    let out = h
        .raw(with(format!("x-big: {}\r\n", "a".repeat(5 << 10))).as_bytes())
        .await;
    assert_eq!(raw_status(&out), 431, "{out}");
    let out = h
        .raw(with(format!("x-big: {}\r\n", "a".repeat(200 << 10))).as_bytes())
        .await;
    assert_eq!(raw_status(&out), 431, "{out}");
    // HTTP/2: a 5 KiB header (gateway) and a 20 KiB one (h2's header list size).
    for size in [5 << 10, 20 << 10] {
        let req = Request::get(format!("{}/api/reports", h.base()))
            .header("authorization", format!("Bearer {t}"))
            .header("x-big", "b".repeat(size))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = h.send(true, req).await;
        assert_eq!(r.status, 431, "h2 header of {size} bytes");
    }
    assert_eq!(h.upstream.count(), 0, "nothing oversized was forwarded");
    // Within the limits all is well.
    let out = h.raw(with("x-ok: 1\r\n".into()).as_bytes()).await;
    assert_eq!(raw_status(&out), 200, "{out}");
}

#[tokio::test]
async fn request_body_limit_is_413_with_and_without_content_length() {
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(|s| s.limits.max_request_body = 1024)),
        ..Options::default()
    })
    .await;
    let t = h.token(DPO);
    let head = |framing: &str| {
        format!(
            "PUT /api/maps/1/embed HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\n\
Content-Type: application/octet-stream\r\n{framing}\r\n"
        )
    };
    // Declared too large: refused before any body is read or forwarded.
    let out = h.raw(head("Content-Length: 5000\r\n").as_bytes()).await;
    assert_eq!(raw_status(&out), 413, "{out}");
    assert!(out.to_ascii_lowercase().contains("connection: close"));
    assert_eq!(h.upstream.count(), 0);
    // Chunked, no Content-Length: the limit trips while streaming; 413, not 502.
    let mut req = head("Transfer-Encoding: chunked\r\n").into_bytes();
    for _ in 0..5 {
        req.extend_from_slice(format!("400\r\n{}\r\n", "z".repeat(1024)).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let out = h.raw(&req).await;
    assert_eq!(raw_status(&out), 413, "{out}");
    // HTTP/2 without content-length.
    let req = Request::put(format!("{}/api/maps/1/embed", h.base()))
        .header("authorization", format!("Bearer {t}"))
        .body(Full::new(Bytes::from(vec![b'y'; 5000])))
        .unwrap();
    let mut req = req;
    req.headers_mut().remove("content-length");
    let r = h.send(true, req).await;
    assert_eq!(r.status, 413);
    // The upstream never received a complete oversized body.
    assert!(
        h.upstream.requests().iter().all(|s| s.body.len() <= 1024),
        "an oversized body reached the upstream"
    );
    // At the limit it goes through.
    let mut req = head("Transfer-Encoding: chunked\r\n").into_bytes();
    req.extend_from_slice(format!("400\r\n{}\r\n0\r\n\r\n", "z".repeat(1024)).as_bytes());
    let out = h.raw(&req).await;
    assert_eq!(raw_status(&out), 200, "{out}");
    assert!(out.contains("\"body_len\":1024"), "{out}");
}

#[tokio::test]
async fn upstream_connect_timeout_is_502() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so a connect
    // neither succeeds nor fails, it hangs.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(move |s| {
            s.upstreams[0].authority = addr.to_string().parse().unwrap();
            s.upstreams[0].connect_timeout = Duration::from_millis(500);
            s.upstreams[0].timeout = Duration::from_secs(20);
        })),
        ..Options::default()
    })
    .await;
    let t = Instant::now();
    let r = h.get_as(Some(DPO), "/api/reports").await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(
        r.json()["type"],
        "https://phigate.dev/problems/upstream-unavailable"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(listener);
}

#[tokio::test]
async fn h2_settings_advertise_the_stream_and_header_limits() {
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(|s| {
            s.limits.h2_max_concurrent_streams = 7;
            s.limits.max_header_bytes = 4096;
        })),
        ..Options::default()
    })
    .await;
    let mut c = h2raw::Conn::open(&h).await;
    let f = c
        .next(Duration::from_secs(3))
        .await
        .expect("server SETTINGS");
    assert_eq!(f.ty, h2raw::SETTINGS);
    let settings: Vec<(u16, u32)> = f
        .payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    // 0x3 MAX_CONCURRENT_STREAMS, 0x6 MAX_HEADER_LIST_SIZE.
    assert!(settings.contains(&(3, 7)), "{settings:?}");
    assert!(settings.contains(&(6, 8192)), "{settings:?}");
}

#[tokio::test]
async fn h2_streams_beyond_the_concurrency_limit_are_refused() {
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(|s| s.limits.h2_max_concurrent_streams = 2)),
        ..Options::default()
    })
    .await;
    let t = h.token(DPO);
    let auth = format!("Bearer {t}");
    let mut c = h2raw::Conn::open(&h).await;
    // Four slow requests at once, ignoring the advertised limit of 2.
    let mut burst = Vec::new();
    for i in 0..4u32 {
        let block = h2raw::request(
            "GET",
            "/api/reports?sleep_ms=1500",
            &[("authorization", &auth)],
        );
        burst.extend(h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            1 + 2 * i,
            &block,
        ));
    }
    c.send(&burst).await.unwrap();
    let frames = c.drain(Duration::from_secs(4)).await;
    let refused: Vec<u32> = frames
        .iter()
        .filter(|f| f.ty == h2raw::RST_STREAM && f.error_code() == Some(0x7))
        .map(|f| f.stream)
        .collect();
    // REFUSED_STREAM (0x7) for the streams beyond the limit; the first two are answered.
    assert_eq!(refused, vec![5, 7], "{frames:?}");
    for s in [1, 3] {
        assert!(
            frames
                .iter()
                .any(|f| f.stream == s && f.ty == h2raw::HEADERS),
            "stream {s} answered: {frames:?}"
        );
    }
    assert_eq!(h.upstream.count(), 2);
}

#[tokio::test]
async fn h2_rapid_reset_flood_is_cut_off() {
    let h = Harness::start().await;
    let t = h.token(DPO);
    let auth = format!("Bearer {t}");
    let mut c = h2raw::Conn::open(&h).await;
    // CVE-2023-44487: open a stream and cancel it at once, thousands of times.
    let block = h2raw::request(
        "GET",
        "/api/reports?sleep_ms=200",
        &[("authorization", &auth)],
    );
    let mut burst = Vec::new();
    for i in 0..2000u32 {
        let id = 1 + 2 * i;
        burst.extend(h2raw::frame(
            h2raw::HEADERS,
            h2raw::END_HEADERS | h2raw::END_STREAM,
            id,
            &block,
        ));
        burst.extend(h2raw::frame(h2raw::RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = c.send(&burst).await;
    let frames = c.drain(Duration::from_secs(5)).await;
    let goaway = frames
        .iter()
        .find(|f| f.ty == h2raw::GOAWAY)
        .unwrap_or_else(|| panic!("no GOAWAY after a reset flood: {} frames", frames.len()));
    // ENHANCE_YOUR_CALM (0xb).
    assert_eq!(goaway.error_code(), Some(0xb), "{goaway:?}");
    assert!(
        h.upstream.count() < 200,
        "{} cancelled requests reached the upstream",
        h.upstream.count()
    );
    assert_eq!(
        h.call(true, http::Method::GET, Some(DPO), "/api/reports")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn h2_continuation_flood_is_cut_off() {
    let h = Harness::start().await;
    let mut c = h2raw::Conn::open(&h).await;
    let block = h2raw::request("GET", "/api/reports", &[]);
    // HEADERS without END_HEADERS, then endless CONTINUATION frames (CVE-2024-27316 style).
    c.send(&h2raw::frame(h2raw::HEADERS, h2raw::END_STREAM, 1, &block))
        .await
        .unwrap();
    let junk = h2raw::hpack(&[("x-flood", &"f".repeat(40))]);
    let started = Instant::now();
    let mut sent_frames = 0;
    for _ in 0..50 {
        let mut chunk = Vec::new();
        for _ in 0..200 {
            chunk.extend(h2raw::frame(h2raw::CONTINUATION, 0, 1, &junk));
        }
        if c.send(&chunk).await.is_err() {
            break;
        }
        sent_frames += 200;
    }
    let frames = c.drain(Duration::from_secs(3)).await;
    let goaway = frames.iter().find(|f| f.ty == h2raw::GOAWAY);
    assert!(
        goaway.is_some_and(|g| g.error_code() == Some(0xb) || g.error_code() == Some(0x1)),
        "no GOAWAY after {sent_frames} CONTINUATION frames: {frames:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(h.upstream.count(), 0);
    assert_eq!(
        h.call(true, http::Method::GET, Some(DPO), "/api/reports")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(|s| {
            s.limits.idle_timeout = Duration::from_millis(600);
            s.limits.header_read_timeout = Duration::from_secs(30);
        })),
        ..Options::default()
    })
    .await;
    let t = h.token(DPO);
    // HTTP/1.1: served, then idle -> closed.
    let mut s = tls_connect(&h, b"http/1.1").await;
    s.write_all(&get("/api/reports", &t)).await.unwrap();
    let r = read_h1_response(&mut s, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(raw_status(&r), 200, "{r}");
    let started = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // A request that takes longer than the idle timeout is not cut.
    let mut s = tls_connect(&h, b"http/1.1").await;
    s.write_all(&get("/api/reports?sleep_ms=1500", &t))
        .await
        .unwrap();
    let r = read_h1_response(&mut s, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(raw_status(&r), 200, "{r}");
    // HTTP/2: answers pings, sends nothing: GOAWAY then close.
    let mut c = h2raw::Conn::open(&h).await;
    let started = Instant::now();
    let frames = c.drain(Duration::from_secs(5)).await;
    assert!(frames.iter().any(|f| f.ty == h2raw::GOAWAY), "{frames:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let metrics = h.gateway.gateway.metrics.clone();
    let closed = crate::support::eventually(Duration::from_secs(3), || {
        let m = metrics.clone();
        async move {
            m.open_connections
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
        }
    })
    .await;
    assert!(closed.is_some(), "idle connections still counted open");
}

#[tokio::test]
async fn certificate_and_key_reload_without_restart() {
    let certs = tempfile::tempdir().unwrap();
    let cert = certs.path().join("gateway.pem");
    let key = certs.path().join("gateway-key.pem");
    let first = phigate::server::tls::DevPki::generate().unwrap();
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let audit = certs.path().join("audit.jsonl");
    let (c2, k2, a2) = (cert.clone(), key.clone(), audit.clone());
    let h = Harness::start_with(Options {
        tweak: Some(Box::new(move |s| {
            s.tls_cert = c2;
            s.tls_key = k2;
            s.reload.poll_interval = Duration::from_millis(100);
            s.audit = phigate::audit::AuditSink::File(a2);
        })),
        ..Options::default()
    })
    .await;
    let addr = h.gateway.addr;
    // The gateway started with the harness's in-memory certificate.
    assert!(tls_connect_ca(addr, &h.pki.ca_pem, b"http/1.1")
        .await
        .is_ok());
    // A kept-alive connection made before the change.
    let t = h.token(DPO);
    let mut old = tls_connect(&h, b"http/1.1").await;
    // Rotate: new certificate and key on disk.
    let second = phigate::server::tls::DevPki::generate().unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    let ok = crate::support::eventually(Duration::from_secs(5), || async {
        tls_connect_ca(addr, &second.ca_pem, b"http/1.1")
            .await
            .is_ok()
    })
    .await;
    assert!(ok.is_some(), "new certificate not picked up");
    assert!(
        tls_connect_ca(addr, &h.pki.ca_pem, b"http/1.1")
            .await
            .is_err(),
        "old certificate still served to new connections"
    );
    // The connection made before keeps working.
    old.write_all(&get("/api/reports", &t)).await.unwrap();
    let r = read_h1_response(&mut old, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(raw_status(&r), 200);
    // A broken pair (key of another certificate) is refused; the good one stays.
    let third = phigate::server::tls::DevPki::generate().unwrap();
    std::fs::write(&key, &third.key_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(tls_connect_ca(addr, &second.ca_pem, b"http/1.1")
        .await
        .is_ok());
    h.flush_audit().await;
    let log = std::fs::read_to_string(&audit).unwrap();
    let reloads: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["type"] == "tls_reload")
        .collect();
    assert!(reloads.iter().any(|r| r["outcome"] == "applied"), "{log}");
    assert!(reloads.iter().any(|r| r["outcome"] == "refused"), "{log}");
}

/// The protocol is chosen once, by ALPN: http/1.1 and no ALPN at all get HTTP/1.1 (as
/// wrk and older clients send), h2 gets h2; an h2 preface without ALPN h2 is not HTTP/2.
#[tokio::test]
async fn alpn_alone_picks_the_protocol() {
    let h = Harness::start().await;
    let token = h.token(DPO);
    let get = format!(
        "GET /api/reports HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\r\n"
    );
    let no_alpn = tls_connect(&h, b"").await;
    assert_eq!(no_alpn.get_ref().1.alpn_protocol(), None);
    for mut tls in [tls_connect(&h, b"http/1.1").await, no_alpn] {
        // Two requests on the connection: keep-alive works on either.
        for _ in 0..2 {
            tls.write_all(get.as_bytes()).await.unwrap();
            let resp = read_h1_response(&mut tls, Duration::from_secs(5))
                .await
                .expect("an HTTP/1.1 response");
            assert_eq!(raw_status(&resp), 200, "{resp}");
        }
    }
    // The h2 preface on an HTTP/1.1 connection is refused, not sniffed into h2.
    let mut tls = tls_connect(&h, b"http/1.1").await;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
    assert!(!buf.starts_with(&[0, 0]), "no h2 SETTINGS frame came back");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
}
