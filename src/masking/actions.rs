//! Masking actions. Every output is a fixed point of its action so masking is
//! idempotent; values an action cannot transform fail closed to `[REDACTED]`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::borrow::Cow;
use std::fmt::Write as _;

pub const REDACTED: &str = "[REDACTED]";

/// Length of the hidden part of `mask` output, fixed so it leaks no length.
pub const MASK_FILL: usize = 6;
/// Upper bound on keep_first + keep_last (more would reveal most identifiers).
pub const MAX_MASK_KEEP: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Remove,
    Null,
    Redact,
    Replace(Value),
    Pseudonymize,
    Mask {
        keep_first: usize,
        keep_last: usize,
        ch: char,
    },
    Year,
    Zip3,
    Age90,
}

impl Action {
    /// Precedence when several rules select the same node: lower wins
    /// (most destructive first; ties go to file order).
    pub fn rank(&self) -> u8 {
        match self {
            Action::Remove => 0,
            Action::Null => 1,
            Action::Redact => 2,
            Action::Replace(_) => 3,
            _ => 4,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Action::Remove => "remove".into(),
            Action::Null => "null".into(),
            Action::Redact => "redact".into(),
            Action::Replace(v) => format!("replace with {v}"),
            Action::Pseudonymize => "pseudonymize (HMAC-SHA256 token)".into(),
            Action::Mask {
                keep_first,
                keep_last,
                ch,
            } => format!("mask (keep_first {keep_first}, keep_last {keep_last}, char '{ch}')"),
            Action::Year => "year".into(),
            Action::Zip3 => "zip3".into(),
            Action::Age90 => "age90".into(),
        }
    }

    /// The JSON text of what this action makes of any node (string, number, container), when
    /// that is the same for all of them; see `apply_str`, `apply_scalar`, `apply_container`.
    pub(crate) fn constant_json(&self) -> Option<Box<[u8]>> {
        let v = match self {
            Action::Null => Value::Null,
            Action::Redact => redacted(),
            Action::Replace(r) => r.clone(),
            _ => return None,
        };
        serde_json::to_vec(&v).ok().map(Vec::into_boxed_slice)
    }

    /// Applies the action in place. Returns true when the node must be removed
    /// from its parent (the caller owns the parent).
    pub fn apply(&self, v: &mut Value, ps: Option<&Pseudonymizer>) -> bool {
        // Strings and containers go through `apply_str` / `apply_container`, which the
        // streaming masker calls directly: one implementation keeps both engines identical.
        let mut buf = String::new();
        let res = match v {
            Value::String(s) => self.apply_str(s, ps, &mut buf),
            Value::Object(_) | Value::Array(_) => self.apply_container(),
            _ => return self.apply_scalar(v, ps),
        };
        let new = match res {
            StrResult::Remove => return true,
            StrResult::Keep => return false,
            StrResult::Null => Value::Null,
            StrResult::Json(r) => r.clone(),
            StrResult::Str(t) => Value::String(t.into_owned()),
        };
        *v = new;
        false
    }

    /// The action applied to a number, a boolean or null.
    fn apply_scalar(&self, v: &mut Value, ps: Option<&Pseudonymizer>) -> bool {
        let new = match self {
            Action::Remove => return true,
            Action::Null => Value::Null,
            Action::Redact => redacted(),
            Action::Replace(r) => r.clone(),
            // null and an earlier fail-closed result carry no data: value
            // transforms leave them alone (keeps masking idempotent).
            _ if v.is_null() => return false,
            Action::Pseudonymize => match (v as &Value, ps) {
                (Value::Number(n), Some(p)) => Value::String(p.token(&n.to_string())),
                _ => redacted(),
            },
            Action::Mask {
                keep_first,
                keep_last,
                ch,
            } => match v {
                Value::Number(n) => {
                    let s = n.to_string();
                    Value::String(
                        mask_str(&s, *keep_first, *keep_last, *ch)
                            .unwrap_or_else(|| (*ch).to_string().repeat(MASK_FILL)),
                    )
                }
                _ => redacted(),
            },
            Action::Year => match v {
                // A bare year number is already only a year.
                Value::Number(n) if n.as_u64().is_some_and(|y| (1000..=9999).contains(&y)) => {
                    return false
                }
                _ => redacted(),
            },
            Action::Zip3 => match v {
                Value::Number(n) => match n.as_u64().filter(|z| *z <= 99_999) {
                    Some(z) => Value::String(zip3_prefix(&format!("{z:05}")[..3])),
                    None => redacted(),
                },
                _ => redacted(),
            },
            Action::Age90 => match v {
                Value::Number(n) => match n.as_f64() {
                    Some(a) if a >= 90.0 => Value::String("90+".into()),
                    Some(_) => return false,
                    None => redacted(),
                },
                _ => redacted(),
            },
        };
        *v = new;
        false
    }

