//! Backstop detectors: substrings of remaining string values that look like
//! PHI are replaced by `[REDACTED]`.
//!
//! Choices (to keep false positives down):
//! - `ssn`: `123-45-6789` or exactly 9 digits standing alone; invalid SSA
//!   ranges (area 000/666/9xx, group 00, serial 0000) are not matched; a
//!   candidate glued to a longer number (`1.123456789`, `555-123-45-6789`) is not.
//! - `phone`: NANP with separators or parentheses, optional `+1`/`1` prefix
//!   (area code and exchange start 2-9), and E.164 `+<8-15 digits>`. Ten bare
//!   digits are NOT matched (too many ids look like that).
//! - `credit_card`: 13-19 digits, optional single spaces/dashes between
//!   digits, Luhn-valid.
//! - `email`: pragmatic ASCII `local@domain.tld`.
//!
//! Detectors run in a fixed order (credit_card, ssn, phone, email, custom in
//! file order) so the longest numeric forms are consumed first.

use super::actions::REDACTED;
use regex::Regex;
use std::ops::Range;
use std::sync::LazyLock;

#[derive(Debug, Clone)]
pub enum Detector {
    CreditCard,
    Ssn,
    Phone,
    Email,
    Custom(Regex),
}

impl Detector {
    pub fn name(&self) -> String {
        match self {
            Detector::CreditCard => "credit_card".into(),
            Detector::Ssn => "ssn".into(),
            Detector::Phone => "phone".into(),
            Detector::Email => "email".into(),
            Detector::Custom(r) => format!("regex /{}/", r.as_str()),
        }
    }

    fn sort_key(&self) -> u8 {
        match self {
            Detector::CreditCard => 0,
            Detector::Ssn => 1,
            Detector::Phone => 2,
            Detector::Email => 3,
            Detector::Custom(_) => 4,
        }
    }
}

static SSN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(?:[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{9})\b").expect("ssn regex")
});
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?:\+?1[ .-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}\b|\+[1-9][0-9]{7,14}\b",
    )
    .expect("phone regex")
});
static CARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b[0-9](?:[ -]?[0-9]){12,18}\b").expect("card regex"));
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
        .expect("email regex")
});

#[derive(Debug, Clone, Default)]
pub struct Detectors {
    list: Vec<Detector>,
    /// Built-ins other than email only ever match strings containing a digit.
    any_digit_based: bool,
    email: bool,
    custom: bool,
}

impl Detectors {
    pub fn new(mut list: Vec<Detector>) -> Self {
        list.sort_by_key(Detector::sort_key);
        let any_digit_based = list
            .iter()
            .any(|d| matches!(d, Detector::CreditCard | Detector::Ssn | Detector::Phone));
        let email = list.iter().any(|d| matches!(d, Detector::Email));
        let custom = list.iter().any(|d| matches!(d, Detector::Custom(_)));
        Detectors {
            list,
            any_digit_based,
            email,
            custom,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(Detector::name).collect()
    }

    /// Returns the scrubbed string if anything matched.
    pub fn scrub(&self, s: &str) -> Option<String> {
        if self.list.is_empty() {
            return None;
        }
        // Cheap prefilter so most strings (names, dates, codes, prose) skip
        // every regex: NANP phones need 10 digits, SSNs 9, cards 13, E.164
        // phones 8 plus a '+'; emails need an '@'.
        let (card, ssn, phone, at) = if self.custom {
            (true, true, true, true)
        } else {
            let (total, at) = digits_and_at(s.as_bytes());
            if (total < 8 || !self.any_digit_based) && !(at && self.email) {
                // Fewer than 8 digits in all: no run can hold a numeric match.
                return None;
            }
            // Every built-in numeric match lies within one run of digits and the separators
            // they allow (` .-()+`): count digits per such run, not per string, so dates and
            // timestamps (`2019-04-19T04:10:53Z`: runs of 8 and 6) skip the regexes too. Fewer
            // than 8 digits in all (an email in prose): no run to measure.
            let runs = if total >= 8 && self.any_digit_based {
                digit_runs(s.as_bytes())
            } else {
                Runs::default()
            };
            // Replacements only ever shorten runs, and `[REDACTED]` holds neither a digit nor
            // a `-`, so the thresholds measured on `s` hold for every detector in turn.
            let (d, digits) = (self.any_digit_based, runs.longest);
            (
                d && digits >= 13,
                // Both SSN forms hold 9 digits in a run, as nine in a row or as
                // `ddd-dd-dddd`, which holds `-dd-`. A phone number has neither, so the SSN
                // regex is not run on it.
                d && digits >= 9 && runs.ssn_shape,
                d && (digits >= 10 || (digits >= 8 && runs.plus)),
                self.email && at,
            )
        };
        if !card && !ssn && !phone && !at {
            return None;
        }
        let mut cur: Option<String> = None;
        for d in &self.list {
            let hay = cur.as_deref().unwrap_or(s);
            let out = match d {
                Detector::CreditCard if card => replace_valid(&CARD, hay, card_ok),
                Detector::Ssn if ssn => replace_valid(&SSN, hay, ssn_ok),
                Detector::Phone if phone => replace_valid(&PHONE, hay, phone_ok),
                Detector::Email if at => replace_valid(&EMAIL, hay, |_, _| true),
                Detector::Custom(re) => replace_valid(re, hay, |_, _| true),
                _ => None,
            };
            if out.is_some() {
                cur = out;
            }
        }
        cur
    }
}

/// What the numeric detectors' prefilter measures of a string.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Runs {
    /// The longest run of ASCII digits that the numeric detectors' separators (` .-()+`)
    /// may join (any other byte ends a run).
    longest: usize,
    /// `b` holds a `+`.
    plus: bool,
    /// `b` holds nine digits in a row, or `-dd-` (a dash, two digits, a dash): one of the two
    /// is in every SSN match.
    ssn_shape: bool,
}

