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
use super::finders;
pub(crate) use super::measure::Counts;
use super::measure::{counts, date_or_utc_time, digit_runs, Runs};
use crate::per_thread::PerThread;
use regex::Regex;
use std::ops::Range;
use std::sync::LazyLock;

#[derive(Debug, Clone)]
pub enum Detector {
    CreditCard,
    Ssn,
    Phone,
    Email,
    Custom(Box<PerThread<Regex>>),
}

impl Detector {
    pub fn name(&self) -> String {
        match self {
            Detector::CreditCard => "credit_card".into(),
            Detector::Ssn => "ssn".into(),
            Detector::Phone => "phone".into(),
            Detector::Email => "email".into(),
            Detector::Custom(r) => format!("regex /{}/", r.shared().as_str()),
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

static SSN: LazyLock<PerThread<Regex>> = LazyLock::new(|| {
    PerThread::new(Regex::new(r"\b(?:[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{9})\b").expect("ssn regex"))
});
static PHONE: LazyLock<PerThread<Regex>> = LazyLock::new(|| {
    PerThread::new(Regex::new(
        r"(?:\+?1[ .-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}\b|\+[1-9][0-9]{7,14}\b",
    )
    .expect("phone regex"))
});
static CARD: LazyLock<PerThread<Regex>> = LazyLock::new(|| {
    PerThread::new(Regex::new(r"\b[0-9](?:[ -]?[0-9]){12,18}\b").expect("card regex"))
});
static EMAIL: LazyLock<PerThread<Regex>> = LazyLock::new(|| {
    PerThread::new(
        Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
            .expect("email regex"),
    )
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
        self.scrub_counted(s, counts(s.as_bytes()))
    }

    /// No detector can match a string with these counts (so `scrub` would return None).
    /// Cheap prefilter so most strings (names, dates, codes, prose) skip every search:
    /// NANP phones need 10 digits, SSNs 9, cards 13, E.164 phones 8 plus a '+'; emails
    /// need an '@'. A custom regex may match anything.
    #[inline]
    pub(crate) fn refuses(&self, c: &Counts) -> bool {
        // Something could match: a custom regex, a number's digits, an address's '@'.
        !(self.custom || (c.digits >= 8 && self.any_digit_based) || (c.at && self.email))
    }

    /// `scrub`, with the counts of `s` already taken (by the masker, as it scanned the
    /// string).
    pub(crate) fn scrub_counted(&self, s: &str, c: Counts) -> Option<String> {
        let mut out = String::new();
        self.scrub_counted_into(s, c, &mut out).then_some(out)
    }

    /// `scrub_counted` into `out` (its allocation reused: the masker keeps one for every
    /// string of a document); true if anything matched, and `out` then holds the result.
    pub(crate) fn scrub_counted_into(&self, s: &str, c: Counts, out: &mut String) -> bool {
        let (card, ssn, phone, at, ascii) = if self.custom {
            (true, true, true, true, c.ascii)
        } else {
            let Counts {
                digits: total,
                at,
                ascii,
            } = c;
            if self.refuses(&c) {
                // Fewer than 8 digits in all (no run can hold a numeric match), no `@`.
                return false;
            }
            if !at && date_or_utc_time(s.as_bytes()) {
                // Runs of 8 digits at most, no `+` (nor `@`): nothing to measure or search.
                return false;
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
            // a `-`, so the thresholds measured on `s` hold for every detector in turn. So
            // does `ascii`: `[REDACTED]` is ASCII.
            let (d, digits) = (self.any_digit_based, runs.longest);
            (
                d && digits >= 13,
                // Both SSN forms hold 9 digits in a run, as nine in a row or as
                // `ddd-dd-dddd`, which holds `-dd-`. A phone number has neither, so the SSN
                // regex is not run on it.
                d && digits >= 9 && runs.ssn_shape,
                d && (digits >= 10 || (digits >= 8 && runs.plus)),
                self.email && at,
                ascii,
            )
        };
        if !card && !ssn && !phone && !at {
            return false;
        }
        // The first detector that matches writes into `out`; a later one reads `out` and
        // writes into `next` (allocated only then), which is swapped in.
        let (mut found, mut next) = (false, String::new());
        for d in &self.list {
            let (hay, into) = if found {
                (out.as_str(), &mut next)
            } else {
                (s, &mut *out)
            };
            let hit = match d {
                Detector::CreditCard if card => replace_regex(CARD.get(), hay, card_ok, into),
                Detector::Ssn if ssn => replace_regex(SSN.get(), hay, ssn_ok, into),
                Detector::Phone if phone => {
                    replace_found(&PHONE, finders::phone, ascii, hay, phone_ok, into)
                }
                Detector::Email if at => {
                    replace_found(&EMAIL, finders::email, ascii, hay, |_, _| true, into)
                }
                Detector::Custom(re) => replace_regex(re.get(), hay, |_, _| true, into),
                _ => false,
            };
            if hit && found {
                std::mem::swap(out, &mut next);
            }
            found |= hit;
        }
        found
    }
}

/// The email regex (for tests of what stands in for it).
#[cfg(test)]
pub(super) fn email_regex() -> &'static Regex {
    EMAIL.shared()
}

/// The phone regex (for tests of what stands in for it).
#[cfg(test)]
pub(super) fn phone_regex() -> &'static Regex {
    PHONE.shared()
}

/// The regex's matches, or on ASCII text the same ones from its written-out search (the
/// regex not even looked up then: this thread's clone of it is a lookup of its own).
fn replace_found(
    re: &LazyLock<PerThread<Regex>>,
    find: fn(&[u8], usize) -> Option<Range<usize>>,
    ascii: bool,
    s: &str,
    ok: impl Fn(&str, Range<usize>) -> bool,
    out: &mut String,
) -> bool {
    if ascii {
        replace_valid(finders::all(s.as_bytes(), find), s, ok, out)
    } else {
        replace_valid(re.get().find_iter(s).map(|m| m.range()), s, ok, out)
    }
}

fn replace_regex(
    re: &Regex,
    s: &str,
    ok: impl Fn(&str, Range<usize>) -> bool,
    out: &mut String,
) -> bool {
    replace_valid(re.find_iter(s).map(|m| m.range()), s, ok, out)
}

/// `s` with its valid matches replaced, in `out` (cleared first); false: none was valid
/// (and `out` is left alone).
fn replace_valid(
    matches: impl Iterator<Item = Range<usize>>,
    s: &str,
    ok: impl Fn(&str, Range<usize>) -> bool,
    out: &mut String,
) -> bool {
    let mut found = false;
    let mut last = 0;
    for m in matches {
        if m.is_empty() || !ok(s, m.clone()) {
            continue;
        }
        if !found {
            out.clear();
            found = true;
        }
        out.push_str(&s[last..m.start]);
        out.push_str(REDACTED);
        last = m.end;
    }
    if found {
        out.push_str(&s[last..]);
    }
    found
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
    fn every_ssn_match_has_the_prefilter_shape() {
        // Skipping the SSN regex on strings without the shape loses no match.
        let alphabet = b"0123456789 .-()+@aZ";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut matches = 0;
        for case in 0..20_000 {
            let mut text = String::new();
            for _ in 0..case % 41 {
                crate::masking::tests::xorshift(&mut seed);
                let i = if seed % 2 == 0 {
                    (seed >> 8) % 10
                } else {
                    (seed >> 8) % 19
                };
                text.push(char::from(alphabet[i as usize]));
            }
            if SSN.get().is_match(&text) {
                assert!(digit_runs(text.as_bytes()).ssn_shape, "{text:?}");
                matches += 1;
            }
        }
        assert!(matches > 50, "{matches}");
    }

    #[test]
    fn non_ascii_text_goes_to_the_regexes_and_their_unicode_word_boundary() {
        let d = Detectors::new(vec![Detector::Phone, Detector::Email]);
        // `é` is a word character to `\b`: neither number nor address ends here.
        assert_eq!(d.scrub("call 212-555-0142é"), None);
        assert_eq!(d.scrub("mail a@b.comé"), None);
        // The same text in ASCII, written-out searches: both found.
        assert_eq!(
            d.scrub("call 212-555-0142e, mail a@b.com!").as_deref(),
            Some("call 212-555-0142e, mail [REDACTED]!")
        );
        assert_eq!(
            d.scrub("Ünïcode: call 212-555-0142 or mail a@b.com")
                .as_deref(),
            Some("Ünïcode: call [REDACTED] or mail [REDACTED]")
        );
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