    /// The action applied to an object or array: no value transform applies to one, so they
    /// fail closed.
    pub(crate) fn apply_container(&self) -> StrResult<'_> {
        match self {
            Action::Remove => StrResult::Remove,
            Action::Null => StrResult::Null,
            Action::Replace(r) => StrResult::Json(r),
            _ => StrResult::Str(Cow::Borrowed(REDACTED)),
        }
    }

    /// The action applied to a string value, without building a `Value` (the streaming
    /// masker writes the result straight out). `buf` holds computed results, so masking
    /// many fields reuses one allocation.
    pub(crate) fn apply_str<'a>(
        &'a self,
        s: &'a str,
        ps: Option<&Pseudonymizer>,
        buf: &'a mut String,
    ) -> StrResult<'a> {
        const RED: StrResult<'static> = StrResult::Str(Cow::Borrowed(REDACTED));
        match self {
            Action::Remove => StrResult::Remove,
            Action::Null => StrResult::Null,
            Action::Redact => RED,
            Action::Replace(r) => StrResult::Json(r),
            // An earlier fail-closed result carries no data: value transforms leave it
            // alone (keeps masking idempotent).
            _ if s == REDACTED => StrResult::Keep,
            Action::Pseudonymize => match ps {
                Some(p) if p.is_token(s) => StrResult::Keep,
                Some(p) => {
                    buf.clear();
                    p.token_into(s, buf);
                    StrResult::Str(Cow::Borrowed(buf))
                }
                None => RED,
            },
            Action::Mask {
                keep_first,
                keep_last,
                ch,
            } => {
                buf.clear();
                if mask_into(s, *keep_first, *keep_last, *ch, buf) {
                    StrResult::Str(Cow::Borrowed(buf))
                } else {
                    StrResult::Keep
                }
            }
            Action::Year => match year_of(s) {
                Some(y) if y == s => StrResult::Keep,
                Some(y) => StrResult::Str(Cow::Borrowed(y)),
                None => RED,
            },
            Action::Zip3 => match zip3_digits(s) {
                Some(p) => {
                    buf.clear();
                    push_zip3(p, buf);
                    if *buf == s {
                        StrResult::Keep
                    } else {
                        StrResult::Str(Cow::Borrowed(buf))
                    }
                }
                None => RED,
            },
            Action::Age90 => {
                if s == "90+" {
                    return StrResult::Keep;
                }
                match parse_age(s) {
                    Some(a) if a >= 90.0 => StrResult::Str(Cow::Borrowed("90+")),
                    Some(_) => StrResult::Keep,
                    None => RED,
                }
            }
        }
    }

    /// `apply_str` of `s` written straight to `out` as JSON text, for the actions whose
    /// result needs no JSON escaping (mask with a plain ASCII fill, year, zip3) and an `s`
    /// that needs none either: no intermediate string, no escape scan of the result (a
    /// patient list has several such fields per record). `None`: not handled here, use
    /// `apply_str`; `Some(false)`: `s` stays as it is; `Some(true)`: written.
    #[inline]
    pub(crate) fn write_str_direct(&self, s: &str, out: &mut Vec<u8>) -> Option<bool> {
        let quoted = |out: &mut Vec<u8>, parts: &[&[u8]]| {
            push_quoted(out, parts);
            Some(true)
        };
        if s == REDACTED {
            // As `apply_str`: an earlier fail-closed result is left alone.
            return matches!(self, Action::Mask { .. } | Action::Year | Action::Zip3)
                .then_some(false);
        }
        match *self {
            Action::Mask { .. } => match DirectMask::of(self) {
                Some(dm) if s.is_ascii() => Some(dm.write(s.as_bytes(), 0, s.len(), out)),
                _ => None,
            },
            // The year is a slice of `s`.
            Action::Year => match year_of(s) {
                Some(y) if y == s => Some(false),
                Some(y) => quoted(out, &[y.as_bytes()]),
                None => quoted(out, &[REDACTED.as_bytes()]),
            },
            Action::Zip3 => match zip3_digits(s) {
                Some(p) => {
                    let p = if restricted_zip3(p) { "000" } else { p };
                    if s.len() == 5 && s.starts_with(p) && s.ends_with("**") {
                        return Some(false);
                    }
                    quoted(out, &[p.as_bytes(), b"**"])
                }
                None => quoted(out, &[REDACTED.as_bytes()]),
            },
            _ => None,
        }
    }
}