/// Measures `b` for the prefilter. Prose between numbers (no run open, no digit in sight)
/// goes 8 bytes a step.
fn digit_runs(b: &[u8]) -> Runs {
    let mut r = Runs::default();
    let mut run = 0usize;
    // Digits in a row; digits since a `-` (None when something else came since).
    let (mut row, mut after_dash) = (0usize, None::<usize>);
    let mut byte = |c: u8, run: &mut usize, r: &mut Runs| match c {
        b'0'..=b'9' => {
            *run += 1;
            r.longest = r.longest.max(*run);
            row += 1;
            r.ssn_shape |= row >= 9;
            after_dash = after_dash.map(|n| n + 1);
        }
        b'-' => {
            r.ssn_shape |= after_dash == Some(2);
            (row, after_dash) = (0, Some(0));
        }
        b' ' | b'.' | b'(' | b')' => (row, after_dash) = (0, None),
        b'+' => {
            r.plus = true;
            (row, after_dash) = (0, None);
        }
        _ => {
            *run = 0;
            (row, after_dash) = (0, None);
        }
    };
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        if run == 0 {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            if digit_lanes(w) == 0 {
                // No run open and none starting: only a `+` matters here, and whether the
                // word ends in the `-` an SSN's `-dd-` could start with (no run open means no
                // digit since the last other byte: no `-d` or `-dd` pending before it).
                r.plus |= has_byte(w, b'+');
                byte(c[7], &mut run, &mut r);
                continue;
            }
        }
        for &x in c {
            byte(x, &mut run, &mut r);
        }
    }
    for &x in chunks.remainder() {
        byte(x, &mut run, &mut r);
    }
    r
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// 0x80 in exactly the lanes of `w` that hold an ASCII digit (no carries between lanes).
fn digit_lanes(w: u64) -> u64 {
    // Lanes below 0x80 only: v + 0x50 sets the high bit iff v >= '0', v + 0x46 iff v > '9'.
    let x = w & !HIGH;
    (x + ONES * 0x50) & !(x + ONES * 0x46) & !w & HIGH
}

/// Whether some lane of `w` is `v` (exact: a borrow only flags lanes above a true match).
fn has_byte(w: u64, v: u8) -> bool {
    let y = w ^ (ONES * u64::from(v));
    y.wrapping_sub(ONES) & !y & HIGH != 0
}

/// ASCII digits in `b`, and whether it holds an '@': 8 bytes at a time.
fn digits_and_at(b: &[u8]) -> (usize, bool) {
    // The flagged lanes as 0/1 bytes, summed into the top byte by one multiply (at most 8:
    // no carry out), cheaper than a bit count where the target has no `popcnt`.
    let lanes = |w: u64| {
        let ones = (digit_lanes(w) >> 7).wrapping_mul(ONES) >> 56;
        (ones as usize, has_byte(w, b'@'))
    };
    let (mut digits, mut at) = (0usize, false);
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let (d, a) = lanes(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        digits += d;
        at |= a;
    }
    for &c in chunks.remainder() {
        digits += usize::from(c.is_ascii_digit());
        at |= c == b'@';
    }
    (digits, at)
}

