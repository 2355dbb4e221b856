//! The detectors' prefilter: what one string holds that a detector could match, measured
//! 16 bytes a step with SSE2 (part of every x86-64), or 8 a step elsewhere. Most strings
//! (names, dates, codes, prose) are refused here and never reach a regex.

/// What the numeric detectors' prefilter measures of a string.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Runs {
    /// The longest run of ASCII digits that the numeric detectors' separators (` .-()+`)
    /// may join (any other byte ends a run).
    pub longest: usize,
    /// The string holds a `+`.
    pub plus: bool,
    /// The string holds nine digits in a row, or `-dd-` (a dash, two digits, a dash): one
    /// of the two is in every SSN match.
    pub ssn_shape: bool,
}

/// What the first look at a string finds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// ASCII digits in all.
    pub digits: usize,
    /// It holds an `@`.
    pub at: bool,
    /// Every byte is ASCII.
    pub ascii: bool,
}

/// `YYYY-MM-DD`, alone or followed by `THH:MM:SS`, at most six fraction digits after a
/// `.`, and an optional `Z`: the commonest digit-heavy strings of API payloads (every
/// record's `created_at`). Such a string holds no `+`, and its longest run of digits and
/// the numeric detectors' separators is the date's 8 digits (`T` and `:` end runs; a
/// fraction of at most six digits joins the seconds' two): no numeric detector can match
/// it, so it needs no `digit_runs`.
pub(super) fn date_or_utc_time(b: &[u8]) -> bool {
    let d = |i: usize| b[i].is_ascii_digit();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' || !(d(0) && d(1) && d(2) && d(3)) {
        return false;
    }
    if !(d(5) && d(6) && d(8) && d(9)) {
        return false;
    }
    if b.len() == 10 {
        return true;
    }
    if b.len() < 19 || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return false;
    }
    if !(d(11) && d(12) && d(14) && d(15) && d(17) && d(18)) {
        return false;
    }
    let mut rest = &b[19..];
    if let [b'.', frac @ ..] = rest {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 6 {
            return false;
        }
        rest = &frac[n..];
    }
    matches!(rest, [] | [b'Z'])
}

#[cfg(target_arch = "x86_64")]
pub(super) use sse2::{bytes16, counts, digit_runs, phone_starts16, string_counts};