/// Appends `parts` joined, between quotes (parts that need no JSON escaping).
#[inline(always)]
fn push_quoted(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.reserve(parts.iter().map(|p| p.len()).sum::<usize>() + 2);
    out.push(b'"');
    for p in parts {
        out.extend_from_slice(p);
    }
    out.push(b'"');
}

/// `mask` of a plain ASCII string (no escapes), as `write_str_direct` and the streaming
/// masker write it: the checks of the action itself (a fill character written as it is in
/// JSON) made once, when the rule loads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct DirectMask {
    keep_first: usize,
    keep_last: usize,
    fill: u8,
}

impl DirectMask {
    pub(crate) fn of(action: &Action) -> Option<DirectMask> {
        match *action {
            Action::Mask {
                keep_first,
                keep_last,
                ch,
            } if ch.is_ascii() && !ch.is_ascii_control() && ch != '"' && ch != '\\' => {
                Some(DirectMask {
                    keep_first,
                    keep_last,
                    fill: ch as u8,
                })
            }
            _ => None,
        }
    }

    /// Writes the masked form of the ASCII string `b[s0..s1]`, quoted; false (nothing
    /// written) when it is masked already (or the fail-closed `[REDACTED]`), which `mask`
    /// leaves as it is. Kept ends of up to 8 bytes with text enough after them (the usual
    /// case: `b` is the whole document) go as fixed 8-byte moves, not a copy call per part.
    #[inline(always)]
    pub(crate) fn write(&self, b: &[u8], s0: usize, s1: usize, out: &mut Vec<u8>) -> bool {
        let s = &b[s0..s1];
        let n = s.len();
        let (kf, kl, c) = (self.keep_first, self.keep_last, self.fill);
        let is_fill = |part: &[u8]| part.iter().all(|&x| x == c);
        if s == REDACTED.as_bytes()
            || (n == MASK_FILL && is_fill(s))
            || (n == kf + MASK_FILL + kl && is_fill(&s[kf..kf + MASK_FILL]))
        {
            return false;
        }
        // Too short to hide anything: the fill alone.
        let (kf, kl) = if n <= kf + kl { (0, 0) } else { (kf, kl) };
        if kf > 8 || kl > 8 || s0 + 8 > b.len() || s1 - kl + 8 > b.len() {
            push_quoted(out, &[&s[..kf], &[c; MASK_FILL], &s[n - kl..]]);
            return true;
        }
        // The moves write up to 1 + 8 + 6 + 8 + 1 bytes.
        out.reserve(24);
        let len = out.len();
        // SAFETY: `out` has 24 bytes of spare room at `len`, and every move stays within
        // `d[..24]` (kf, kl <= 8); the reads are within `b` (checked above); the length set
        // covers only bytes written, later moves overwriting the tails of earlier ones.
        unsafe {
            let d = out.as_mut_ptr().add(len);
            *d = b'"';
            std::ptr::copy_nonoverlapping(b.as_ptr().add(s0), d.add(1), 8);
            std::ptr::copy_nonoverlapping([c; 8].as_ptr(), d.add(1 + kf), 8);
            let at = 1 + kf + MASK_FILL;
            std::ptr::copy_nonoverlapping(b.as_ptr().add(s1 - kl), d.add(at), 8);
            *d.add(at + kl) = b'"';
            out.set_len(len + at + kl + 1);
        }
        true
    }
}

