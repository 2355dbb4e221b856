//! The email and phone detectors' searches, written out for ASCII text.
//!
//! Each returns the match its regex (in `detect.rs`) would find next from `from`, by the
//! same leftmost-first rules, at a tenth of the cost: the regexes spent more on setting up
//! each search (a cache from the pool, a reverse search for the start) than on the few
//! dozen bytes around an `@` or a number. They are only called on ASCII text, where the
//! regexes' Unicode `\b` is the ASCII one; other text still goes to the regexes. A test
//! holds both to the same matches on generated text.

use std::ops::Range;

/// The byte at `i`, or 0 past the end (0 is in no class below, and not a word byte).
#[inline(always)]
fn at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

/// A word byte in ASCII text (what `\b` tests).
#[inline(always)]
fn word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b`.
pub(super) fn email(b: &[u8], from: usize) -> Option<Range<usize>> {
    let local = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-');
    let mut pos = from;
    while let Some(sign) = next_at_sign(b, pos) {
        // Leftmost start: the whole run of local-part bytes before the `@` (none of them is
        // an `@`, so a match holds exactly one), from where the search began at the earliest.
        let mut start = sign;
        while start > from && local(b[start - 1]) {
            start -= 1;
        }
        if start < sign {
            if let Some(end) = domain_end(b, sign + 1) {
                return Some(start..end);
            }
        }
        pos = sign + 1;
    }
    None
}

/// The first `@` at or after `from`: 16 bytes a step.
fn next_at_sign(b: &[u8], from: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut chunk = from;
        while chunk < b.len() {
            let found = super::measure::bytes16(b, chunk, b'@');
            if found != 0 {
                return Some(chunk + found.trailing_zeros() as usize);
            }
            chunk += 16;
        }
        None
    }
    #[cfg(not(target_arch = "x86_64"))]
    b.get(from..)?
        .iter()
        .position(|&c| c == b'@')
        .map(|i| from + i)
}

/// Where the domain starting at `d` ends, if it is one. The labels' `+` and the `*` are
/// greedy and a label cannot end before a `.`, so the regex tries the last label that follows
/// a dot as the top-level domain first, then each earlier one: the letters it starts with
/// (two or more, and all of them, or `\b` fails before the next letter) must not be followed
/// by a word byte. Walking forward and keeping the last that fits finds the same.
fn domain_end(b: &[u8], d: usize) -> Option<usize> {
    let label = |c: u8| c.is_ascii_alphanumeric() || c == b'-';
    let run = |mut i: usize, f: &dyn Fn(u8) -> bool| {
        while f(at(b, i)) {
            i += 1;
        }
        i
    };
    let mut i = run(d, &label);
    if i == d {
        return None;
    }
    let mut best = None;
    while at(b, i) == b'.' {
        let start = i + 1;
        let end = run(start, &label);
        if end == start {
            break;
        }
        let letters = run(start, &|c: u8| c.is_ascii_alphabetic());
        if letters - start >= 2 && !word(at(b, letters)) {
            best = Some(letters);
        }
        i = end;
    }
    best
}

/// `(?:\+?1[ .-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}\b`
/// `|\+[1-9][0-9]{7,14}\b`.
pub(super) fn phone(b: &[u8], from: usize) -> Option<Range<usize>> {
    // Only a `+`, `(` or digit 1-9 can start one: 16 bytes of prose a step.
    #[cfg(target_arch = "x86_64")]
    {
        let mut chunk = from;
        while chunk < b.len() {
            let mut starts = super::measure::phone_starts16(b, chunk);
            while starts != 0 {
                let p = chunk + starts.trailing_zeros() as usize;
                if let Some(end) = phone_at(b, p) {
                    return Some(p..end);
                }
                starts &= starts - 1;
            }
            chunk += 16;
        }
        None
    }
    #[cfg(not(target_arch = "x86_64"))]
    (from..b.len())
        .filter(|&p| matches!(b[p], b'+' | b'(' | b'1'..=b'9'))
        .find_map(|p| phone_at(b, p).map(|end| p..end))
}

/// The end of the match starting at `p`: the first of the regex's paths, in its order of
/// preference, that matches (optional parts are greedy: tried present, then absent).
fn phone_at(b: &[u8], p: usize) -> Option<usize> {
    let digit = |i: usize| at(b, i).is_ascii_digit();
    let d29 = |i: usize| matches!(at(b, i), b'2'..=b'9');
    let sep = |i: usize| matches!(at(b, i), b' ' | b'.' | b'-');
    // `[2-9][0-9]{2}[ .-][0-9]{4}\b`
    let tail = |r: usize| {
        (d29(r)
            && digit(r + 1)
            && digit(r + 2)
            && sep(r + 3)
            && (r + 4..r + 8).all(digit)
            && !word(at(b, r + 8)))
        .then_some(r + 8)
    };
    // Where the area code may start: after `+1` or `1` and a separator, after them
    // alone, or at `p`.
    let mut starts = [None; 3];
    let one = match (at(b, p), at(b, p + 1)) {
        (b'+', b'1') => Some(p + 2),
        (b'1', _) => Some(p + 1),
        _ => None,
    };
    if let Some(q) = one {
        starts[0] = sep(q).then_some(q + 1);
        starts[1] = Some(q);
    }
    starts[2] = Some(p);
    for q in starts.into_iter().flatten() {
        let end = if at(b, q) == b'(' {
            if !(d29(q + 1) && digit(q + 2) && digit(q + 3) && at(b, q + 4) == b')') {
                continue;
            }
            (at(b, q + 5) == b' ')
                .then(|| tail(q + 6))
                .flatten()
                .or_else(|| tail(q + 5))
        } else if d29(q) && digit(q + 1) && digit(q + 2) && sep(q + 3) {
            tail(q + 4)
        } else {
            None
        };
        if end.is_some() {
            return end;
        }
    }
    // E.164: `+`, a non-zero digit, then 7 to 14 digits, all of them (`\b`).
    if at(b, p) == b'+' && matches!(at(b, p + 1), b'1'..=b'9') {
        let end = (p + 2..).find(|&i| !digit(i)).expect("the text ends");
        if (7..=14).contains(&(end - p - 2)) && !word(at(b, end)) {
            return Some(end);
        }
    }
    None
}

/// Every match from the start, each search resuming where the last match ended (as the
/// regexes' `find_iter` does; neither pattern matches the empty string).
pub(super) fn all(
    b: &[u8],
    find: fn(&[u8], usize) -> Option<Range<usize>>,
) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let m = find(b, pos)?;
        pos = m.end;
        Some(m)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn regex_matches(re: &Regex, s: &str) -> Vec<Range<usize>> {
        re.find_iter(s).map(|m| m.range()).collect()
    }

    /// Each of `cases` checked against the regex.
    fn agree_on(re: &Regex, find: fn(&[u8], usize) -> Option<Range<usize>>, cases: &[&str]) {
        for s in cases {
            let got: Vec<_> = all(s.as_bytes(), find).collect();
            assert_eq!(got, regex_matches(re, s), "{s}");
        }
    }

    /// `n` generated ASCII strings of up to `max` pieces each, checked against the regex;
    /// returns how many held a match.
    fn agree(
        re: &Regex,
        find: fn(&[u8], usize) -> Option<Range<usize>>,
        pieces: &[&str],
        n: usize,
        max: usize,
    ) -> usize {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut hits = 0;
        for case in 0..n {
            let mut s = String::new();
            for _ in 0..case % (max + 1) {
                crate::masking::tests::xorshift(&mut seed);
                s.push_str(pieces[(seed >> 11) as usize % pieces.len()]);
            }
            let want = regex_matches(re, &s);
            hits += usize::from(!want.is_empty());
            assert_eq!(all(s.as_bytes(), find).collect::<Vec<_>>(), want, "{s:?}");
        }
        hits
    }

    #[test]
    fn email_finds_what_its_regex_finds() {
        let re = super::super::detect::email_regex();
        // Few letters so that labels, dots and `@`s meet often.
        let pieces = [
            "a", "b", "Z", "x", "1", ".", ".", "@", "@", "-", "_", "%", "+", " ", "ab", ".cc",
        ];
        let hits = agree(re, email, &pieces, 200_000, 16);
        assert!(hits > 4_000, "{hits}");
        agree_on(
            re,
            email,
            &[
                "a@b.cc.dd1",
                "x@y.com.z@w.org",
                "a@b.co-uk",
                "a@b.com_x",
                "a@b.c.",
                "me@host.example.",
                "@a.bc a@@b.cc",
                "pre a.b+c@mail.example.co.uk now",
            ],
        );
    }

    #[test]
    fn phone_finds_what_its_regex_finds() {
        let re = super::super::detect::phone_regex();
        // Digits first and often, so that whole numbers form.
        let pieces = [
            "2", "0", "1", "9", "21", "212", "555", "0142", "(", ")", " ", "-", ".", "+", "+1",
            "a", "_", "+4915", "1234567",
        ];
        let hits = agree(re, phone, &pieces, 300_000, 10);
        assert!(hits > 5_000, "{hits}");
        agree_on(
            re,
            phone,
            &[
                "+1 (212) 555-0142",
                "1-212-555-0142",
                "+1(212)555-0142",
                "(212)555-0142x",
                "+4915112345678",
                "+491511234567890123",
                "+1 212 555 01423",
                "call 212.555.0142 or +1-212-555-0143.",
                "1 1 212-555-0142",
            ],
        );
    }
}
