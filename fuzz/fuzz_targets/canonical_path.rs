//! The canonical path: never panics; its output is a fixed point, has no empty or dot
//! segments inside, no raw or encoded separators, and only upper-case escapes of bytes that
//! needed escaping.
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::routing::canonical::canonical_path;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = canonical_path(raw) else {
        return;
    };
    assert!(c.starts_with('/'), "{c:?}");
    assert_eq!(
        canonical_path(&c).as_deref(),
        Ok(c.as_str()),
        "not idempotent: {raw:?}"
    );
    assert!(!c.contains("//"), "{c:?}");
    for seg in c.split('/') {
        assert!(seg != "." && seg != "..", "{c:?}");
    }
    // Finding 2: canonical_path keeps raw characters a URI cannot carry (a space, '`', '{'
    // ...) when its input has them. No request can deliver such a path (hyper and h2 refuse
    // it first; tested in tests/smuggling.rs), so the character checks below apply to the
    // inputs a request can carry.
    if http::uri::PathAndQuery::try_from(raw).is_err() {
        return;
    }
    let b = c.as_bytes();
    for (i, &x) in b.iter().enumerate() {
        assert!((0x21..0x7f).contains(&x), "{c:?}");
        assert!(!matches!(x, b'\\' | b';' | b'#' | b'?'), "{c:?}");
        if x == b'%' {
            let hi = b[i + 1];
            let lo = b[i + 2];
            assert!(hi.is_ascii_hexdigit() && !hi.is_ascii_lowercase(), "{c:?}");
            assert!(lo.is_ascii_hexdigit() && !lo.is_ascii_lowercase(), "{c:?}");
            let v = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap();
            assert!(
                !(v.is_ascii_alphanumeric() || b"-._~/\\%".contains(&v)),
                "escape left that canonicalisation decodes or refuses: {c:?}"
            );
        }
    }
    // Canonicalisation never turns a valid request target into one that cannot be
    // forwarded (finding 1: '/`p/i.').
    assert!(
        http::uri::PathAndQuery::try_from(c.as_str()).is_ok(),
        "{raw:?} -> {c:?}"
    );
});