/// What an action makes of a string value.
#[derive(Debug, PartialEq)]
pub(crate) enum StrResult<'a> {
    /// Remove the member / element.
    Remove,
    /// Leave the value as it is.
    Keep,
    Null,
    /// A `replace` value.
    Json(&'a Value),
    Str(Cow<'a, str>),
}

fn redacted() -> Value {
    Value::String(REDACTED.into())
}

/// Keyed pseudonyms: `pse:<keyid>:<base64url(HMAC-SHA256(key, value)[..16])>`.
pub struct Pseudonymizer {
    /// HMAC-SHA256 (RFC 2104) from SHA-256's block function: the key's inner and outer
    /// states are absorbed once at load, and a value of up to 55 bytes then costs exactly
    /// two compressions and nothing else. aws-lc-rs's HMAC copies, initialises and wipes a
    /// whole `HMAC_CTX` per call, which cost as much again as the hashing; the `hmac`
    /// crate's clone, buffering and finalisation still cost a third of it
    /// (benches/RESULTS.md).
    inner: [u32; 8],
    outer: [u32; 8],
    keyid: String,
    /// `pse:<keyid>:`
    head: String,
    /// The CPU has the SHA extensions: `pipelined` runs its two compressions as one.
    #[cfg(target_arch = "x86_64")]
    sha_ni: bool,
}

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// SHA-256 of `data` continued from `state`, which has absorbed `before` bytes (whole
/// blocks): the padded final block(s) compressed in.
fn sha256_finish(mut state: [u32; 8], before: usize, data: &[u8]) -> [u8; 32] {
    let mut blocks = data.chunks_exact(64);
    for b in &mut blocks {
        sha2::block_api::compress256(&mut state, &[b.try_into().expect("64 bytes")]);
    }
    let rest = blocks.remainder();
    // The length goes in the last 8 bytes of one block, or of a second if `rest` leaves
    // no room for it.
    let n = if rest.len() < 56 { 1 } else { 2 };
    let mut last = [[0u8; 64]; 2];
    pad_into(
        &mut last.as_flattened_mut()[..n * 64],
        rest,
        before + data.len(),
    );
    sha2::block_api::compress256(&mut state, &last[..n]);
    state_bytes(state)
}

/// Writes the final block(s) of a message of `total` bytes into the zeroed `blocks`: the
/// last `rest` bytes, the `0x80` marker and the length in bits at the very end.
fn pad_into(blocks: &mut [u8], rest: &[u8], total: usize) {
    blocks[..rest.len()].copy_from_slice(rest);
    blocks[rest.len()] = 0x80;
    let end = blocks.len();
    blocks[end - 8..].copy_from_slice(&((total as u64) * 8).to_be_bytes());
}

/// A SHA-256 state as the digest's bytes (big-endian words).
fn state_bytes(state: [u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "Pseudonymizer(keyid {})", self.keyid)
    }
}

pub const TOKEN_B64_LEN: usize = 22;

/// A value's inner HMAC digest, waiting for its outer hash (`Pseudonymizer::outer_tag`).
#[derive(Clone, Copy)]
pub(crate) struct Outer([u8; 32]);

/// A token's text from the outer digest: its first 16 bytes (128 bits), base64url.
fn tag_text(digest: &[u8; 32]) -> [u8; TOKEN_B64_LEN] {
    base64url16(digest[..16].try_into().expect("16 bytes"))
}

/// base64url without padding (RFC 4648, 5) of a 16-byte tag, written out: the `base64`
/// crate's general engine spent about 220 instructions on these 22 characters (callgrind),
/// 2% of masking the example set's 64 KB list.
fn base64url16(tag: &[u8; 16]) -> [u8; TOKEN_B64_LEN] {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = [0u8; TOKEN_B64_LEN];
    for (three, four) in tag.chunks_exact(3).zip(out.chunks_exact_mut(4)) {
        let n = u32::from(three[0]) << 16 | u32::from(three[1]) << 8 | u32::from(three[2]);
        for (k, o) in four.iter_mut().enumerate() {
            *o = ALPHABET[(n >> (18 - 6 * k)) as usize & 63];
        }
    }
    // The 16th byte: its top six bits, then its last two and four zero bits.
    out[20] = ALPHABET[usize::from(tag[15] >> 2)];
    out[21] = ALPHABET[usize::from(tag[15] & 3) << 4];
    out
}

