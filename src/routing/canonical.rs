//! The one canonical path: computed once per request, used both to match routes and to
//! forward. Anything that another component could interpret differently is refused rather
//! than guessed at, so the gateway and the upstream never disagree about what was asked for.

use std::fmt;

/// Why a request path was refused (always a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRejection {
    NotOriginForm,
    DotSegment,
    EncodedSlash,
    ControlCharacter,
    PathParameter,
    Backslash,
    Fragment,
    BadPercentEncoding,
    DoubleEncoding,
    NonAscii,
    InvalidCharacter,
}

impl fmt::Display for PathRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathRejection::NotOriginForm => "the request target must be an absolute path",
            PathRejection::DotSegment => "dot segments ('.' or '..') are not allowed",
            PathRejection::EncodedSlash => "encoded slashes or backslashes are not allowed",
            PathRejection::ControlCharacter => "NUL and control characters are not allowed",
            PathRejection::PathParameter => "';' path parameters are not allowed",
            PathRejection::Backslash => "backslashes are not allowed",
            PathRejection::Fragment => "'#' is not allowed in a request path",
            PathRejection::BadPercentEncoding => "malformed percent-encoding",
            PathRejection::DoubleEncoding => "an encoded '%' (double encoding) is not allowed",
            PathRejection::NonAscii => "raw non-ASCII bytes are not allowed",
            PathRejection::InvalidCharacter => "a character a URI path cannot carry unencoded",
        })
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Computes the canonical form of a raw request path (without the query string).
///
/// Percent-encoded unreserved characters are decoded, other escapes are kept with upper-case
/// hex, repeated slashes are merged; dot segments, encoded `/` `\` `%`, controls, `;`, `\` and
/// `#` are refused.
pub fn canonical_path(raw: &str) -> Result<String, PathRejection> {
    if is_canonical(raw.as_bytes()) {
        return Ok(raw.to_owned());
    }
    canonical_path_slow(raw)
}

/// Bytes a canonical path carries as they are: RFC 3986 pchar without `%` and `;`
/// (unreserved, the other sub-delims, `:` `@`), and `/`.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            );
        b += 1;
    }
    t
};

/// True when `raw` is its own canonical form: it starts with `/`, every byte is plain,
/// and no segment is empty (but the last) or a dot segment. Most requests are, and then
/// need no rewriting byte by byte; anything else takes the full path below.
fn is_canonical(raw: &[u8]) -> bool {
    if raw.first() != Some(&b'/') {
        return false;
    }
    // Where the current segment began, just past its `/`.
    let mut seg = 1;
    for (i, &b) in raw.iter().enumerate().skip(1) {
        if !PLAIN[b as usize] {
            return false;
        }
        if b == b'/' {
            if !plain_segment(&raw[seg..i]) {
                return false;
            }
            seg = i + 1;
        }
    }
    plain_segment(&raw[seg..]) || seg == raw.len()
}

/// A segment that needs nothing done: not empty, `.` or `..`.
fn plain_segment(s: &[u8]) -> bool {
    !matches!(s, b"" | b"." | b"..")
}

/// `canonical_path` for paths that need decoding, merging or refusing.
fn canonical_path_slow(raw: &str) -> Result<String, PathRejection> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathRejection::NotOriginForm);
    }
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'/' => {
                check_last_segment(&out)?;
                if !out.ends_with('/') {
                    out.push('/');
                }
                i += 1;
            }
            b'%' => {
                let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => (h, l),
                    _ => return Err(PathRejection::BadPercentEncoding),
                };
                let v = match (hex_val(hi), hex_val(lo)) {
                    (Some(h), Some(l)) => h << 4 | l,
                    _ => return Err(PathRejection::BadPercentEncoding),
                };
                match v {
                    b'/' | b'\\' => return Err(PathRejection::EncodedSlash),
                    b'%' => return Err(PathRejection::DoubleEncoding),
                    0x00..=0x1f | 0x7f => return Err(PathRejection::ControlCharacter),
                    _ if is_unreserved(v) => out.push(v as char),
                    _ => {
                        out.push('%');
                        out.push(HEX_UPPER[(v >> 4) as usize] as char);
                        out.push(HEX_UPPER[(v & 0xf) as usize] as char);
                    }
                }
                i += 3;
            }
            b';' => return Err(PathRejection::PathParameter),
            b'\\' => return Err(PathRejection::Backslash),
            b'#' => return Err(PathRejection::Fragment),
            b'?' => return Err(PathRejection::NotOriginForm),
            0x00..=0x1f | 0x7f => return Err(PathRejection::ControlCharacter),
            0x80..=0xff => return Err(PathRejection::NonAscii),
            // RFC 3986 pchar: unreserved, sub-delims (';' refused above), ':' and '@'.
            _ if !(is_unreserved(b) || b"!$&'()*+,=:@".contains(&b)) => {
                return Err(PathRejection::InvalidCharacter)
            }
            _ => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    check_last_segment(&out)?;
    Ok(out)
}

/// Refuses a completed segment that is `.` or `..` (after decoding, so `%2e%2E` counts).
fn check_last_segment(out: &str) -> Result<(), PathRejection> {
    let seg = match out.rfind('/') {
        Some(p) => &out[p + 1..],
        None => out,
    };
    if seg == "." || seg == ".." {
        Err(PathRejection::DotSegment)
    } else {
        Ok(())
    }
}