#[cfg(not(target_arch = "x86_64"))]
pub(super) use portable::{counts, digit_runs};

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use super::{Counts, Runs};
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_cvtsi128_si64, _mm_loadu_si128, _mm_min_epu8,
        _mm_movemask_epi8, _mm_or_si128, _mm_sad_epu8, _mm_set1_epi8, _mm_set_epi64x,
        _mm_setzero_si128, _mm_srli_si128, _mm_sub_epi8,
    };

    /// The string's bytes 16 at a time; the last chunk is zero-padded (a zero byte is no
    /// digit, separator, `@` or non-ASCII byte, so padding changes no measure).
    #[inline(always)]
    fn for_chunks(b: &[u8], mut f: impl FnMut(__m128i)) {
        let mut chunks = b.chunks_exact(16);
        for c in &mut chunks {
            // SAFETY: SSE2 is in the x86-64 baseline; the load reads exactly the 16 bytes
            // of the chunk and needs no alignment.
            f(unsafe { _mm_loadu_si128(c.as_ptr().cast::<__m128i>()) });
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            f(padded(rest));
        }
    }

    /// 1 to 15 bytes, zero-padded to 16, put together in registers from (overlapping) word
    /// reads: copied into a zeroed array instead, they cost a `memcpy` call and then a
    /// stall, the 16-byte load waiting on the copy's smaller stores (a fifth of the
    /// detectors' time in `perf`).
    #[inline(always)]
    fn padded(rest: &[u8]) -> __m128i {
        let n = rest.len();
        let word = |at: usize| u64::from_le_bytes(rest[at..at + 8].try_into().expect("8 bytes"));
        let half = |at: usize| {
            u64::from(u32::from_le_bytes(
                rest[at..at + 4].try_into().expect("4 bytes"),
            ))
        };
        // The second read's bytes land where they belong; where the reads overlap both hold
        // the same bytes, so OR-ing them changes nothing.
        let v: u128 = if n >= 8 {
            u128::from(word(0)) | u128::from(word(n - 8)) << (8 * (n - 8))
        } else if n >= 4 {
            u128::from(half(0) | half(n - 4) << (8 * (n - 4)))
        } else {
            rest.iter()
                .rev()
                .fold(0u128, |v, &c| v << 8 | u128::from(c))
        };
        // SAFETY: SSE2 is in the x86-64 baseline; this works on registers only.
        unsafe { _mm_set_epi64x((v >> 64) as i64, v as i64) }
    }

    /// The 16 bytes at `from` (`from` < `b.len()`; fewer at the end, zero-padded).
    #[inline(always)]
    fn load16(b: &[u8], from: usize) -> __m128i {
        match b.get(from..from + 16) {
            // SAFETY: SSE2 is in the x86-64 baseline; the load reads exactly these 16 bytes
            // and needs no alignment.
            Some(c) => unsafe { _mm_loadu_si128(c.as_ptr().cast::<__m128i>()) },
            None => padded(&b[from..]),
        }
    }

    /// 0xff in the lanes of `v` from `lo` to `lo + span`.
    #[inline(always)]
    fn range_lanes(v: __m128i, lo: u8, span: u8) -> __m128i {
        // SAFETY: SSE2 is in the x86-64 baseline; these work on registers only.
        unsafe {
            // v - lo wraps everything below `lo` high: the range is exactly the lanes <= span.
            let t = _mm_sub_epi8(v, _mm_set1_epi8(lo as i8));
            _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(span as i8)), t)
        }
    }

    /// 0xff in the lanes of `v` that hold an ASCII digit.
    #[inline(always)]
    fn digit_lanes(v: __m128i) -> __m128i {
        range_lanes(v, b'0', 9)
    }

    /// Bit i: byte i of the 16 at `from` (fewer at the end) may start a phone number (`+`,
    /// `(` or a digit 1-9).
    #[inline(always)]
    pub(in super::super) fn phone_starts16(b: &[u8], from: usize) -> u32 {
        let v = load16(b, from);
        // SAFETY: SSE2 is in the x86-64 baseline; these work on registers only.
        unsafe {
            let is = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
            let m = _mm_or_si128(range_lanes(v, b'1', 8), _mm_or_si128(is(b'+'), is(b'(')));
            _mm_movemask_epi8(m) as u32
        }
    }

    /// Bit i: byte i of the 16 at `from` (fewer at the end) is `c`.
    #[inline(always)]
    pub(in super::super) fn bytes16(b: &[u8], from: usize, c: u8) -> u32 {
        let v = load16(b, from);
        // SAFETY: SSE2 is in the x86-64 baseline; these work on registers only. A zero
        // `c` would also flag the padding: no caller asks for one.
        unsafe { _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8))) as u32 }
    }

    /// A string value from `from` (just past its opening quote) to its closing quote, and
    /// its counts, in one pass: the masker's scan and the detectors' first look share each
    /// 16-byte load. `Ok(None)`: the string has escapes (measure its decoded text instead);
    /// `Err`: a raw control byte, or the text ends first.
    #[inline(always)]
    pub(in super::super) fn string_counts(
        b: &[u8],
        from: usize,
    ) -> Result<Option<(usize, Counts)>, ()> {
        /// 16 bytes from `16 - n`: `n` lanes of 0xff, then zeros.
        static LANES: [u8; 32] = {
            let mut l = [0u8; 32];
            let mut i = 0;
            while i < 16 {
                l[i] = 0xff;
                i += 1;
            }
            l
        };
        let mut t = Tally::new();
        let mut j = from;
        loop {
            if j >= b.len() {
                return Err(());
            }
            let v = load16(b, j);
            // Quotes, backslashes and control bytes (the zero padding past the text's end
            // too: a string it reaches is unterminated).
            // SAFETY: SSE2 is in the x86-64 baseline; these work on registers only.
            let special = unsafe {
                let is = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
                let control = range_lanes(v, 0, 0x1f);
                _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(is(b'"'), is(b'\\')), control)) as u32
            };
            // The lanes before the first special byte (all 16 when there is none).
            let first = special.trailing_zeros().min(16) as usize;
            // SAFETY: SSE2 is in the x86-64 baseline; the load reads 16 bytes of `LANES`
            // from at most its 16th.
            let keep = unsafe { _mm_loadu_si128(LANES[16 - first..].as_ptr().cast::<__m128i>()) };
            t.add(v, keep);
            if special != 0 {
                return match b.get(j + first) {
                    Some(b'"') => Ok(Some((j + first, t.counts()))),
                    Some(b'\\') => Ok(None),
                    _ => Err(()),
                };
            }
            j += 16;
        }
    }

    pub(in super::super) fn counts(b: &[u8]) -> Counts {
        let mut t = Tally::new();
        // SAFETY: SSE2 is in the x86-64 baseline; this works on registers only.
        for_chunks(b, |v| t.add(v, unsafe { _mm_set1_epi8(-1) }));
        t.counts()
    }

    /// `Counts` taken 16 lanes a step: digits per lane (a compare yields -1 per digit,
    /// subtracted; summed across lanes every 255 steps, before a lane can wrap, and at the
    /// end), and the `@` and non-ASCII lanes. No bit count per step.
    struct Tally {
        per_lane: __m128i,
        at: __m128i,
        high: __m128i,
        digits: usize,
        steps: u32,
    }

    impl Tally {
        #[inline(always)]
        fn new() -> Tally {
            // SAFETY: SSE2 is in the x86-64 baseline; this works on registers only.
            let zero = unsafe { _mm_setzero_si128() };
            Tally {
                per_lane: zero,
                at: zero,
                high: zero,
                digits: 0,
                steps: 0,
            }
        }

        #[inline(always)]
        fn sum(lanes: __m128i) -> usize {
            // SAFETY: SSE2 is in the x86-64 baseline; these work on registers only.
            unsafe {
                let s = _mm_sad_epu8(lanes, _mm_setzero_si128());
                (_mm_cvtsi128_si64(s) + _mm_cvtsi128_si64(_mm_srli_si128::<8>(s))) as usize
            }
        }

        /// The lanes of `v` that `keep` (0xff or 0 per lane) keeps.
        #[inline(always)]
        fn add(&mut self, v: __m128i, keep: __m128i) {
            // SAFETY: SSE2 is in the x86-64 baseline; these work on registers only.
            unsafe {
                self.per_lane = _mm_sub_epi8(self.per_lane, _mm_and_si128(digit_lanes(v), keep));
                let at = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'@' as i8));
                self.at = _mm_or_si128(self.at, _mm_and_si128(at, keep));
                self.high = _mm_or_si128(self.high, _mm_and_si128(v, keep));
            }
            self.steps += 1;
            if self.steps == 255 {
                self.digits += Self::sum(self.per_lane);
                // SAFETY: as above.
                self.per_lane = unsafe { _mm_setzero_si128() };
                self.steps = 0;
            }
        }

        #[inline(always)]
        fn counts(&self) -> Counts {
            // SAFETY: SSE2 is in the x86-64 baseline; these work on registers only.
            unsafe {
                Counts {
                    digits: self.digits + Self::sum(self.per_lane),
                    at: _mm_movemask_epi8(self.at) != 0,
                    ascii: _mm_movemask_epi8(self.high) == 0,
                }
            }
        }
    }

    /// Lane masks of one 16-byte chunk: digits, bytes that end a run (neither a digit nor
    /// a separator), dashes, pluses.
    #[inline(always)]
    fn classes(v: __m128i) -> [u64; 4] {
        // SAFETY: SSE2 is in the x86-64 baseline; these work on registers only.
        unsafe {
            let is = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
            let (dash, plus) = (is(b'-'), is(b'+'));
            let sep = _mm_or_si128(
                _mm_or_si128(
                    _mm_or_si128(is(b' '), is(b'.')),
                    _mm_or_si128(is(b'('), is(b')')),
                ),
                _mm_or_si128(dash, plus),
            );
            let digit = digit_lanes(v);
            let bits = |m: __m128i| u64::from(_mm_movemask_epi8(m) as u16);
            [
                bits(digit),
                !bits(_mm_or_si128(digit, sep)) & 0xffff,
                bits(dash),
                bits(plus),
            ]
        }
    }

    pub(in super::super) fn digit_runs(b: &[u8]) -> Runs {
        let mut r = Runs::default();
        // Digits of the run still open at the end of the last block; the last block's
        // digit and dash masks (an SSN shape may straddle two blocks).
        let (mut open, mut prev_d, mut prev_h) = (0usize, 0u64, 0u64);
        let mut block = |d: u64, ends: u64, h: u64, p: u64| {
            r.plus |= p != 0;
            // The run before the block's first ending byte continues the open one.
            let first_end = ends.trailing_zeros();
            let below = |n: u32| if n >= 64 { !0u64 } else { (1u64 << n) - 1 };
            let head = open + (d & below(first_end)).count_ones() as usize;
            r.longest = r.longest.max(head);
            if ends == 0 {
                open = head;
            } else {
                // Each later run that holds a digit: from its first digit to the next
                // ending byte.
                let mut rest = d & !below(first_end);
                open = 0;
                while rest != 0 {
                    let from = rest.trailing_zeros();
                    let end = (ends & !below(from)).trailing_zeros();
                    let n = (rest & below(end)).count_ones() as usize;
                    r.longest = r.longest.max(n);
                    if end == 64 {
                        open = n;
                    }
                    rest &= !below(end);
                }
            }
            if !r.ssn_shape {
                // This block above the last one: every 9-byte pattern lies within two.
                let d2 = u128::from(d) << 64 | u128::from(prev_d);
                let h2 = u128::from(h) << 64 | u128::from(prev_h);
                let two = d2 & d2 >> 1;
                let four = two & two >> 2;
                let nine = four & four >> 4 & d2 >> 8;
                r.ssn_shape = nine != 0 || h2 & d2 >> 1 & d2 >> 2 & h2 >> 3 != 0;
            }
            (prev_d, prev_h) = (d, h);
        };
        let (mut m, mut k) = ([0u64; 4], 0);
        for_chunks(b, |v| {
            let c = classes(v);
            for (acc, x) in m.iter_mut().zip(c) {
                *acc |= x << (16 * k);
            }
            k += 1;
            if k == 4 {
                block(m[0], m[1], m[2], m[3]);
                (m, k) = ([0; 4], 0);
            }
        });
        if k > 0 {
            // The lanes past the string hold nothing: no digit to count, no run after.
            block(m[0], m[1], m[2], m[3]);
        }
        r
    }
}