impl Pseudonymizer {
    pub fn new(key: &[u8]) -> Self {
        let d = Sha256::digest(key);
        let mut keyid = String::with_capacity(8);
        for b in &d[..4] {
            let _ = write!(keyid, "{b:02x}");
        }
        // Keys longer than a block are hashed first; then padded with zeros to a block.
        let mut block = [0u8; 64];
        if key.len() > 64 {
            block[..32].copy_from_slice(&d);
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let absorb = |pad: u8| {
            let mut state = SHA256_IV;
            let b: [u8; 64] = std::array::from_fn(|i| block[i] ^ pad);
            sha2::block_api::compress256(&mut state, &[b]);
            state
        };
        Pseudonymizer {
            inner: absorb(0x36),
            outer: absorb(0x5c),
            head: format!("pse:{keyid}:"),
            keyid,
            #[cfg(target_arch = "x86_64")]
            sha_ni: super::sha_ni::available(),
        }
    }

    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    pub fn token(&self, value: &str) -> String {
        let mut out = String::with_capacity(4 + 8 + 1 + TOKEN_B64_LEN);
        self.token_into(value, &mut out);
        out
    }

    /// Appends the token of `value` to `out`.
    pub fn token_into(&self, value: &str, out: &mut String) {
        let (inner, _) = self.pipelined(value.as_bytes(), None);
        out.push_str(&self.head);
        let b64 = self.outer_tag(&inner);
        out.push_str(std::str::from_utf8(&b64).expect("base64 is ASCII"));
    }

    /// `pse:<keyid>:`, what every token begins with.
    pub(crate) fn token_head(&self) -> &[u8] {
        self.head.as_bytes()
    }

    /// The inner hash of `value` and the outer hash of an earlier value's `Outer`, in one
    /// go. The two do not depend on each other, so their compressions can run side by side
    /// (one token alone waits for its inner hash before its outer one can start); with
    /// SHA-NI they do, in one function (`sha_ni::compress2`), when both fit one block.
    #[inline]
    pub(crate) fn pipelined(
        &self,
        value: &[u8],
        earlier: Option<&Outer>,
    ) -> (Outer, Option<[u8; TOKEN_B64_LEN]>) {
        #[cfg(target_arch = "x86_64")]
        if let (true, Some(o), true) = (self.sha_ni, earlier, value.len() < 56) {
            // Both messages follow one key block and fit one final block each.
            let (mut inner_block, mut outer_block) = ([0u8; 64], [0u8; 64]);
            pad_into(&mut inner_block, value, 64 + value.len());
            pad_into(&mut outer_block, &o.0, 64 + o.0.len());
            let (mut inner, mut outer) = (self.inner, self.outer);
            // SAFETY: `sha_ni` is only true when `sha_ni::available()` said so.
            unsafe { super::sha_ni::compress2(&mut inner, &inner_block, &mut outer, &outer_block) };
            return (
                Outer(state_bytes(inner)),
                Some(tag_text(&state_bytes(outer))),
            );
        }
        let inner = Outer(sha256_finish(self.inner, 64, value));
        (inner, earlier.map(|o| self.outer_tag(o)))
    }

    /// The base64url tag of a value whose inner hash `o` holds.
    #[inline]
    pub(crate) fn outer_tag(&self, o: &Outer) -> [u8; TOKEN_B64_LEN] {
        tag_text(&sha256_finish(self.outer, 64, &o.0))
    }

    /// True if `s` is exactly a token under this key id (left as is, which
    /// keeps pseudonymization idempotent).
    pub fn is_token(&self, s: &str) -> bool {
        // Every string the detectors look at is asked this: its length alone refuses nearly
        // all of them, before any comparison (a `memcmp` call per string otherwise).
        if s.len() != self.head.len() + TOKEN_B64_LEN {
            return false;
        }
        let Some(b64) = s.strip_prefix(self.head.as_str()) else {
            return false;
        };
        b64.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            // 16 bytes = 128 bits -> the last char carries only 2 bits.
            && URL_SAFE_NO_PAD.decode(b64).is_ok_and(|d| d.len() == 16)
    }
}

/// `mask`: first/last chars kept, a fixed run of `MASK_FILL` fill chars in
/// between. Returns None when `s` is already in masked form (fixed point).
/// Inputs too short to hide anything become the fill run alone.
pub fn mask_str(s: &str, keep_first: usize, keep_last: usize, ch: char) -> Option<String> {
    let mut out = String::with_capacity(s.len() + MASK_FILL * ch.len_utf8());
    mask_into(s, keep_first, keep_last, ch, &mut out).then_some(out)
}

/// `mask_str` appending to `out`; false (nothing appended) when `s` is already masked.
fn mask_into(s: &str, keep_first: usize, keep_last: usize, ch: char, out: &mut String) -> bool {
    // Char positions as byte offsets; ASCII (the common case) needs no walk.
    let ascii = s.is_ascii();
    let n = if ascii { s.len() } else { s.chars().count() };
    let at = |i: usize| {
        if ascii {
            i.min(s.len())
        } else {
            s.char_indices().nth(i).map_or(s.len(), |(b, _)| b)
        }
    };
    let is_fill = |part: &str| part.chars().all(|c| c == ch);
    let fill_only = n == MASK_FILL && is_fill(s);
    let already = n == keep_first + MASK_FILL + keep_last
        && is_fill(&s[at(keep_first)..at(keep_first + MASK_FILL)]);
    if fill_only || already {
        return false;
    }
    // The fill run built once on the stack and appended in one go (six pushes of one char
    // were a visible share of masking a patient list).
    let mut enc = [0u8; 4];
    let w = ch.encode_utf8(&mut enc).len();
    let mut run = [0u8; 4 * MASK_FILL];
    for c in run.chunks_exact_mut(w).take(MASK_FILL) {
        c.copy_from_slice(&enc[..w]);
    }
    let fill = std::str::from_utf8(&run[..w * MASK_FILL]).expect("whole copies of one char");
    if n <= keep_first + keep_last {
        out.push_str(fill);
        return true;
    }
    let (head, tail) = (&s[..at(keep_first)], &s[at(n - keep_last)..]);
    out.reserve(head.len() + fill.len() + tail.len());
    out.push_str(head);
    out.push_str(fill);
    out.push_str(tail);
    true
}

fn digits_at(b: &[u8], start: usize, len: usize) -> Option<u32> {
    let part = b.get(start..start + len)?;
    if !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(part.iter().fold(0, |a, d| a * 10 + u32::from(d - b'0')))
}

fn valid_md(m: u32, d: u32) -> bool {
    (1..=12).contains(&m) && (1..=31).contains(&d)
}

/// Year of a date string: `YYYY`, `YYYY-MM`, `YYYY-MM-DD` (optionally followed
/// by `T`/space and a time), `YYYY/MM/DD`, `MM/DD/YYYY`.
pub fn year_of(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    if b.len() >= 4 && digits_at(b, 0, 4).is_some() {
        let y = &s[..4];
        if b.len() == 4 {
            return Some(y);
        }
        let sep = b[4];
        if sep != b'-' && sep != b'/' {
            return None;
        }
        let m = digits_at(b, 5, 2)?;
        if b.len() == 7 {
            return (sep == b'-' && (1..=12).contains(&m)).then_some(y);
        }
        if b.get(7) != Some(&sep) {
            return None;
        }
        let d = digits_at(b, 8, 2)?;
        let tail_ok = b.len() == 10 || (sep == b'-' && matches!(b[10], b'T' | b't' | b' '));
        return (valid_md(m, d) && tail_ok).then_some(y);
    }
    // US style M/D/YYYY or MM/DD/YYYY.
    let mut parts = s.split('/');
    let (m, d, y) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.is_empty() || d.is_empty() {
        return None;
    }
    if m.len() > 2 || d.len() > 2 {
        return None;
    }
    let m = digits_at(m.as_bytes(), 0, m.len())?;
    let d = digits_at(d.as_bytes(), 0, d.len())?;
    digits_at(y.as_bytes(), 0, 4)?;
    valid_md(m, d).then_some(y)
}

/// HIPAA Safe Harbor: 3-digit ZIP prefixes with <= 20,000 people become 000.
const RESTRICTED_ZIP3: [&str; 17] = [
    "036", "059", "063", "102", "203", "556", "692", "790", "821", "823", "830", "831", "878",
    "879", "884", "890", "893",
];

/// A three-digit prefix as a number (0..1000), or `None` when it is not three ASCII digits.
const fn zip3_number(p: &[u8]) -> Option<usize> {
    match *p {
        [a, b, c] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
            Some((a - b'0') as usize * 100 + (b - b'0') as usize * 10 + (c - b'0') as usize)
        }
        _ => None,
    }
}