/// The segments of a canonical path, for matching. `/` has no segments; a trailing slash
/// yields a final empty segment so `/a/` and `/a` stay distinct routes.
pub fn segments(canonical: &str) -> impl Iterator<Item = &str> {
    let rest = canonical.strip_prefix('/').unwrap_or(canonical);
    let empty = rest.is_empty();
    rest.split('/').filter(move |_| !empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_and_normalises() {
        assert_eq!(
            canonical_path("/api/patients/7").unwrap(),
            "/api/patients/7"
        );
        assert_eq!(
            canonical_path("//api///patients/7").unwrap(),
            "/api/patients/7"
        );
        assert_eq!(canonical_path("/api/%70atients").unwrap(), "/api/patients");
        assert_eq!(canonical_path("/a%20b/%c3%a9").unwrap(), "/a%20b/%C3%A9");
        assert_eq!(canonical_path("/").unwrap(), "/");
        assert_eq!(canonical_path("/a/").unwrap(), "/a/");
        assert_eq!(canonical_path("/a/.b/..c").unwrap(), "/a/.b/..c");
        assert_eq!(
            canonical_path("/a:b@c!$&'()*+,=").unwrap(),
            "/a:b@c!$&'()*+,="
        );
    }

    #[test]
    fn rejects_each_dangerous_form() {
        use PathRejection::*;
        let cases = [
            ("/api/../admin", DotSegment),
            ("/api/./x", DotSegment),
            ("/api/..", DotSegment),
            ("/api/%2e%2E/admin", DotSegment),
            ("/api/.%2e", DotSegment),
            ("/api%2Fadmin", EncodedSlash),
            ("/api%2fadmin", EncodedSlash),
            ("/api%5Cadmin", EncodedSlash),
            ("/api/%00", ControlCharacter),
            ("/api/%0a", ControlCharacter),
            ("/api/\u{1}", ControlCharacter),
            ("/api/x;jsessionid=1", PathParameter),
            ("/api\\admin", Backslash),
            ("/api#frag", Fragment),
            ("/api/%zz", BadPercentEncoding),
            ("/api/%4", BadPercentEncoding),
            ("/api/%252F", DoubleEncoding),
            ("api/x", NotOriginForm),
            ("*", NotOriginForm),
            ("/é", NonAscii),
            ("/a b", InvalidCharacter),
            ("/`p/i.", InvalidCharacter),
            ("/a{b}", InvalidCharacter),
            ("/a\"b", InvalidCharacter),
            ("/a<b>", InvalidCharacter),
            ("/a|b", InvalidCharacter),
            ("/a^b", InvalidCharacter),
            ("/a[0]", InvalidCharacter),
        ];
        for (input, want) in cases {
            assert_eq!(canonical_path(input), Err(want), "{input}");
        }
    }

    #[test]
    fn shortcut_takes_canonical_paths_only() {
        for p in [
            "/",
            "/a",
            "/a/",
            "/patients/small.json",
            "/a:b@c!$&'()*+,=/.x/..y",
        ] {
            assert!(is_canonical(p.as_bytes()), "{p}");
        }
        for p in [
            "", "a", "//", "/a//b", "/.", "/..", "/a/./b", "/a/../b", "/a/.", "/%41", "/a;b",
            "/a b", "/é",
        ] {
            assert!(!is_canonical(p.as_bytes()), "{p}");
        }
    }

    #[test]
    fn segments_of_paths() {
        assert_eq!(segments("/").count(), 0);
        assert_eq!(segments("/a/b").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(segments("/a/").collect::<Vec<_>>(), ["a", ""]);
    }

    proptest! {
        #[test]
        fn output_is_always_safe(raw in "/[a-zA-Z0-9%./;\\\\#_~ `{}|^\\[\\]<>\"-]{0,40}") {
            if let Ok(c) = canonical_path(&raw) {
                prop_assert!(c.starts_with('/'));
                prop_assert!(!c.contains("//"));
                for seg in c.split('/') {
                    prop_assert!(seg != ".." && seg != ".");
                }
                let upper = c.to_ascii_uppercase();
                prop_assert!(!upper.contains("%2F") && !upper.contains("%5C") && !upper.contains("%25"));
                prop_assert!(!c.contains(';') && !c.contains('\\') && !c.contains('#'));
                prop_assert!(c.bytes().all(|b| is_unreserved(b) || b"!$&'()*+,=:@/%".contains(&b)), "{}", c);
                // Canonicalisation is done once: applying it again changes nothing.
                prop_assert_eq!(canonical_path(&c), Ok(c.clone()));
            }
        }

        /// The shortcut only ever takes paths the full canonicalisation leaves as they are.
        #[test]
        fn shortcut_agrees_with_the_full_path(raw in "/?[a-zA-Z0-9./%;:@!~$&'()*+,=_ #?\\\\\\-]{0,14}") {
            if is_canonical(raw.as_bytes()) {
                prop_assert_eq!(canonical_path_slow(&raw), Ok(raw.clone()));
            }
            prop_assert_eq!(canonical_path(&raw), canonical_path_slow(&raw));
        }

        #[test]
        fn decoding_unreserved_is_equivalent(s in "[a-zA-Z0-9_~-]{1,20}") {
            let encoded: String = s.bytes().map(|b| format!("%{b:02x}")).collect();
            prop_assert_eq!(canonical_path(&format!("/x/{encoded}")), canonical_path(&format!("/x/{s}")));
        }
    }
}