#[cfg(any(test, not(target_arch = "x86_64")))]
pub(super) mod portable {
    use super::{Counts, Runs};

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

    /// 8 bytes at a time.
    pub fn counts(b: &[u8]) -> Counts {
        // The flagged lanes as 0/1 bytes, summed into the top byte by one multiply (at most
        // 8: no carry out), cheaper than a bit count where the target has no `popcnt`.
        let mut c = Counts {
            ascii: true,
            ..Counts::default()
        };
        let mut chunks = b.chunks_exact(8);
        for ch in &mut chunks {
            let w = u64::from_le_bytes(ch.try_into().expect("8 bytes"));
            c.digits += ((digit_lanes(w) >> 7).wrapping_mul(ONES) >> 56) as usize;
            c.at |= has_byte(w, b'@');
            c.ascii &= w & HIGH == 0;
        }
        for &x in chunks.remainder() {
            c.digits += usize::from(x.is_ascii_digit());
            c.at |= x == b'@';
            c.ascii &= x.is_ascii();
        }
        c
    }

    /// Byte by byte, except that prose between numbers (no run open, no digit in sight)
    /// goes 8 bytes a step.
    pub fn digit_runs(b: &[u8]) -> Runs {
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
                    // No run open and none starting: only a `+` matters here, and whether
                    // the word ends in the `-` an SSN's `-dd-` could start with (no run
                    // open means no digit since the last other byte: no `-d` or `-dd`
                    // pending before it).
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_counts(b: &[u8]) -> Counts {
        Counts {
            digits: b.iter().filter(|c| c.is_ascii_digit()).count(),
            at: b.contains(&b'@'),
            ascii: b.is_ascii(),
        }
    }

    #[test]
    fn counts_are_exact_at_every_start_and_end() {
        let all: Vec<u8> = (0..=255u8).collect();
        let long: Vec<u8> = b"0123456789@x".repeat(400); // past 255 steps of 16 bytes
        for s in [
            &all[..],
            b"",
            b"0123456789",
            b"a@b",
            b"\xff9\x80/:@?0",
            "é1ü2名3@🙂4".as_bytes(),
            b"////::::0000@@@@9999",
            &long[..],
        ] {
            // Every start within a step and every end: each tail length over each kind of
            // byte.
            for start in 0..s.len().min(17) {
                for end in (start..=s.len()).filter(|e| s.len() < 300 || e % 97 == 0) {
                    let b = &s[start..end];
                    assert_eq!(counts(b), naive_counts(b), "{b:?}");
                    assert_eq!(portable::counts(b), naive_counts(b), "{b:?}");
                }
            }
        }
        assert_eq!(counts(&long).digits, 4000);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn string_values_are_scanned_and_counted_in_one_pass() {
        // Against a byte loop: where the string ends (or why it cannot be taken), and the
        // counts of its content, for contents of every length up to 50 drawn from digits,
        // '@', letters, non-ASCII bytes, quotes, backslashes and control bytes, at every
        // offset of a text, and with the text ending right after (or inside) the string.
        let alphabet = b"0123456789@aZ \xc3\xa9\"\\\x01";
        let naive = |b: &[u8], from: usize| -> Result<Option<(usize, Counts)>, ()> {
            let end = (from..b.len())
                .find(|&i| matches!(b[i], b'"' | b'\\' | 0..=0x1f))
                .ok_or(())?;
            match b[end] {
                b'"' => Ok(Some((end, naive_counts(&b[from..end])))),
                b'\\' => Ok(None),
                _ => Err(()),
            }
        };
        let mut seed = 0x0123_4567_89ab_cdefu64;
        let mut kinds = [0usize; 3];
        for case in 0..20_000 {
            let len = case % 51;
            let mut text = b"[ ".repeat(case % 17 / 2);
            let from = text.len() + 1;
            text.push(b'"');
            for _ in 0..len {
                crate::masking::tests::xorshift(&mut seed);
                // Mostly plain bytes, so that long strings form.
                let i = if seed % 8 == 0 {
                    (seed >> 8) % 19
                } else {
                    (seed >> 8) % 16
                };
                text.push(alphabet[i as usize]);
            }
            if case % 3 != 0 {
                text.push(b'"');
            }
            text.extend(std::iter::repeat_n(b'x', case % 5));
            let want = naive(&text, from);
            kinds[match want {
                Ok(Some(_)) => 0,
                Ok(None) => 1,
                Err(()) => 2,
            }] += 1;
            assert_eq!(string_counts(&text, from), want, "{text:?}");
        }
        assert!(kinds.iter().all(|&k| k > 1000), "{kinds:?}");
        // Past 255 steps of 16 bytes (where the lanes' counts are summed).
        for tail in ["\"", "@\"", "\u{e9}\""] {
            let text = format!("\"{}{tail}x", "0123456789".repeat(500));
            let want = naive(text.as_bytes(), 1);
            assert_eq!(string_counts(text.as_bytes(), 1), want);
            assert_eq!(want.unwrap().unwrap().1.digits, 5000);
        }
    }

    #[test]
    fn dates_and_utc_times_hold_no_numeric_detector_match() {
        // What the shortcut assumes of every string it takes (runs of 8 digits at most, no
        // `+`), on the shapes it takes, their variants and every one-byte change of them.
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for frac in 0..=9 {
            let f = if frac == 0 {
                String::new()
            } else {
                format!(".{}", &"987654321"[..frac])
            };
            for tail in ["", "Z", "z", "+05:00", "-05:00", " ", "Z ", "Z1", "ZZ"] {
                for t in ["T", " ", "t", "T1"] {
                    cases.push(format!("2015-12-05{t}16:16:24{f}{tail}").into_bytes());
                }
            }
        }
        cases.push(b"2015-12-05".to_vec());
        cases.push(b"2015-12-051".to_vec());
        let base = cases.clone();
        for c in &base {
            for i in 0..c.len() {
                for v in [b'0', b'9', b'-', b'+', b' ', b'.', b'T', b':', b'@', b'a'] {
                    let mut m = c.clone();
                    m[i] = v;
                    cases.push(m);
                }
            }
        }
        let mut taken = 0;
        for c in &cases {
            if super::date_or_utc_time(c) {
                let r = digit_runs(c);
                assert!(r.longest <= 8 && !r.plus && !c.contains(&b'@'), "{c:?}");
                taken += 1;
            }
        }
        assert!(taken > 500, "{taken}");
        for yes in [
            "2015-12-05",
            "2015-12-05T16:16:24Z",
            "2015-12-05T16:16:24.123456",
        ] {
            assert!(super::date_or_utc_time(yes.as_bytes()), "{yes}");
        }
        for no in [
            "2015-12-05 16:16:24", // the space joins the date and the hour: 10 digits
            "2015-12-05T16:16:24.1234567", // a 9-digit run
            "2015-12-05T16:16:24+05:00", // a `+`
            "2015-12-05T16:16:24.Z",
            "2015-12-0",
        ] {
            assert!(!super::date_or_utc_time(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn digit_runs_are_measured_exactly_at_every_alignment() {
        // Against the plain byte loop, on strings of digits, separators, `+`, `@`, letters
        // and non-ASCII bytes, of every length up to 150 (runs across and along 8-, 16-
        // and 64-byte steps).
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
        let (mut longest_seen, mut shapes) = (0, 0);
        for case in 0..30_000 {
            let len = case % 151;
            let mut b = Vec::with_capacity(len);
            for _ in 0..len {
                crate::masking::tests::xorshift(&mut seed);
                // Digits and separators most of the time, so long runs occur; fewer
                // SSN shapes as strings grow longer.
                let i = match (seed >> 4) % 8 {
                    0..=3 => (seed >> 8) % 10,
                    4..=5 => (seed >> 8) % 16,
                    _ => (seed >> 8) % 21,
                };
                b.push(alphabet[i as usize]);
            }
            let want = naive(&b);
            longest_seen = longest_seen.max(want.longest);
            shapes += usize::from(want.ssn_shape);
            assert_eq!(digit_runs(&b), want, "{b:?}");
            assert_eq!(portable::digit_runs(&b), want, "{b:?}");
        }
        assert!(longest_seen >= 40, "{longest_seen}");
        assert!((1000..29_000).contains(&shapes), "{shapes}");
        for (s, longest) in [
            // A run that separators only continue, and one a letter ends.
            (&b"1234  ..  --  ()  5678"[..], 8),
            (b"1234  ..  --  x)  5678", 4),
            // Runs across 16- and 64-byte steps.
            (&[b"x".repeat(60), b"12345678".to_vec()].concat(), 8),
            (&[b"x".repeat(60), b"1234-5678-".repeat(5)].concat(), 40),
            (
                &[
                    b"x".repeat(62),
                    b"1-2-3".to_vec(),
                    b"x".repeat(70),
                    b"4".to_vec(),
                ]
                .concat(),
                3,
            ),
        ] {
            assert_eq!(digit_runs(s).longest, longest, "{s:?}");
        }
        let r = digit_runs(b"prose prose prose +1");
        assert_eq!((r.longest, r.plus), (1, true));
        // `-dd-` and nine in a row across 8-, 16- and 64-byte steps.
        assert!(digit_runs(b"abcdefg-12-").ssn_shape);
        assert!(digit_runs(b"prose, prose, pro-12-3456").ssn_shape);
        assert!(digit_runs(&[b"x".repeat(61), b"-12-".to_vec()].concat()).ssn_shape);
        assert!(digit_runs(&[b"x".repeat(59), b"123456789".to_vec()].concat()).ssn_shape);
        assert!(!digit_runs(&[b"x".repeat(59), b"1234 56789".to_vec()].concat()).ssn_shape);
        assert!(!digit_runs(b"call 915-693-8231 after 5pm").ssn_shape);
    }
}