/// `RESTRICTED_ZIP3` as a bit per three-digit prefix: one lookup, not 17 comparisons per
/// masked zip code.
const RESTRICTED_ZIP3_BITS: [u64; 16] = {
    let mut bits = [0u64; 16];
    let mut i = 0;
    while i < RESTRICTED_ZIP3.len() {
        let Some(n) = zip3_number(RESTRICTED_ZIP3[i].as_bytes()) else {
            panic!("RESTRICTED_ZIP3 holds three-digit prefixes");
        };
        bits[n / 64] |= 1 << (n % 64);
        i += 1;
    }
    bits
};

fn restricted_zip3(p: &str) -> bool {
    zip3_number(p.as_bytes()).is_some_and(|n| RESTRICTED_ZIP3_BITS[n / 64] & (1 << (n % 64)) != 0)
}

fn zip3_prefix(p: &str) -> String {
    let mut out = String::with_capacity(5);
    push_zip3(p, &mut out);
    out
}

fn push_zip3(p: &str, out: &mut String) {
    out.push_str(if restricted_zip3(p) { "000" } else { p });
    out.push_str("**");
}

/// `02139`, `02139-1234`, `021391234` -> `021**`; `021**` is a fixed point.
pub fn zip3_str(s: &str) -> Option<String> {
    zip3_digits(s).map(zip3_prefix)
}