fn replace_valid(re: &Regex, s: &str, ok: impl Fn(&str, Range<usize>) -> bool) -> Option<String> {
    let mut out: Option<String> = None;
    let mut last = 0;
    for m in re.find_iter(s) {
        if m.is_empty() || !ok(s, m.range()) {
            continue;
        }
        let o = out.get_or_insert_with(|| String::with_capacity(s.len()));
        o.push_str(&s[last..m.start()]);
        o.push_str(REDACTED);
        last = m.end();
    }
    let mut o = out?;
    o.push_str(&s[last..]);
    Some(o)
}

/// Rejects candidates that are part of a longer number: `1.123456789`,
/// `555-123-45-6789`, `123-45-6789-1`, or glued to letters/digits.
fn standalone(s: &str, r: &Range<usize>) -> bool {
    let b = s.as_bytes();
    let before = r.start.checked_sub(1).map(|i| b[i]);
    let before2 = r.start.checked_sub(2).map(|i| b[i]);
    let after = b.get(r.end).copied();
    let after2 = b.get(r.end + 1).copied();
    let wordish = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
    let joiner = |c: Option<u8>| matches!(c, Some(b'-' | b'.' | b'/' | b'+'));
    let digit = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_digit());
    !(wordish(before)
        || wordish(after)
        || (joiner(before) && digit(before2))
        || (joiner(after) && digit(after2)))
}

fn ssn_ok(s: &str, r: Range<usize>) -> bool {
    if !standalone(s, &r) {
        return false;
    }
    let d: Vec<u8> = s[r]
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|c| c - b'0')
        .collect();
    if d.len() != 9 {
        return false;
    }
    let area = u32::from(d[0]) * 100 + u32::from(d[1]) * 10 + u32::from(d[2]);
    let group = d[3] * 10 + d[4];
    let serial = d[5..].iter().all(|x| *x == 0);
    area != 0 && area != 666 && area < 900 && group != 0 && !serial
}

fn phone_ok(s: &str, r: Range<usize>) -> bool {
    standalone(s, &r)
}

fn card_ok(s: &str, r: Range<usize>) -> bool {
    if !standalone(s, &r) {
        return false;
    }
    let digits: Vec<u32> = s[r]
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|c| u32::from(c - b'0'))
        .collect();
    (13..=19).contains(&digits.len()) && luhn(&digits)
}

