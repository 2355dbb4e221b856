//! Issue 5: request smuggling and protocol abuse over raw sockets. Each message is refused
//! (or normalised) and the upstream never receives an ambiguous message: the assertions
//! are on what the upstream saw.

use std::time::Duration;

use crate::hardening::{h2raw, read_h1_response, tls_connect, DPO};
use crate::support::{raw_status, Harness};

/// Sends raw bytes on one connection and returns everything until close or 3 s.
async fn raw_all(h: &Harness, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tls_connect(h, b"http/1.1").await;
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(out: &str) -> Vec<u16> {
    out.match_indices("HTTP/1.")
        .filter_map(|(i, _)| out[i..].split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// The request in front, followed by a smuggled one that must never run.
fn with_smuggled(h: &Harness, front: &str) -> Vec<u8> {
    let t = h.token(DPO);
    let smuggled = format!(
        "GET /api/patients?smuggled=1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\n\r\n"
    );
    format!("{front}{smuggled}").into_bytes()
}

fn assert_not_smuggled(h: &Harness) {
    for s in h.upstream.requests() {
        assert!(
            !s.target.contains("smuggled"),
            "smuggled request reached the upstream: {s:?}"
        );
        assert!(
            !(s.header("content-length").is_some() && s.header("transfer-encoding").is_some()),
            "ambiguous framing reached the upstream: {s:?}"
        );
    }
}

#[tokio::test]
async fn conflicting_content_lengths_are_refused() {
    let h = Harness::start().await;
    let t = h.token(DPO);
    for cl in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: 0x5\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 99999999999999999999999\r\n",
    ] {
        let front = format!(
            "PUT /api/maps/1/embed HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\n{cl}\r\nhello"
        );
        let out = raw_all(&h, &with_smuggled(&h, &front)).await;
        let st = statuses(&out);
        assert!(
            st.first().is_some_and(|s| *s == 400 || *s == 413),
            "{cl:?}: {out}"
        );
        assert_eq!(st.len(), 1, "{cl:?}: a second response: {out}");
    }
    assert_eq!(h.upstream.count(), 0, "{:?}", h.upstream.requests());
    // Identical repeats are one length (RFC 9112 6.3): normalised to a single header.
    let req = format!(
        "PUT /api/maps/1/embed HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
    );
    let out = h.raw(req.as_bytes()).await;
    assert_eq!(raw_status(&out), 200, "{out}");
    let seen = h.upstream.requests().pop().unwrap();
    assert_eq!(seen.body.as_ref(), b"hello");
    assert_eq!(
        seen.headers
            .iter()
            .filter(|(k, _)| k == "content-length")
            .count(),
        1
    );
}

/// RFC 9112 6.3: Transfer-Encoding wins over Content-Length and the connection is closed
/// after the response, so whatever follows is never read as a request. hyper drops the
/// Content-Length and closes; the upstream gets the chunked reading only.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_normalised_and_closed() {
    let h = Harness::start().await;
    let t = h.token(DPO);
    // CL.TE and TE.CL: the two orders the classic attacks use.
    for framing in [
        "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n",
    ] {
        let front = format!(
            "PUT /api/maps/1/embed HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\n{framing}\r\n0\r\n\r\n"
        );
        let out = raw_all(&h, &with_smuggled(&h, &front)).await;
        let st = statuses(&out);
        assert!(
            st == vec![400] || st == vec![200],
            "{framing:?}: one response, then close: {out}"
        );
    }
    for s in h.upstream.requests() {
        assert!(s.body.is_empty(), "read by Content-Length: {s:?}");
    }
    assert_not_smuggled(&h);
}

#[tokio::test]
async fn obfuscated_transfer_encoding_is_refused() {
    let h = Harness::start().await;
    let t = h.token(DPO);
    for te in [
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: identity\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding : chunked\r\n",
        "Transfer-Encoding:\r\n chunked\r\n",
        "Transfer-Encoding: \"chunked\"\r\n",
        "Transfer-Encoding: chunked;q=1\r\n",
        " Transfer-Encoding: chunked\r\n",
        "Transfer-Encoding: ch\tunked\r\n",
    ] {
        let front = format!(
            "PUT /api/maps/1/embed HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\n{te}\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let out = raw_all(&h, &with_smuggled(&h, &front)).await;
        let st = statuses(&out);
        assert_eq!(st, vec![400], "{te:?}: {out}");
    }
    assert_eq!(h.upstream.count(), 0, "{:?}", h.upstream.requests());
}

#[tokio::test]
async fn framing_header_lookalikes_never_reach_the_upstream() {
    let h = Harness::start().await;
    let t = h.token(DPO);
    // Not framing headers to the gateway (so not refused), but stripped: an upstream that
    // folds `_` into `-` must not see a second Transfer-Encoding or Content-Length.
    let req = format!(
        "PUT /api/maps/1/embed HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\n\
Content-Length: 5\r\nTransfer_Encoding: chunked\r\ncontent.length: 0\r\nX_Forwarded_For: 6.6.6.6\r\n\
Connection_: x\r\n\r\nhello"
    );
    let out = h.raw(req.as_bytes()).await;
    assert_eq!(raw_status(&out), 200, "{out}");
    let seen = h.upstream.requests().pop().unwrap();
    for folded in ["transfer-encoding", "content-length", "x-forwarded-for"] {
        let n = seen
            .headers
            .iter()
            .filter(|(k, _)| k.to_ascii_lowercase().replace(['_', '.'], "-") == folded)
            .count();
        assert!(n <= 1, "{folded} seen {n} times: {:?}", seen.headers);
    }
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.body.as_ref(), b"hello");
    assert_not_smuggled(&h);
}

#[tokio::test]
async fn transfer_encoding_on_http_1_0_is_refused() {
    let h = Harness::start().await;
    let t = h.token(DPO);
    let front = format!(
        "PUT /api/maps/1/embed HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let out = raw_all(&h, &with_smuggled(&h, &front)).await;
    assert_eq!(statuses(&out), vec![400], "{out}");
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn chunked_requests_reach_the_upstream_cleanly_framed() {
    let h = Harness::start().await;
    let t = h.token(DPO);
    // Chunk extensions, upper-case coding, trailers: all normalised away.
    let req = format!(
        "PUT /api/maps/1/embed HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: CHUNKED\r\n\r\n\
3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nX-Trailer: evil\r\n\r\n"
    );
    let out = h.raw(req.as_bytes()).await;
    assert_eq!(raw_status(&out), 200, "{out}");
    let seen = h.upstream.requests().pop().unwrap();
    assert_eq!(seen.body.as_ref(), b"hello");
    assert!(seen.header("x-trailer").is_none());
    assert_not_smuggled(&h);
}

#[tokio::test]
async fn absolute_form_connect_and_asterisk_targets_are_refused() {
    let h = Harness::start().await;
    let t = h.token(DPO);
    for line in [
        "GET https://evil.example/api/reports HTTP/1.1",
        "GET http://localhost/api/reports HTTP/1.1",
        "GET //evil.example/api/reports HTTP/1.1",
        "CONNECT evil.example:443 HTTP/1.1",
        "CONNECT localhost:443 HTTP/1.1",
        "OPTIONS * HTTP/1.1",
        "GET * HTTP/1.1",
        "GET api/reports HTTP/1.1",
    ] {
        let out = raw_all(
            &h,
            format!("{line}\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\n\r\n").as_bytes(),
        )
        .await;
        let st = statuses(&out);
        assert!(
            st.len() == 1 && (400..500).contains(&st[0]),
            "{line}: {out}"
        );
        assert!(!out.contains("200 OK"), "{line}: {out}");
    }
    assert_eq!(h.upstream.count(), 0, "{:?}", h.upstream.requests());
    // HTTP/2 CONNECT (no :path, no :scheme).
    let mut c = h2raw::Conn::open(&h).await;
    let auth = format!("Bearer {t}");
    let block = h2raw::hpack(&[
        (":method", "CONNECT"),
        (":authority", "evil.example:443"),
        ("authorization", &auth),
    ]);
    let frames = c.roundtrip(1, &block).await;
    assert!(
        frames
            .iter()
            .any(|f| f.stream == 1 && (f.ty == h2raw::RST_STREAM || f.ty == h2raw::HEADERS)),
        "{frames:?}"
    );
    assert_eq!(h.upstream.count(), 0);
}

#[tokio::test]
async fn h2_connection_specific_headers_are_refused() {
    let h = Harness::start().await;
    let t = h.token(DPO);
    let auth = format!("Bearer {t}");
    let mut c = h2raw::Conn::open(&h).await;
    let bad: &[(&str, &str)] = &[
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("te", "gzip"),
        ("host", "evil.example"),
        ("Authorization", "Bearer x"),
    ];
    let mut stream = 1;
    for (k, v) in bad {
        let block = h2raw::request("GET", "/api/reports", &[("authorization", &auth), (k, v)]);
        let frames = c.roundtrip(stream, &block).await;
        let reset = frames
            .iter()
            .any(|f| f.stream == stream && f.ty == h2raw::RST_STREAM);
        let answered = frames
            .iter()
            .any(|f| f.stream == stream && f.ty == h2raw::HEADERS);
        let goaway = frames.iter().any(|f| f.ty == h2raw::GOAWAY);
        assert!(reset || answered || goaway, "{k}: {frames:?}");
        if goaway {
            c = h2raw::Conn::open(&h).await;
            stream = 1;
        } else {
            stream += 2;
        }
    }
    // The upstream never saw any of them (a conflicting Host is a 400 from the gateway).
    assert_eq!(h.upstream.count(), 0, "{:?}", h.upstream.requests());
    // The connection (or a new one) still serves a clean request.
    let block = h2raw::request("GET", "/api/reports", &[("authorization", &auth)]);
    let frames = c.roundtrip(stream, &block).await;
    assert!(
        frames
            .iter()
            .any(|f| f.ty == h2raw::DATA && f.stream == stream),
        "{frames:?}"
    );
    assert_eq!(h.upstream.count(), 1);
}

#[tokio::test]
async fn h2_content_length_mismatch_never_forwards_a_complete_message() {
    let h = Harness::start().await;
    let t = h.token(DPO);
    let auth = format!("Bearer {t}");
    let mut c = h2raw::Conn::open(&h).await;
    // Declared 10, sent 3 / declared 2, sent 5.
    for (stream, declared, sent) in [(1u32, "10", &b"abc"[..]), (3, "2", &b"hello"[..])] {
        let block = h2raw::request(
            "PUT",
            "/api/maps/1/embed",
            &[("authorization", &auth), ("content-length", declared)],
        );
        let mut bytes = h2raw::frame(h2raw::HEADERS, h2raw::END_HEADERS, stream, &block);
        bytes.extend(h2raw::frame(h2raw::DATA, h2raw::END_STREAM, stream, sent));
        c.send(&bytes).await.unwrap();
        let frames = c.until_stream_end(stream, Duration::from_secs(3)).await;
        let ok_response = frames.iter().any(|f| {
            f.stream == stream && f.ty == h2raw::HEADERS && f.payload.first() == Some(&0x88)
        });
        assert!(!ok_response, "mismatch answered 200: {frames:?}");
        assert!(
            frames
                .iter()
                .any(|f| (f.stream == stream && f.ty == h2raw::RST_STREAM)
                    || f.ty == h2raw::GOAWAY
                    || (f.stream == stream && f.ty == h2raw::HEADERS)),
            "{frames:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Whatever reached the upstream never arrived as a complete message with the bad length.
    for s in h.upstream.requests() {
        assert!(
            s.body.len() != 10 && s.body.as_ref() != b"hello" && s.body.as_ref() != b"abc",
            "{s:?}"
        );
    }
    // And h1 keeps serving.
    let mut s = tls_connect(&h, b"http/1.1").await;
    use tokio::io::AsyncWriteExt;
    s.write_all(&crate::hardening::get("/api/reports", &t))
        .await
        .unwrap();
    let r = read_h1_response(&mut s, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(raw_status(&r), 200);
}

/// Fuzzing regression (canonical_path, input "/`p/i."): a path the http crate cannot carry
/// is refused with a 4xx, never a 5xx, and never forwarded altered.
#[tokio::test]
async fn unusual_target_characters_are_refused_or_forwarded_verbatim() {
    let h = Harness::start().await;
    let t = h.token(DPO);
    for path in [
        "/`p/i.",
        "/api/maps/`x/embed",
        "/api/maps/{x}/embed",
        "/api/maps/\"x\"/embed",
        "/api/maps/x^y/embed",
        "/api/maps/x|y/embed",
    ] {
        let before = h.upstream.count();
        let out = raw_all(
            &h,
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let st = statuses(&out);
        assert_eq!(st.len(), 1, "{path}: {out}");
        let forwarded = h.upstream.count() > before;
        if forwarded {
            assert_eq!(st[0], 200, "{path}: {out}");
            assert_eq!(h.upstream.requests().pop().unwrap().target, path);
        } else {
            assert!((400..500).contains(&st[0]), "{path}: {out}");
        }
    }
}

/// Fuzzing regression (canonical_path, input "/a/%eeee user/x%20y"): canonical_path keeps a
/// raw space; no request can deliver one. HTTP/1 splits the request line on it (400) and
/// HTTP/2 refuses such a `:path`: nothing is forwarded either way.
#[tokio::test]
async fn raw_spaces_and_controls_in_paths_never_reach_the_upstream() {
    let h = Harness::start().await;
    let t = h.token(DPO);
    let auth = format!("Bearer {t}");
    let out = raw_all(
        &h,
        format!(
            "GET /api/maps/a b/embed HTTP/1.1\r\nHost: localhost\r\nAuthorization: {auth}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(
        statuses(&out).iter().all(|s| (400..500).contains(s)),
        "{out}"
    );
    let mut c = h2raw::Conn::open(&h).await;
    let mut stream = 1;
    for path in [
        "/api/maps/a b/embed",
        "/api/maps/a\tb/embed",
        "/api/maps/a\u{7f}b/embed",
    ] {
        let block = h2raw::request("GET", path, &[("authorization", &auth)]);
        let frames = c.roundtrip(stream, &block).await;
        let ok = frames.iter().any(|f| {
            f.stream == stream && f.ty == h2raw::HEADERS && f.payload.first() == Some(&0x88)
        });
        assert!(!ok, "{path:?} answered 200: {frames:?}");
        if frames.iter().any(|f| f.ty == h2raw::GOAWAY) {
            c = h2raw::Conn::open(&h).await;
            stream = 1;
        } else {
            stream += 2;
        }
    }
    assert_eq!(h.upstream.count(), 0, "{:?}", h.upstream.requests());
}