/// The 3-digit prefix of a ZIP code `zip3` accepts.
fn zip3_digits(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let ok = match b.len() {
        5 => digits_at(b, 0, 5).is_some() || (digits_at(b, 0, 3).is_some() && &b[3..] == b"**"),
        9 => digits_at(b, 0, 9).is_some(),
        10 => digits_at(b, 0, 5).is_some() && b[5] == b'-' && digits_at(b, 6, 4).is_some(),
        _ => false,
    };
    ok.then(|| &s[..3])
}

/// Numeric string ages: digits with an optional sign and decimal point
/// (no "inf"/"NaN" which f64::from_str would accept).
fn parse_age(s: &str) -> Option<f64> {
    let t = s.trim();
    let body = t.strip_prefix(['-', '+']).unwrap_or(t);
    if body.is_empty()
        || !body.bytes().all(|c| c.is_ascii_digit() || c == b'.')
        || !body.bytes().any(|c| c.is_ascii_digit())
    {
        return None;
    }
    t.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn restricted_zip3_bits_match_the_list() {
        let mut hits = 0;
        for n in 0..1000 {
            let p = format!("{n:03}");
            let listed = super::RESTRICTED_ZIP3.contains(&p.as_str());
            assert_eq!(super::restricted_zip3(&p), listed, "{p}");
            hits += usize::from(listed);
        }
        assert_eq!(hits, super::RESTRICTED_ZIP3.len());
        for p in ["", "03", "0366", "a36", "03:", "\u{0663}36"] {
            assert!(!super::restricted_zip3(p), "{p}");
        }
        assert_eq!(super::zip3_str("03601").as_deref(), Some("000**"));
        assert_eq!(super::zip3_str("03701").as_deref(), Some("037**"));
    }
}

#[cfg(test)]
mod pipeline_tests {
    use super::Pseudonymizer;

    #[test]
    fn pipelined_tags_are_the_tokens_tags() {
        // Each value hashed beside the one before it, across the one- and two-block padding
        // edges (55 and 119 bytes).
        for key in [&b"k"[..], &[7u8; 64][..], &[9u8; 100][..]] {
            let p = Pseudonymizer::new(key);
            let head = String::from_utf8(p.token_head().to_vec()).unwrap();
            let values: Vec<Vec<u8>> = (0..=130)
                .map(|n| (0..n).map(|i| (i * 7 + n) as u8 % 95 + 32).collect())
                .collect();
            let mut earlier = None;
            let mut tags = Vec::new();
            for v in &values {
                let (outer, tag) = p.pipelined(v, earlier.as_ref());
                tags.extend(tag);
                earlier = Some(outer);
            }
            tags.push(p.outer_tag(&earlier.unwrap()));
            assert_eq!(tags.len(), values.len());
            for (v, tag) in values.iter().zip(&tags) {
                let want = p.token(std::str::from_utf8(v).unwrap());
                let got = format!("{head}{}", std::str::from_utf8(tag).unwrap());
                assert_eq!(got, want, "{} bytes", v.len());
            }
        }
    }
}

#[cfg(test)]
mod base64_tests {
    use super::base64url16;
    use base64::Engine as _;

    #[test]
    fn tags_encode_as_the_base64_crate_does() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        for case in 0..2_000 {
            let tag: [u8; 16] = std::array::from_fn(|i| {
                crate::masking::tests::xorshift(&mut seed);
                // All zeros and all ones too.
                match case {
                    0 => 0,
                    1 => 0xff,
                    _ => (seed >> (i % 8)) as u8,
                }
            });
            let want = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag);
            assert_eq!(std::str::from_utf8(&base64url16(&tag)).unwrap(), want);
        }
    }
}