pub fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swar_prefilter_counts_exactly() {
        let all: Vec<u8> = (0..=255u8).collect();
        for s in [
            &all[..],
            b"",
            b"0123456789",
            b"a@b",
            b"\xff9\x80/:@?0",
            "é1ü2名3@🙂4".as_bytes(),
            b"////::::0000@@@@9999",
        ] {
            // Every start within a word and every end: each tail length (0-7) over each
            // kind of byte.
            for start in 0..s.len().min(9) {
                for end in start..=s.len() {
                    let b = &s[start..end];
                    let naive = (
                        b.iter().filter(|c| c.is_ascii_digit()).count(),
                        b.contains(&b'@'),
                    );
                    assert_eq!(digits_and_at(b), naive, "{b:?}");
                }
            }
        }
    }

    #[test]
    fn digit_runs_are_measured_exactly_at_every_alignment() {
        // Against the plain byte loop, on strings of digits, separators, `+`, `@`, letters
        // and non-ASCII bytes, of every length up to 40 (runs across and along 8-byte steps).
        let naive = |b: &[u8]| {
            let (mut run, mut longest, mut plus) = (0usize, 0usize, false);
            for &c in b {
                match c {
                    b'0'..=b'9' => {
                        run += 1;
                        longest = longest.max(run);
                    }
                    b' ' | b'.' | b'-' | b'(' | b')' => {}
                    b'+' => plus = true,
                    _ => run = 0,
                }
            }
            let digit = |c: &u8| c.is_ascii_digit();
            let ssn_shape = b.windows(9).any(|w| w.iter().all(digit))
                || b.windows(4)
                    .any(|w| w[0] == b'-' && digit(&w[1]) && digit(&w[2]) && w[3] == b'-');
            Runs {
                longest,
                plus,
                ssn_shape,
            }
        };
        let alphabet = b"0123456789 .-()+@aZ\xff\x80";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let (mut longest_seen, mut shapes, mut ssn_matches) = (0, 0, 0);
        for case in 0..20_000 {
            let len = case % 41;
            let mut b = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Digits half the time, so long runs occur.
                let i = if seed % 2 == 0 {
                    (seed >> 8) % 10
                } else {
                    (seed >> 8) % 21
                };
                b.push(alphabet[i as usize]);
            }
            let want = naive(&b);
            longest_seen = longest_seen.max(want.longest);
            shapes += usize::from(want.ssn_shape);
            assert_eq!(digit_runs(&b), want, "{b:?}");
            // The SSN shape is necessary for an SSN match: skipping the regex without it
            // loses none.
            if let Ok(text) = std::str::from_utf8(&b) {
                if SSN.is_match(text) {
                    assert!(want.ssn_shape, "{text:?}");
                    ssn_matches += 1;
                }
            }
        }
        assert!(longest_seen >= 16, "{longest_seen}");
        assert!(shapes > 1000 && ssn_matches > 50, "{shapes} {ssn_matches}");
        // A run that an 8-byte step of separators only continues, and one a letter ends.
        assert_eq!(digit_runs(b"1234  ..  --  ()  5678").longest, 8);
        assert_eq!(digit_runs(b"1234  ..  --  x)  5678").longest, 4);
        let r = digit_runs(b"prose prose prose +1");
        assert_eq!((r.longest, r.plus), (1, true));
        // `-dd-` across an 8-byte step skipped for holding no digit.
        assert!(digit_runs(b"abcdefg-12-").ssn_shape);
        assert!(digit_runs(b"prose, prose, pro-12-3456").ssn_shape);
        assert!(!digit_runs(b"call 915-693-8231 after 5pm").ssn_shape);
    }

    #[test]
    fn phone_numbers_skip_the_ssn_regex_and_are_still_caught() {
        let all = Detectors::new(vec![Detector::Ssn, Detector::Phone]);
        assert_eq!(
            all.scrub("Call back at 915-693-8231 after 5pm.").as_deref(),
            Some("Call back at [REDACTED] after 5pm.")
        );
        let ssn = Detectors::new(vec![Detector::Ssn]);
        assert_eq!(ssn.scrub("Call back at 915-693-8231 after 5pm."), None);
        assert_eq!(
            ssn.scrub("ssn 123-45-6789").as_deref(),
            Some("ssn [REDACTED]")
        );
        assert_eq!(
            ssn.scrub("ssn 123456789").as_deref(),
            Some("ssn [REDACTED]")
        );
        assert_eq!(
            ssn.scrub("phone 915-693-8231, ssn 123-45-6789").as_deref(),
            Some("phone 915-693-8231, ssn [REDACTED]")
        );
    }

    #[test]
    fn per_detector_thresholds_keep_every_match() {
        let all = Detectors::new(vec![
            Detector::CreditCard,
            Detector::Ssn,
            Detector::Phone,
            Detector::Email,
        ]);
        let r = |s: &str| all.scrub(s);
        // Just long enough for each detector.
        assert_eq!(r("+12345678").as_deref(), Some(REDACTED));
        assert_eq!(r("+1234567"), None);
        assert_eq!(r("id 123-45-6789").as_deref(), Some("id [REDACTED]"));
        assert_eq!(r("617 555 1234").as_deref(), Some(REDACTED));
        assert_eq!(r("4111 1111 1111 1111").as_deref(), Some(REDACTED));
        assert_eq!(r("4222222222222").as_deref(), Some(REDACTED));
        assert_eq!(r("a@b.example").as_deref(), Some(REDACTED));
        // Too few digits in all, or split into short runs.
        assert_eq!(r("1234567 and 7654321"), None);
        assert_eq!(r("2019-04-19T04:10:53Z"), None);
        assert_eq!(r("plain prose without any"), None);
        // The numeric detectors read ASCII digits, as do their validators and the
        // prefilter (regex `\d` would also match other scripts' digits, which the SSN check
        // then indexed past: a panic).
        assert_eq!(
            r("123456789 ١٢٣-٤٥-٦٧٨٩").as_deref(),
            Some("[REDACTED] ١٢٣-٤٥-٦٧٨٩")
        );
        // Several detectors on one string, each on what the previous left.
        assert_eq!(
            r("card 4111-1111-1111-1111, ssn 123-45-6789, tel (617) 555-1234, a@b.example")
                .as_deref(),
            Some("card [REDACTED], ssn [REDACTED], tel [REDACTED], [REDACTED]")
        );
    }
}
