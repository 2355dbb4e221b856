//! Streaming masker: the common case (fast paths, `key` rules and detectors; no slow-path
//! rule) masks in one pass over the bytes, without building a `serde_json::Value` of the
//! document. Output is copied lazily: the input is owed to the output from `copied` on, and
//! is only copied when something differs (whitespace dropped, a value masked, a number or
//! escape normalised), so compact unmasked stretches cost one copy. Selected values are
//! transformed straight from the text (containers only validated and skipped: every action
//! replaces them whole). Fast rules are stepped as one DFA (`dfa`). The records of a list
//! repeat their members: each object shape (depth and DFA state) remembers, by position, the
//! last member's name as written (`"name":`), its DFA child state and the rule selecting its
//! value, so a member written as before is recognised by one compare of those bytes.
//!
//! The output is byte-for-byte what the tree walk in `engine` produces (compact serde_json,
//! numbers and escapes normalised the same way). Whatever would need the whole tree or could
//! differ — duplicate member names, escaped member names, negative index selectors, invalid
//! JSON, nesting near the limits — makes this pass give up (`None`), and the caller masks
//! with the tree walk, which also produces the exact error.

use super::actions::{Action, Outer, StrResult, TOKEN_B64_LEN};
use super::dfa::{name_hash, same, Dfa};
use super::path::{plain_name, push_index, push_name};
use super::{FieldSet, MaskReport};
use serde_json::Value;
use std::collections::HashSet;

/// serde_json's recursion limit, minus a margin: deeper documents take the tree walk.
const MAX_STREAM_DEPTH: usize = 120;
/// Objects up to this many members are checked for duplicate names by a bloom filter and a
/// linear scan on its hits; larger ones by a hash set.
const LINEAR_DUP_CHECK: usize = 24;

/// Whether this set can be masked by the streaming pass at all.
pub(super) fn supported(set: &FieldSet) -> bool {
    set.slow.is_empty() && set.dfa.is_some()
}

struct Bail;

type R<T> = Result<T, Bail>;

#[derive(Clone, Copy)]
enum PStep<'a> {
    /// The document itself (no step).
    Root,
    /// A member name, and whether it is written as it is in a normalized path (no `'`,
    /// `\\` or control character to escape: known when the name is first resolved).
    Key(&'a str, bool),
    Index(usize),
}

/// Member names seen so far in one open object.
#[derive(Default)]
struct Names<'a> {
    list: Vec<&'a [u8]>,
    /// Bit `name_hash >> 58` of every name in `list`: most new names miss it, and skip
    /// the comparisons.
    bloom: u64,
    /// All names, once `list` outgrew `LINEAR_DUP_CHECK`.
    set: HashSet<&'a [u8]>,
    /// The last objects at this depth, one per DFA state (a record's `name` and `address`
    /// objects sit at the same depth in different states, and would otherwise evict each
    /// other). Kept across objects (`list` is not).
    shapes: [Shape<'a>; SHAPES],
    /// The shape replaced next when a new state comes.
    evict: usize,
}

/// Shapes remembered per depth.
const SHAPES: usize = 4;
const NO_STATE: u32 = u32::MAX;

/// The last object finished (or open) at one depth in one DFA state.
struct Shape<'a> {
    state: u32,
    /// What the member at each position resolved to: the records of a list share their
    /// shape, so a name equal to the one at the same position before skips the hash, the
    /// DFA class lookup and the key-rule memo.
    pred: Vec<Pred<'a>>,
    /// `pred[..distinct]` are the names of the last object finished in this shape, in
    /// order (so pairwise different: it passed the duplicate check). An object whose names
    /// equal them position by position has no duplicates among those, and skips the check.
    /// Objects at one depth never nest, so nothing else changes `pred` while one is open.
    distinct: usize,
}

impl Default for Shape<'_> {
    fn default() -> Self {
        Shape {
            state: NO_STATE,
            pred: Vec::new(),
            distinct: 0,
        }
    }
}

impl Names<'_> {
    /// The shape of state `state`, made (replacing the oldest) when there is none.
    #[inline]
    fn shape_for(&mut self, state: u32) -> usize {
        if let Some(i) = self.shapes.iter().position(|sh| sh.state == state) {
            return i;
        }
        let i = self.evict;
        self.evict = (i + 1) % SHAPES;
        let sh = &mut self.shapes[i];
        sh.state = state;
        sh.pred.clear();
        sh.distinct = 0;
        i
    }
}

/// One member's name resolved in the DFA state of its shape (pure functions of the two).
#[derive(Clone, Copy)]
struct Pred<'a> {
    name: &'a str,
    /// The name as it was written, quotes and colon included (`"name":`), when nothing
    /// stood between them: the next record's member is recognised by comparing these bytes,
    /// without scanning its name. Empty when there was whitespace.
    head: &'a [u8],
    child: u32,
    h: u64,
    /// The rule selecting the member's value (`winner(child, key_bits)`).
    win: Option<u32>,
    /// `name` needs no escape in a normalized path (see `PStep::Key`).
    plain: bool,
    /// The comma and `head` (`,"name":`) when they fit 16 bytes: `replay` compares them
    /// as two words.
    sep_head: SepHead,
}

/// Up to 16 bytes as two little-endian words, and which of their bytes count (no bytes
/// count when the head is empty or too long: never equal then).
#[derive(Clone, Copy, Default)]
struct SepHead {
    w: [u64; 2],
    mask: [u64; 2],
}

impl SepHead {
    fn new(head: &[u8]) -> SepHead {
        let mut bytes = [0u8; 16];
        let n = head.len() + 1;
        if head.is_empty() || n > 16 {
            return SepHead::default();
        }
        bytes[0] = b',';
        bytes[1..n].copy_from_slice(head);
        let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let mask = |lane: usize| match n.saturating_sub(lane * 8) {
            0 => 0,
            k if k >= 8 => u64::MAX,
            k => (1u64 << (k * 8)) - 1,
        };
        SepHead {
            w: [word(0), word(8)],
            mask: [mask(0), mask(1)],
        }
    }

    /// Whether `at` (16 bytes) starts with these bytes.
    #[inline(always)]
    fn matches(&self, at: &[u8; 16]) -> bool {
        let lo = u64::from_le_bytes(at[..8].try_into().expect("8 bytes"));
        let hi = u64::from_le_bytes(at[8..].try_into().expect("8 bytes"));
        self.mask[0] != 0
            && ((lo ^ self.w[0]) & self.mask[0]) | ((hi ^ self.w[1]) & self.mask[1]) == 0
    }
}

/// Where `Stream::replay` left an object.
enum Replay {
    /// Every member was as remembered, and the object is closed.
    Closed,
    /// Members read, and of those kept; the member loop goes on from there (from its
    /// separator when `pos` > 0).
    Stopped { pos: usize, written: usize },
}

/// Member positions remembered per depth (records rarely have more members).
const MAX_PRED: usize = 64;

/// Per document: key-rule matches by member name (records repeat the same names, and a
/// regex match costs more than a lookup).
struct KeyMemo<'a> {
    slots: Vec<Option<(u64, &'a [u8], u64)>>,
    used: usize,
    /// The most slots this document's size calls for.
    cap: usize,
}

impl<'a> KeyMemo<'a> {
    /// Slots to start with: most documents repeat a few dozen names. Sized for the
    /// document up front instead, a 64 KB one cleared 128 KB per request (1.4% of a masked
    /// request's CPU in `perf`).
    const FIRST: usize = 32;

    /// No slots when there are no key rules (nothing to remember).
    fn new(text_len: usize, key_rules: bool) -> Self {
        // About one distinct name per 32 bytes at most; kept at most half full.
        let cap = (text_len / 16).next_power_of_two().clamp(Self::FIRST, 4096);
        KeyMemo {
            slots: vec![None; if key_rules { Self::FIRST } else { 0 }],
            used: 0,
            cap,
        }
    }

    /// Remembers a name's bits if a slot is free within the probes; doubles the table
    /// (up to `cap`) rather than fill it past half.
    fn insert(&mut self, h: u64, k: &'a [u8], bits: u64) {
        if self.used * 2 >= self.slots.len() {
            if self.slots.len() >= self.cap {
                return;
            }
            let doubled = vec![None; self.slots.len() * 2];
            let old = std::mem::replace(&mut self.slots, doubled);
            self.used = 0;
            for (h, k, bits) in old.into_iter().flatten() {
                self.insert(h, k, bits);
            }
        }
        let mask = self.slots.len() - 1;
        let mut j = h as usize & mask;
        for _ in 0..MEMO_PROBES {
            if self.slots[j].is_none() {
                self.slots[j] = Some((h, k, bits));
                self.used += 1;
                return;
            }
            j = (j + 1) & mask;
        }
    }
}

struct Stream<'s, 'r, 'a> {
    set: &'s FieldSet,
    dfa: &'s Dfa,
    report: &'r mut MaskReport,
    text: &'a str,
    b: &'a [u8],
    i: usize,
    /// `b[copied..i]` is owed to `out` verbatim.
    copied: usize,
    out: Vec<u8>,
    /// The steps to the open containers (each pushed when its first member or element is
    /// entered), then `last`: the current member or element. Scalars, most values, only
    /// overwrite `last` (no push and pop per value).
    path: Vec<PStep<'a>>,
    last: PStep<'a>,
    /// `path[..rendered]` rendered ("$['a'][0]"), and where each step's rendering ends:
    /// a step is rendered once, when a masked node below it is first noted, and stays
    /// until it is popped (a record's masked members share it; only their own step is
    /// rendered per note).
    prefix: String,
    prefix_ends: Vec<usize>,
    rendered: usize,
    names: Vec<Names<'a>>,
    memo: KeyMemo<'a>,
    /// Results of value transforms (reused: no allocation per masked field).
    buf: String,
    /// The last pseudonym written, still a placeholder: where its tag goes in `out`, and
    /// its outer block, hashed beside the next value's inner one (`Pseudonymizer::pipelined`).
    pending: Option<(usize, Outer)>,
    detect: bool,
    /// The whole text is ASCII (checked as it arrived): no value needs its own check.
    ascii: bool,
    max_depth: usize,
}

/// Probes of the key-rule memo before a lookup gives up on it.
const MEMO_PROBES: usize = 8;

/// Appends the first `len` (at most 16) bytes of `pad` as one 16-byte move.
#[inline(always)]
fn put16(out: &mut Vec<u8>, pad: &[u8; 16], len: usize) {
    debug_assert!(len <= 16);
    out.reserve(16);
    let at = out.len();
    // SAFETY: 16 bytes of spare room at `at` (reserved), and `len` <= 16 of them written.
    unsafe {
        std::ptr::copy_nonoverlapping(pad.as_ptr(), out.as_mut_ptr().add(at), 16);
        out.set_len(at + len.min(16));
    }
}

/// Masks `text` (already checked to be UTF-8 without a BOM; `ascii`: known to be all
/// ASCII). `None`: use the tree walk.
pub(super) fn mask(
    set: &FieldSet,
    text: &str,
    ascii: bool,
    max_depth: usize,
    report: &mut MaskReport,
) -> Option<Vec<u8>> {
    let dfa = set.dfa.as_ref()?;
    let mut s = Stream {
        set,
        dfa,
        report,
        text,
        b: text.as_bytes(),
        i: 0,
        copied: 0,
        // Masked values may be longer than the originals (pseudonyms): leave some room.
        out: Vec::with_capacity(text.len() + text.len() / 8 + 16),
        path: Vec::with_capacity(16),
        last: PStep::Root,
        prefix: String::from("$"),
        prefix_ends: vec![1],
        rendered: 0,
        names: Vec::new(),
        memo: KeyMemo::new(text.len(), !set.keys.is_empty()),
        buf: String::new(),
        pending: None,
        detect: !set.detectors.is_empty(),
        ascii,
        max_depth: max_depth.min(MAX_STREAM_DEPTH),
    };
    s.ws();
    let removed = s.value(s.winner(Dfa::START, 0), Dfa::START, 0).ok()?;
    if removed {
        // Removing the root is impossible; it becomes null (as the tree walk does).
        s.out.clear();
        s.pending = None;
        s.out.extend_from_slice(b"null");
        s.copied = s.i;
    }
    s.ws();
    s.flush_to(s.i);
    s.finish_pseudonym();
    (s.i == s.b.len()).then_some(s.out)
}

/// Bytes 0x80 in each lane of `w` where the byte is '"', '\\' or a control character; the
/// lowest flagged lane is exact (borrows only create false flags above a true one).
#[inline]
fn special_lanes(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    zero(w ^ (ONES * u64::from(b'"')))
        | zero(w ^ (ONES * u64::from(b'\\')))
        | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
}

/// Bit masks of the '"', '\\' and control bytes of `chunk` (bit i: byte i), and of its
/// quotes alone. SSE2 (part of every x86-64) finds them in one compare each.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn specials16(chunk: &[u8; 16]) -> (u32, u32) {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of the x86-64 baseline, so these intrinsics are always
    // available; the load reads exactly the 16 bytes of `chunk` and needs no alignment.
    unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Unsigned v <= 0x1f exactly when max(v, 0x1f) == 0x1f.
        let limit = _mm_set1_epi8(0x1f);
        let control = _mm_cmpeq_epi8(_mm_max_epu8(v, limit), limit);
        (
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32,
            _mm_movemask_epi8(quote) as u32,
        )
    }
}

/// Offset of the first '"', '\\' or control character in `chunk`, if any (a string's scan
/// used to take two SWAR words to see that it ends in this chunk and a third to find where).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn first_special16(chunk: &[u8; 16]) -> Option<usize> {
    let (bits, _) = specials16(chunk);
    (bits != 0).then(|| bits.trailing_zeros() as usize)
}

#[cfg(not(target_arch = "x86_64"))]
use first_special16_swar as first_special16;

/// Whether a string starting (after its quote) at `s[0]` ends within its first 16 bytes
/// with nothing to unescape: then its closing quote's offset. One compare for the common
/// short name or value, and no reload of the byte found to see that it is the quote.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn plain_end16(s: &[u8]) -> Option<usize> {
    let (special, quote) = specials16(s.get(..16)?.try_into().ok()?);
    // The lowest special byte is a quote.
    (special & special.wrapping_neg() & quote != 0).then(|| special.trailing_zeros() as usize)
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn plain_end16(_: &[u8]) -> Option<usize> {
    None
}

/// Portable form of the above: two SWAR words.
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn first_special16_swar(chunk: &[u8; 16]) -> Option<usize> {
    let lo = special_lanes(u64::from_le_bytes(chunk[..8].try_into().expect("8 bytes")));
    if lo != 0 {
        return Some((lo.trailing_zeros() / 8) as usize);
    }
    let hi = special_lanes(u64::from_le_bytes(chunk[8..].try_into().expect("8 bytes")));
    (hi != 0).then(|| 8 + (hi.trailing_zeros() / 8) as usize)
}

/// Offset of the first '"', '\\' or control character in `s`: 16 bytes per step, then 8,
/// then single bytes (long free-text values are most of a patient record's bytes, and most
/// names and short values end within the first 16).
#[inline(always)]
fn first_special(s: &[u8]) -> Option<usize> {
    let mut j = 0;
    while let Some(chunk) = s.get(j..j + 16) {
        if let Some(at) = first_special16(chunk.try_into().expect("16 bytes")) {
            return Some(j + at);
        }
        j += 16;
    }
    while let Some(chunk) = s.get(j..j + 8) {
        let lanes = special_lanes(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        if lanes != 0 {
            return Some(j + (lanes.trailing_zeros() / 8) as usize);
        }
        j += 8;
    }
    s[j..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|at| j + at)
}

/// Whether serde_json escapes anything in `s` (it escapes only '"', '\\' and controls).
#[inline]
pub(crate) fn needs_escape(s: &[u8]) -> bool {
    first_special(s).is_some()
}

/// Writes `s` as a JSON string exactly as serde_json does.
fn write_json_str(out: &mut Vec<u8>, s: &str) -> R<()> {
    if needs_escape(s.as_bytes()) {
        return serde_json::to_writer(out, s).map_err(|_| Bail);
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
}

/// Where a member or element starts, to drop it again if it is removed: the output length
/// and `copied` then, and the input position up to which the text before it is owed (its
/// leading comma excluded).
#[derive(Clone, Copy)]
struct Mark {
    out: usize,
    copied: usize,
    cut: usize,
}

impl<'a> Stream<'_, '_, 'a> {
    /// Copies the owed input up to `end`.
    #[inline]
    fn flush_to(&mut self, end: usize) {
        self.out.extend_from_slice(&self.b[self.copied..end]);
        self.copied = end;
    }

    /// Skips whitespace, which compact output drops.
    // Called several times per member and usually finds none: only the test is inlined.
    #[inline(always)]
    fn ws(&mut self) {
        if let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.drop_ws();
        }
    }

    #[cold]
    #[inline(never)]
    fn drop_ws(&mut self) {
        self.flush_to(self.i);
        self.skip_ws();
        self.copied = self.i;
    }

    /// Skips whitespace inside a value that is not copied.
    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> R<u8> {
        self.b.get(self.i).copied().ok_or(Bail)
    }

    #[inline]
    fn mark(&self, cut: usize) -> Mark {
        Mark {
            out: self.out.len(),
            copied: self.copied,
            cut,
        }
    }

    /// Drops the member / element begun at `m` (everything up to `self.i`).
    fn drop_since(&mut self, m: &Mark) {
        // A removed value is never walked, so no pseudonym lies in it; were one there, its
        // tag must not be written over what comes next.
        if self.pending.is_some_and(|(at, _)| at >= m.out) {
            self.pending = None;
        }
        self.out.truncate(m.out);
        self.copied = m.copied;
        self.flush_to(m.cut);
        self.copied = self.i;
    }

    /// After a member / element: its separator, and in `m` the mark of the next one. Returns
    /// false at the end of the container. `written`: members kept so far.
    // Updates `m` in place: returning the mark by value cost a store-forwarding stall per
    // member.
    #[inline(always)]
    fn separator(&mut self, close: u8, written: usize, m: &mut Mark) -> R<bool> {
        match self.peek()? {
            b',' => {
                if written == 0 {
                    // Everything before was removed: so is this comma.
                    self.flush_to(self.i);
                    self.i += 1;
                    self.copied = self.i;
                    self.ws();
                    m.cut = self.i;
                    m.out = self.out.len();
                    m.copied = self.copied;
                } else {
                    // The comma goes with the next member (whitespace after it is dropped
                    // where the member or element begins).
                    m.cut = self.i;
                    m.out = self.out.len();
                    m.copied = self.copied;
                    self.i += 1;
                }
                Ok(true)
            }
            c if c == close => {
                self.i += 1;
                Ok(false)
            }
            b' ' | b'\t' | b'\n' | b'\r' => self.separator_after_ws(close, written, m),
            _ => Err(Bail),
        }
    }

    #[cold]
    #[inline(never)]
    fn separator_after_ws(&mut self, close: u8, written: usize, m: &mut Mark) -> R<bool> {
        self.drop_ws();
        self.separator(close, written, m)
    }

    #[inline]
    fn note_masked(&mut self) {
        if self.report.paths.len() >= MaskReport::MAX_PATHS {
            // Past the cap only the count (and `truncated`) change: no path to render.
            self.report.note_past_cap();
            return;
        }
        self.render_note();
    }

    #[inline(never)]
    fn render_note(&mut self) {
        fn push_step(s: &mut String, st: PStep<'_>) {
            match st {
                PStep::Root => {}
                PStep::Key(k, true) => {
                    s.push_str("['");
                    s.push_str(k);
                    s.push_str("']");
                }
                PStep::Key(k, false) => push_name(s, k),
                PStep::Index(i) => push_index(s, i),
            }
        }
        if self.rendered < self.path.len() {
            self.prefix.truncate(self.prefix_ends[self.rendered]);
            self.prefix_ends.truncate(self.rendered + 1);
            for &st in &self.path[self.rendered..] {
                push_step(&mut self.prefix, st);
                self.prefix_ends.push(self.prefix.len());
            }
            self.rendered = self.path.len();
        }
        // Steps popped since are still rendered past `path.len()`'s end.
        let (prefix, last) = (&self.prefix[..self.prefix_ends[self.path.len()]], self.last);
        self.report.note(|s| {
            s.push_str(prefix);
            push_step(s, last);
        });
    }

    /// The rule selecting a node in DFA state `state` whose member name matched the key
    /// rules `key_bits`: the lowest (rank, is_key_rule, file position), as `Walker::winner`.
    #[inline]
    fn winner(&self, state: u32, key_bits: u64) -> Option<u32> {
        let fast = self.dfa.win(state);
        if key_bits == 0 {
            return fast.map(|(_, _, rule)| rule);
        }
        let mut best = fast.map(|(rank, pos, rule)| (rank, false, pos, rule));
        let mut bits = key_bits;
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let rule = self.set.keys[b].rule;
            let a = &self.set.rules[rule as usize];
            let cand = (a.action.rank(), true, a.position, rule);
            if best.is_none_or(|b| cand < b) {
                best = Some(cand);
            }
        }
        best.map(|(_, _, _, rule)| rule)
    }

    /// Key-rule matches of member name `k` (`h` = its `name_hash`), memoized per document.
    #[inline]
    fn key_bits(&mut self, k: &'a [u8], h: u64) -> R<u64> {
        let slots = &self.memo.slots;
        let mask = slots.len() - 1;
        let mut j = h as usize & mask;
        let mut free = false;
        // The hash is not keyed: names crafted to collide could make long probe chains, so
        // a lookup gives up after a few probes (the regexes are then run uncached).
        for _ in 0..MEMO_PROBES {
            match slots[j] {
                Some((eh, n, bits)) if eh == h && same(n, k) => return Ok(bits),
                Some(_) => j = (j + 1) & mask,
                None => {
                    free = true;
                    break;
                }
            }
        }
        // Names are slices of the UTF-8 text between two quotes: this cannot fail.
        let bits = self
            .set
            .key_rule_bits(std::str::from_utf8(k).map_err(|_| Bail)?);
        if free {
            self.memo.insert(h, k, bits);
        }
        Ok(bits)
    }

    /// One value in DFA state `state`, which rule `win` selects (`winner` of the state and
    /// the member name's key rules). Returns true when it must be removed from its parent
    /// (nothing was written or flushed for it then).
    // Inlined into the member / element loops: most values are unselected scalars, and a
    // call per value was a measurable share.
    #[inline(always)]
    // Whitespace before the value (after a colon or a comma) is found here, by the
    // dispatch on its first byte that happens anyway, not by a separate test per value.
    fn value(&mut self, win: Option<u32>, state: u32, depth: usize) -> R<bool> {
        if let Some(rule) = win {
            self.ws();
            return self.selected(rule, depth);
        }
        match self.peek()? {
            b' ' | b'\t' | b'\n' | b'\r' => return self.value_after_ws(state, depth),
            b'{' => self.object(state, depth)?,
            b'[' => self.array(state, depth)?,
            b'"' if !self.detect => {
                let (start, _, escaped) = self.scan_string()?;
                if escaped {
                    self.escaped_string(start)?;
                }
            }
            b'"' => self.string()?,
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            b'1'..=b'9' if self.short_integer() => {}
            _ => self.number()?,
        }
        Ok(false)
    }

    /// A positive integer of at most 7 digits at `self.i` (ids, counts: most numbers of a
    /// record), which serde_json writes back as it is: skipped in one 8-byte step. False
    /// (nothing consumed) for anything else, which `number` then reads.
    #[inline(always)]
    fn short_integer(&mut self) -> bool {
        let Some(w) = self.b.get(self.i..self.i + 8) else {
            return false;
        };
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        // Per byte: 0x33 exactly for '0'..='9' (simdjson's eight-digit test). A carry out
        // of `+ 6` only reaches later bytes, so the first non-digit is found exactly.
        const HI: u64 = 0xF0F0_F0F0_F0F0_F0F0;
        let t = (w & HI) | (((w.wrapping_add(0x0606_0606_0606_0606)) & HI) >> 4);
        let n = ((t ^ 0x3333_3333_3333_3333).trailing_zeros() / 8) as usize;
        if n == 8 {
            return false;
        }
        // A fraction or an exponent follows: not an integer.
        if let b'.' | b'e' | b'E' = self.b[self.i + n] {
            return false;
        }
        self.i += n;
        true
    }

    /// An unselected value preceded by whitespace.
    #[cold]
    #[inline(never)]
    fn value_after_ws(&mut self, state: u32, depth: usize) -> R<bool> {
        self.drop_ws();
        self.value(None, state, depth)
    }

    /// Replaces the input `start..self.i` by what `write` writes.
    #[inline]
    fn replace(&mut self, start: usize, write: impl FnOnce(&mut Vec<u8>) -> R<()>) -> R<bool> {
        self.flush_to(start);
        write(&mut self.out)?;
        self.copied = self.i;
        Ok(false)
    }

    /// A node some rule selects. Its two common cases here, in a small function: a plain
    /// string that a constant replaces (`redact`), or that the action writes straight to
    /// the output (`write_str_direct`); the rest in `selected_other`.
    #[inline(never)]
    fn selected(&mut self, rule: u32, depth: usize) -> R<bool> {
        let info = &self.set.rules[rule as usize];
        let start = self.i;
        if self.b.get(start) == Some(&b'"') {
            let (_, end, escaped) = self.scan_string()?;
            if !escaped {
                // Flushing up to the string is right whatever comes: a kept string stays
                // owed from `start`.
                self.flush_to(start);
                if let Some(c) = info.constant.as_deref() {
                    match &info.constant16 {
                        Some(pad) => put16(&mut self.out, pad, c.len()),
                        None => self.out.extend_from_slice(c),
                    }
                    self.copied = self.i;
                    self.note_masked();
                    return Ok(false);
                }
                let (s0, s1) = (start + 1, end - 1);
                if matches!(info.action, Action::Pseudonymize) && self.pseudonym(s0, s1) {
                    self.copied = self.i;
                    self.note_masked();
                    return Ok(false);
                }
                let direct = match info.direct_mask {
                    // A `mask` writes an ASCII string itself (a body known to be ASCII needs
                    // no look at each value); any other string goes to `selected_other`,
                    // as `write_str_direct` would send it.
                    Some(dm) => (self.ascii || self.b[s0..s1].is_ascii())
                        .then(|| dm.write(self.b, s0, s1, &mut self.out)),
                    None => info
                        .action
                        .write_str_direct(&self.text[s0..s1], &mut self.out),
                };
                if let Some(written) = direct {
                    if written {
                        self.copied = self.i;
                    }
                    self.note_masked();
                    return Ok(false);
                }
            }
            // Read again there (a string is short next to what the other cases cost).
            self.i = start;
        }
        self.selected_other(rule, depth)
    }

    /// A plain string's pseudonym (the output flushed up to it), written with a placeholder
    /// tag that the next pseudonym's hashing (or the document's end) fills in. False: not
    /// this way (no key, an existing token or `[REDACTED]` left as is); `selected_other`
    /// then does what `apply_str` says.
    #[inline]
    fn pseudonym(&mut self, s0: usize, s1: usize) -> bool {
        let Some(p) = self.set.pseudonymizer.as_deref() else {
            return false;
        };
        let v = &self.text[s0..s1];
        if v == super::REDACTED || p.is_token(v) {
            return false;
        }
        let (outer, earlier) = p.pipelined(v.as_bytes(), self.pending.as_ref().map(|x| &x.1));
        if let (Some(tag), Some((at, _))) = (earlier, self.pending) {
            self.out[at..at + TOKEN_B64_LEN].copy_from_slice(&tag);
        }
        self.out.push(b'"');
        self.out.extend_from_slice(p.token_head());
        let at = self.out.len();
        self.out.extend_from_slice(&[b'_'; TOKEN_B64_LEN]);
        self.out.push(b'"');
        self.pending = Some((at, outer));
        true
    }

    /// Fills in the last placeholder tag.
    fn finish_pseudonym(&mut self) {
        if let Some((at, outer)) = self.pending.take() {
            let p = self
                .set
                .pseudonymizer
                .as_deref()
                .expect("pending only with a key");
            self.out[at..at + TOKEN_B64_LEN].copy_from_slice(&p.outer_tag(&outer));
        }
    }

    /// `selected` for everything but its two common cases: scalars are transformed
    /// straight from the text, containers validated and skipped (every action replaces
    /// them whole).
    #[inline(never)]
    fn selected_other(&mut self, rule: u32, depth: usize) -> R<bool> {
        let set = self.set;
        let info = &set.rules[rule as usize];
        let start = self.i;
        if let Some(c) = info.constant.as_deref() {
            // Whatever the node is, it becomes `c`: only validated and skipped (a string,
            // the usual case, by the inlined scan).
            if self.peek()? == b'"' {
                self.skip_string()?;
            } else {
                self.skip(self.max_depth - depth)?;
            }
            self.note_masked();
            self.flush_to(start);
            self.out.extend_from_slice(c);
            self.copied = self.i;
            return Ok(false);
        }
        let action = &info.action;
        let ps = set.pseudonymizer.as_deref();
        match self.peek()? {
            b'"' => {
                let (_, end, escaped) = self.scan_string()?;
                let decoded: Option<String> = if escaped {
                    Some(serde_json::from_str(&self.text[start..end]).map_err(|_| Bail)?)
                } else {
                    None
                };
                self.note_masked();
                let s: &str = decoded.as_deref().unwrap_or(&self.text[start + 1..end - 1]);
                let mut buf = std::mem::take(&mut self.buf);
                let res = action.apply_str(s, ps, &mut buf);
                let r = match res {
                    StrResult::Keep if !escaped => Ok(false),
                    StrResult::Keep => self.replace(start, |o| write_json_str(o, s)),
                    res => self.write_result(start, res),
                };
                self.buf = buf;
                r
            }
            b'{' | b'[' => {
                // The replaced subtree is not walked; its depth still counts against the limit.
                self.skip(self.max_depth - depth)?;
                self.note_masked();
                self.write_result(start, action.apply_container())
            }
            c => {
                let mut v = match c {
                    b't' => self.skip_literal(b"true", Value::Bool(true))?,
                    b'f' => self.skip_literal(b"false", Value::Bool(false))?,
                    b'n' => self.skip_literal(b"null", Value::Null)?,
                    _ => {
                        let (_, end, _) = self.scan_number()?;
                        self.i = end;
                        serde_json::from_str(&self.text[start..end]).map_err(|_| Bail)?
                    }
                };
                self.note_masked();
                if action.apply(&mut v, ps) {
                    return Ok(true);
                }
                self.replace(start, |o| serde_json::to_writer(o, &v).map_err(|_| Bail))
            }
        }
    }

    /// Writes an action's result in place of the input `start..self.i`; true: remove it.
    fn write_result(&mut self, start: usize, res: StrResult<'_>) -> R<bool> {
        match res {
            StrResult::Remove => Ok(true),
            // Only strings can be kept; callers handle that.
            StrResult::Keep => Err(Bail),
            StrResult::Null => self.replace(start, |o| {
                o.extend_from_slice(b"null");
                Ok(())
            }),
            StrResult::Json(r) => {
                self.replace(start, |o| serde_json::to_writer(o, r).map_err(|_| Bail))
            }
            StrResult::Str(t) => self.replace(start, |o| write_json_str(o, &t)),
        }
    }

    /// Validates and skips one value that is not copied (a selected container) exactly as
    /// strictly as serde_json parses it; at most `limit` levels of containers.
    fn skip(&mut self, limit: usize) -> R<()> {
        let close = match self.peek()? {
            b'{' => b'}',
            b'[' => b']',
            b'"' => return self.skip_string(),
            b't' => return self.skip_literal(b"true", Value::Null).map(|_| ()),
            b'f' => return self.skip_literal(b"false", Value::Null).map(|_| ()),
            b'n' => return self.skip_literal(b"null", Value::Null).map(|_| ()),
            _ => {
                let (start, end, simple) = self.scan_number()?;
                if !simple {
                    // Out-of-range numbers (1e400) are errors.
                    serde_json::from_str::<Value>(&self.text[start..end]).map_err(|_| Bail)?;
                }
                self.i = end;
                return Ok(());
            }
        };
        if limit == 0 {
            return Err(Bail);
        }
        self.i += 1;
        self.skip_ws();
        if self.peek()? == close {
            self.i += 1;
            return Ok(());
        }
        loop {
            if close == b'}' {
                if self.peek()? != b'"' {
                    return Err(Bail);
                }
                self.skip_string()?;
                self.skip_ws();
                if self.peek()? != b':' {
                    return Err(Bail);
                }
                self.i += 1;
                self.skip_ws();
            }
            self.skip(limit - 1)?;
            self.skip_ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.skip_ws();
                }
                c if c == close => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Bail),
            }
        }
    }

    #[inline(always)]
    fn skip_string(&mut self) -> R<()> {
        let (start, end, escaped) = self.scan_string()?;
        if escaped {
            self.check_escapes(start, end)?;
        }
        Ok(())
    }

    /// Escapes must be valid (\u surrogates paired), as serde_json checks them.
    #[cold]
    fn check_escapes(&self, start: usize, end: usize) -> R<()> {
        serde_json::from_str::<String>(&self.text[start..end])
            .map(|_| ())
            .map_err(|_| Bail)
    }

    fn skip_literal(&mut self, lit: &[u8], v: Value) -> R<Value> {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(v)
        } else {
            Err(Bail)
        }
    }

    #[inline]
    fn literal(&mut self, lit: &[u8]) -> R<()> {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(Bail)
        }
    }

    /// Scans a string token; returns its span (with quotes) and whether it has escapes.
    #[inline(always)]
    fn scan_string(&mut self) -> R<(usize, usize, bool)> {
        let b = self.b;
        let start = self.i;
        let mut j = start + 1;
        if let Some(at) = b.get(j..).and_then(plain_end16) {
            self.i = j + at + 1;
            return Ok((start, j + at + 1, false));
        }
        let mut escaped = false;
        loop {
            // An unterminated string is invalid JSON (`j` may be past the end after an
            // escape's backslash in the last byte).
            j += b.get(j..).and_then(first_special).ok_or(Bail)?;
            match b[j] {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    j += 2;
                }
                // A raw control character inside a string.
                _ => return Err(Bail),
            }
        }
        self.i = j + 1;
        Ok((start, j + 1, escaped))
    }

    /// An unselected string with escapes (scanned up to `self.i`), without detectors:
    /// re-escaped as serde does.
    #[inline(never)]
    fn escaped_string(&mut self, start: usize) -> R<()> {
        let s: String = serde_json::from_str(&self.text[start..self.i]).map_err(|_| Bail)?;
        self.replace(start, |o| write_json_str(o, &s)).map(|_| ())
    }

    /// An unselected string: the detector backstop, then copied (or re-escaped as serde does).
    #[inline(never)]
    fn string(&mut self) -> R<()> {
        #[cfg(target_arch = "x86_64")]
        if self.detect {
            // Scanned and counted for the detectors at once: most strings are refused on the
            // counts without a call.
            let start = self.i;
            if let Some((quote, c)) =
                super::measure::string_counts(self.b, start + 1).map_err(|()| Bail)?
            {
                self.i = quote + 1;
                if self.set.detectors.refuses(&c) {
                    return Ok(());
                }
                return self.detect_in(start, quote + 1, false, Some(c));
            }
        }
        let (start, end, escaped) = self.scan_string()?;
        if !escaped && !self.detect {
            return Ok(());
        }
        self.detect_in(start, end, escaped, None)
    }

    /// The detectors on the string at `start..end` (with its quotes; `c`: its counts, when
    /// taken), then the string copied or re-escaped.
    fn detect_in(
        &mut self,
        start: usize,
        end: usize,
        escaped: bool,
        c: Option<super::detect::Counts>,
    ) -> R<()> {
        let decoded: String;
        let s: &str = if escaped {
            decoded = serde_json::from_str(&self.text[start..end]).map_err(|_| Bail)?;
            &decoded
        } else {
            &self.text[start + 1..end - 1]
        };
        let set = self.set;
        if self.detect && !set.pseudonymizer.as_deref().is_some_and(|p| p.is_token(s)) {
            let c = c.unwrap_or_else(|| super::measure::counts(s.as_bytes()));
            let mut buf = std::mem::take(&mut self.buf);
            if set.detectors.scrub_counted_into(s, c, &mut buf) {
                self.note_masked();
                let r = self.replace(start, |o| write_json_str(o, &buf)).map(|_| ());
                self.buf = buf;
                return r;
            }
            self.buf = buf;
        }
        if escaped {
            self.replace(start, |o| write_json_str(o, s))?;
        }
        Ok(())
    }

    /// Scans a number token: its span and whether serde_json writes it back as it is (a
    /// plain integer within i64/u64, not -0).
    #[inline]
    fn scan_number(&self) -> R<(usize, usize, bool)> {
        let b = self.b;
        let start = self.i;
        let mut j = start;
        let neg = b.get(j) == Some(&b'-');
        if neg {
            j += 1;
        }
        let digits = j;
        match b.get(j) {
            Some(b'0') => j += 1,
            Some(b'1'..=b'9') => {
                while b.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
            }
            _ => return Err(Bail),
        }
        let int_end = j;
        let mut simple = true;
        if b.get(j) == Some(&b'.') {
            simple = false;
            j += 1;
            let f = j;
            while b.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
            if j == f {
                return Err(Bail);
            }
        }
        if let Some(b'e' | b'E') = b.get(j) {
            simple = false;
            j += 1;
            if let Some(b'+' | b'-') = b.get(j) {
                j += 1;
            }
            let e = j;
            while b.get(j).is_some_and(u8::is_ascii_digit) {
                j += 1;
            }
            if j == e {
                return Err(Bail);
            }
        }
        if simple {
            let len = int_end - digits;
            simple = if neg {
                // -0 becomes the float -0.0; 19 digits may not fit an i64.
                !(len == 1 && b[digits] == b'0')
                    && (len < 19 || self.text[start..j].parse::<i64>().is_ok())
            } else {
                len < 20 || self.text[digits..int_end].parse::<u64>().is_ok()
            };
        }
        Ok((start, j, simple))
    }

    /// An unselected number: plain integers serde_json keeps as integers stay as they are;
    /// anything else (fractions, exponents, -0, beyond 64 bits) is parsed and written as
    /// serde does.
    #[inline]
    fn number(&mut self) -> R<()> {
        let (start, end, simple) = self.scan_number()?;
        self.i = end;
        if simple {
            return Ok(());
        }
        let n: Value = serde_json::from_str(&self.text[start..end]).map_err(|_| Bail)?;
        self.replace(start, |o| serde_json::to_writer(o, &n).map_err(|_| Bail))
            .map(|_| ())
    }

    #[inline(never)]
    fn object(&mut self, state: u32, depth: usize) -> R<()> {
        if depth >= self.max_depth {
            return Err(Bail);
        }
        if self.names.len() <= depth {
            self.names.resize_with(depth + 1, Names::default);
        }
        let n = &mut self.names[depth];
        n.list.clear();
        n.bloom = 0;
        n.set.clear();
        let sh = n.shape_for(state);
        // Members up to here equal `pred` (and so are known distinct): no duplicate check.
        let mut known = n.shapes[sh].distinct;
        self.i += 1;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            self.names[depth].shapes[sh].distinct = 0;
            return Ok(());
        }
        let has_keys = !self.set.keys.is_empty();
        let (mut written, mut pos) = (0usize, 0usize);
        let mut m = self.mark(self.i);
        self.path.push(self.last);
        // The shape's members, held here while the object is open (values nest one depth
        // down, never in this shape): no lookup through `names` per member. Put back at
        // the end; on an error the whole pass is given up anyway.
        let mut preds = std::mem::take(&mut self.names[depth].shapes[sh].pred);
        if known != 0 {
            match self.replay(&preds[..known], depth, &mut m)? {
                Replay::Closed => {
                    self.close_object(depth, sh, preds, known);
                    return Ok(());
                }
                Replay::Stopped { pos: 0, .. } => {}
                Replay::Stopped { pos: k, written: w } => {
                    (pos, written) = (k, w);
                    if !self.separator(b'}', written, &mut m)? {
                        self.close_object(depth, sh, preds, pos);
                        return Ok(());
                    }
                }
            }
        }
        loop {
            let (p, same_as_pred) = match self.known_member(&preds, pos) {
                Some(p) => (p, true),
                None => self.new_member(&mut preds, pos, state, has_keys)?,
            };
            let Pred {
                name,
                h,
                child,
                win,
                plain,
                ..
            } = p;
            if !(same_as_pred && pos < known) {
                if known != 0 {
                    self.start_duplicate_check(depth, &preds[..pos]);
                    known = 0;
                }
                self.check_duplicate(depth, name.as_bytes(), h)?;
            }
            pos += 1;
            self.last = PStep::Key(name, plain);
            let removed = self.value(win, child, depth + 1)?;
            if removed {
                self.drop_since(&m);
            } else {
                written += 1;
            }
            if !self.separator(b'}', written, &mut m)? {
                self.close_object(depth, sh, preds, pos);
                return Ok(());
            }
        }
    }

    /// After an object's last member: its `pos` members' names are now in `preds` at their
    /// positions (up to MAX_PRED), which go back to the shape.
    #[inline(always)]
    fn close_object(&mut self, depth: usize, sh: usize, preds: Vec<Pred<'a>>, pos: usize) {
        let shape = &mut self.names[depth].shapes[sh];
        shape.pred = preds;
        shape.distinct = pos.min(MAX_PRED);
        self.path.pop();
        self.rendered = self.rendered.min(self.path.len());
    }

    /// An object's members from the first, as long as each is written exactly as the one at
    /// its position in the last object of this shape (`preds`, pairwise distinct names):
    /// the comma and `"name":` are recognised by one compare, with no separator state, mark
    /// or duplicate check per member. Stops at the first member written otherwise, or after
    /// a removed one that no kept one precedes, where the member loop takes over
    /// (`Stopped`: members read, members kept), or at the closing brace after the last of
    /// `preds`.
    #[inline(always)]
    fn replay(&mut self, preds: &[Pred<'a>], depth: usize, m: &mut Mark) -> R<Replay> {
        // Members read, members kept.
        let (mut k, mut written) = (0, 0);
        loop {
            let p = &preds[k];
            // At the comma before the member (the first has none).
            let start = self.i;
            let n = p.head.len();
            let fast = match self.b.get(start..start + 16) {
                Some(at) if k != 0 => p.sep_head.matches(at.try_into().expect("16 bytes")),
                _ => false,
            };
            let h = if fast {
                start + 1
            } else {
                let h = if k == 0 {
                    start
                } else if self.b.get(start) == Some(&b',') {
                    start + 1
                } else {
                    return Ok(Replay::Stopped { pos: k, written });
                };
                match self.b.get(h..h + n) {
                    Some(at) if n != 0 && same(at, p.head) => h,
                    _ => return Ok(Replay::Stopped { pos: k, written }),
                }
            };
            if p.win.is_some() {
                // Only a selected value can be removed: the member loop's mark for it.
                *m = Mark {
                    out: self.out.len(),
                    copied: self.copied,
                    cut: start,
                };
            }
            self.i = h + n;
            self.last = PStep::Key(p.name, p.plain);
            if self.value(p.win, p.child, depth + 1)? {
                // The member went with the comma before it. After a kept one the next
                // comma stays as it is, and the replay goes on (the example set removes
                // each record's second member); with none kept yet, that comma must go too,
                // which the member loop's separator does.
                self.drop_since(m);
                if written == 0 {
                    return Ok(Replay::Stopped {
                        pos: k + 1,
                        written,
                    });
                }
            } else {
                written += 1;
            }
            k += 1;
            if k == preds.len() {
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Replay::Closed);
                }
                return Ok(Replay::Stopped { pos: k, written });
            }
        }
    }

    /// The first member that differs from `pred` (at `pos`): the names before it, equal to
    /// `pred[..pos]`, go into the duplicate check's list.
    #[cold]
    fn start_duplicate_check(&mut self, depth: usize, before: &[Pred<'a>]) {
        let n = &mut self.names[depth];
        for p in before {
            n.bloom |= 1u64 << (p.h >> 58);
            n.list.push(p.name.as_bytes());
        }
    }

    /// The member at `self.i` when it is written exactly as `preds[pos]`, the one at its
    /// position in the last object of this shape (`"name":`, compact): its name, hash,
    /// child state and winning rule, and `self.i` past the colon. The bytes compared are
    /// the whole name token, so the scan would have found the same name (names never hold
    /// escapes here).
    #[inline(always)]
    fn known_member(&mut self, preds: &[Pred<'a>], pos: usize) -> Option<Pred<'a>> {
        let p = preds.get(pos)?;
        let n = p.head.len();
        // `head` is at least `"":`, so an empty one (whitespace) never matches.
        let at = self.b.get(self.i..self.i + n)?;
        if n == 0 || !same(at, p.head) {
            return None;
        }
        self.i += n;
        Some(*p)
    }

    /// The member at `self.i` (position `pos` of an object in DFA state `state`) read in
    /// full: name, hash, child state and winning rule, `self.i` past the colon. From
    /// `preds[pos]` (the last object's member at the same position in this shape) when it
    /// had the same name (then also true), else resolved and remembered there.
    #[inline(never)]
    fn new_member(
        &mut self,
        preds: &mut Vec<Pred<'a>>,
        pos: usize,
        state: u32,
        has_keys: bool,
    ) -> R<(Pred<'a>, bool)> {
        if self.peek()? != b'"' {
            // Whitespace after a comma is only looked for here.
            self.ws();
            if self.peek()? != b'"' {
                return Err(Bail);
            }
        }
        let (ks, ke, escaped) = self.scan_string()?;
        if escaped {
            return Err(Bail);
        }
        // A slice of the text between two quotes: always on character boundaries, so
        // `get` checks two bytes where `from_utf8` would scan the name at every use.
        let name: &'a str = self.text.get(ks + 1..ke - 1).ok_or(Bail)?;
        // Compact input has the colon right after the name.
        let compact = self.b.get(self.i) == Some(&b':');
        if !compact {
            self.ws();
            if self.peek()? != b':' {
                return Err(Bail);
            }
        }
        self.i += 1;
        let head: &'a [u8] = if compact { &self.b[ks..self.i] } else { &[] };
        let k = name.as_bytes();
        if let Some(p) = preds.get_mut(pos) {
            if same(p.name.as_bytes(), k) {
                // Same name, written differently (whitespace): remember this writing.
                if p.head.is_empty() {
                    p.head = head;
                    p.sep_head = SepHead::new(head);
                }
                return Ok((*p, true));
            }
        }
        let h = name_hash(k);
        let key_bits = if has_keys { self.key_bits(k, h)? } else { 0 };
        let child = self.dfa.next(state, self.dfa.name_class(k, h));
        let p = Pred {
            name,
            head,
            child,
            h,
            win: self.winner(child, key_bits),
            plain: plain_name(k),
            sep_head: SepHead::new(head),
        };
        if let Some(slot) = preds.get_mut(pos) {
            *slot = p;
        } else if pos == preds.len() && pos < MAX_PRED {
            preds.push(p);
        }
        Ok((p, false))
    }

    /// serde_json keeps one member per name (the last value, at the first position): such
    /// objects take the tree walk.
    #[inline(always)]
    fn check_duplicate(&mut self, depth: usize, k: &'a [u8], h: u64) -> R<()> {
        let n = &mut self.names[depth];
        if n.list.len() < LINEAR_DUP_CHECK {
            let bit = 1u64 << (h >> 58);
            if n.bloom & bit != 0 && n.list.iter().any(|x| same(x, k)) {
                return Err(Bail);
            }
            n.bloom |= bit;
            n.list.push(k);
        } else {
            if n.set.is_empty() {
                n.set.extend(n.list.iter().copied());
            }
            if !n.set.insert(k) {
                return Err(Bail);
            }
        }
        Ok(())
    }

    #[inline(never)]
    fn array(&mut self, state: u32, depth: usize) -> R<()> {
        if depth >= self.max_depth {
            return Err(Bail);
        }
        self.i += 1;
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Ok(());
        }
        let (mut idx, mut written) = (0usize, 0usize);
        let mut m = self.mark(self.i);
        self.path.push(self.last);
        // Past the indices some selector lists, elements all step the DFA alike: their
        // state and winning rule are resolved once per array.
        let listed = self.dfa.listed_end();
        let other = self.dfa.next(state, self.dfa.other_index());
        let other_win = self.winner(other, 0);
        loop {
            let (child, win) = if idx < listed {
                let child = self.dfa.next(state, self.dfa.index_class(idx));
                (child, self.winner(child, 0))
            } else {
                (other, other_win)
            };
            self.last = PStep::Index(idx);
            let removed = self.value(win, child, depth + 1)?;
            if removed {
                self.drop_since(&m);
            } else {
                written += 1;
            }
            idx += 1;
            if !self.separator(b']', written, &mut m)? {
                self.path.pop();
                self.rendered = self.rendered.min(self.path.len());
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! `mask_document` compares both engines on every call under `cfg(test)`; these cases
    //! make sure the streaming pass is really taken for them, and cover its edges.
    use super::super::{FieldRules, MaskReport};
    use super::SepHead;

    #[test]
    fn special_byte_search_finds_the_first_quote_backslash_or_control() {
        // Every byte value at every position, behind ordinary bytes and behind another
        // special byte, against a plain scan (both the SSE2 and the portable forms).
        let naive = |c: &[u8; 16]| c.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
        let mut checked = 0;
        for at in 0..16 {
            for v in 0..=255u8 {
                let mut c = [b'a'; 16];
                c[at] = v;
                c[15 - at] = if at % 2 == 0 { 0xe9 } else { c[15 - at] };
                for later in [None, Some(b'"'), Some(0x1f)] {
                    let mut c = c;
                    if let (Some(l), true) = (later, at < 15) {
                        c[15] = l;
                    }
                    let want = naive(&c);
                    assert_eq!(super::first_special16(&c), want, "{c:?}");
                    assert_eq!(super::first_special16_swar(&c), want, "{c:?}");
                    #[cfg(target_arch = "x86_64")]
                    assert_eq!(
                        super::plain_end16(&c),
                        want.filter(|&p| c[p] == b'"'),
                        "{c:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 16 * 256 * 3);
    }

    const YAML: &str = r#"owner: dana@clinic.example
pseudonym_key_env: K
sets:
  patient:
    fields:
      - { path: "$..ssn",          action: redact }
      - { path: "$..email",        action: pseudonymize }
      - { path: "$..phone",        action: { mask: { keep_last: 4 } } }
      - { path: "$..dob",          action: year }
      - { path: "$..address.zip",  action: zip3 }
      - { path: "$..age",          action: age90 }
      - { path: "$..name",         action: remove }
      - { path: "$.list[1]",       action: remove }
      - { path: "$.list[*].gone",  action: null }
      - { path: "$.obj",           action: { replace: "x" } }
      - { key: "(?i)^(mrn|medical_record_number)$", action: redact }
    detect: [ssn, email, phone, credit_card]
  neg:
    fields:
      - { path: "$.a[-1]", action: redact }
  actions:
    fields:
      - { path: "$..rm",    action: remove }
      - { path: "$..nul",   action: null }
      - { path: "$..red",   action: redact }
      - { path: "$..rep",   action: { replace: "x\"y" } }
      - { path: "$..repn",  action: { replace: 7 } }
      - { path: "$..pse",   action: pseudonymize }
      - { path: "$..msk",   action: { mask: { keep_first: 1, keep_last: 2, char: "é" } } }
      - { path: "$..yr",    action: year }
      - { path: "$..zip",   action: zip3 }
      - { path: "$..age",   action: age90 }
  shapes:
    fields:
      - { path: "$[0]",          action: { replace: "first" } }
      - { path: "$.*[1]",        action: null }
      - { path: "$..[2].k",      action: redact }
      - { path: "$.a.*.b",       action: remove }
      - { path: "$.x..y.z",      action: { mask: {} } }
      - { path: "$['p','q'][0,3]", action: year }
      - { path: "$..deep..w",    action: redact }
      - { key: "^k$",            action: remove }
  removals:
    fields:
      - { path: "$..rm",    action: remove }
      - { path: "$..rm2",   action: remove }
      - { path: "$..red",   action: redact }
  everything:
    fields:
      - { path: "$..*", action: { mask: { keep_last: 1 } } }
  states:
    fields:
      - { path: "$..s1.v1", action: redact }
      - { path: "$..s2.v2", action: redact }
      - { path: "$..s3.v3", action: redact }
      - { path: "$..s4.v4", action: redact }
      - { path: "$..s5.v5", action: redact }
"#;

    fn set(name: &str) -> std::sync::Arc<super::super::FieldSet> {
        let r =
            FieldRules::compile(YAML, Some("dana@clinic.example"), &|_| Some("k".into())).unwrap();
        r.set(name).unwrap().clone()
    }

    fn streams(doc: &str) -> bool {
        streams_with("patient", doc)
    }

    /// Masks `doc` with `set` both ways (cfg(test) compares them); whether it streamed.
    fn streams_with(name: &str, doc: &str) -> bool {
        let s = set(name);
        let mut rep = MaskReport::default();
        let streamed = super::mask(&s, doc, doc.is_ascii(), 128, &mut rep).is_some();
        // Compares with the tree walk (cfg(test)), or produces the tree walk's error.
        let _ = s.mask_document(doc.as_bytes(), 128);
        streamed
    }

    #[test]
    fn pseudonyms_are_filled_in_across_values_removals_and_the_end() {
        // Each pseudonym's tag is written when the next one is hashed, or at the end: every
        // tag must land in its own place whatever lies between (removed members, removed
        // elements, values left as they are, values of more than one block).
        let p = super::super::Pseudonymizer::new(b"k");
        let token = p.token("kept@x.example");
        let mut members = Vec::new();
        for n in 0..=70usize {
            let v: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            members.push(format!(r#"{{"pse":"{v}","rm":"{v}","k":{n}}}"#));
            match n % 5 {
                0 => members.push(r#"{"pse":"a@b","rm":1}"#.into()),
                1 => members.push(format!(r#"{{"rm":{{"pse":"{v}"}},"pse":"{token}"}}"#)),
                2 => members.push(r#"{"pse":"[REDACTED]","x":[{"pse":"in array"}]}"#.into()),
                3 => members.push(r#"{"pse":{"a":"container"},"pse2":"x"}"#.into()),
                _ => {}
            }
        }
        let doc = format!("[{}]", members.join(","));
        let out = masked("actions", &doc);
        assert_eq!(out, tree_only("actions", &doc).0);
        assert!(!out.contains("______"), "a placeholder tag was left");
        assert!(out.ends_with(r#"}]"#));
        // The last value of a document is a pseudonym: only the end fills it in.
        for doc in [r#"{"pse":"last@x.example"}"#, r#"[{"rm":1},{"pse":"e"}]"#] {
            let out = masked("actions", doc);
            assert_eq!(out, tree_only("actions", doc).0);
            assert!(out.contains(&p.token(if doc.contains("last") {
                "last@x.example"
            } else {
                "e"
            })));
        }
        // The patient set removes each record's `name` right after its email.
        let rec =
            |i: usize| format!(r#"{{"email":"p{i}@x.example","name":{{"first":"N"}},"list":[1]}}"#);
        let doc = format!("[{}]", (0..40).map(rec).collect::<Vec<_>>().join(","));
        let out = masked("patient", &doc);
        assert_eq!(out, tree_only("patient", &doc).0);
        for i in 0..40 {
            assert!(
                out.contains(&p.token(&format!("p{i}@x.example"))),
                "record {i}"
            );
        }
    }

    #[test]
    fn streaming_matches_the_tree_walk() {
        for doc in [
            r#"[{"id":1,"name":{"first":"A"},"ssn":"123-45-6789","email":"a@b.example","phone":"555-123-4567","dob":"1990-01-02","address":{"street":"1 Main","zip":"02139"},"mrn":"M1","notes":"call 555-123-4567 or a@b.example","age":93}]"#,
            r#" { "name" : 1 , "x" : [ 1 , -2 , 0 , 3.5 , 1e3 , -0 , 1E-2 , 18446744073709551615 , 18446744073709551616 , -9223372036854775808 , -9223372036854775809 ] } "#,
            r#"{"s":"esc \" \\ \/ \u00e9 \ud83d\ude42 \n","t":"plain é 🙂 \u2028","u":true,"v":false,"w":null,"e":{},"f":[]}"#,
            r#"{"name":{"a":1},"keep":1}"#,
            r#"{"keep":1,"name":{"a":1}}"#,
            r#"{"name":1}"#,
            r#"{"list":[{"gone":1,"k":2},{"x":1},{"gone":[1,2]}],"obj":{"deep":[1]}}"#,
            r#"[[[[{"ssn":[1,{"a":2}]}]]]]"#,
            r#""555-123-4567""#,
            r#"42"#,
            r#"{"MRN":"x","Medical_Record_Number":{"a":1},"mrnx":"y"}"#,
            r#"{"email":"pse:nope","notes":"4111 1111 1111 1111"}"#,
        ] {
            assert!(streams(doc), "fell back for {doc}");
        }
    }

    #[test]
    fn a_remembered_member_is_reused_only_in_the_same_state() {
        // `p.b` under `a` and under `q` sit at the same depth and position: the second must
        // not reuse the first's DFA state (only `$.a.*.b` is removed), nor a later record
        // with other names the first record's.
        let doc = r#"{"a":{"p":{"b":1,"c":2}},"q":{"p":{"b":1,"c":2}},"z":{"r":[{"b":1},{"c":1,"b":2}]}}"#;
        assert!(streams_with("shapes", doc));
        let (out, rep) = set("shapes").mask_document(doc.as_bytes(), 64).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":{"p":{"c":2}},"q":{"p":{"b":1,"c":2}},"z":{"r":[{"b":1},{"c":1,"b":2}]}}"#
        );
        assert_eq!(rep.paths, vec!["$['a']['p']['b']"]);
        // Records of one shape, then one with the names swapped: both masked by name.
        let doc = r#"[{"ssn":"1","k":"x"},{"ssn":"2","k":"y"},{"k":"z","ssn":"3"}]"#;
        let (out, rep) = set("patient").mask_document(doc.as_bytes(), 64).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"[{"ssn":"[REDACTED]","k":"x"},{"ssn":"[REDACTED]","k":"y"},{"k":"z","ssn":"[REDACTED]"}]"#
        );
        assert_eq!(rep.count, 3);
    }

    #[test]
    fn falls_back_where_it_must() {
        for doc in [
            r#"{"a":1,"a":2}"#,   // duplicate names
            r#"{"\u0061":1}"#,    // escaped name
            r#"{"a":1} x"#,       // trailing garbage (an error, from the tree walk)
            r#"{"a":[1,2,]}"#,    // invalid
            r#"{"a":"ctl	tab"}"#, // raw control character
            r#"{"a":01}"#,        // leading zero
            r#"{"ssn":"#,         // a selected value cut off
            r#"{"ssn":   "#,      // ... after whitespace
            r#"{"ssn":"1","#,     // a member cut off after a selected one
        ] {
            assert!(!streams(doc), "streamed {doc}");
        }
        let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
        assert!(!streams(&deep));
        assert!(!super::supported(&set("neg")));
        assert!(super::supported(&set("patient")));
    }

    #[test]
    fn duplicates_behind_remembered_names_are_found() {
        // Records whose names equal the last record's, position by position, skip the
        // duplicate check; a shorter record leaves older names in the memo, and those must
        // never vouch for a later record (`[y, y]` after `[x, y]` then `[y]`).
        for doc in [
            r#"[{"x":1,"y":2},{"y":3},{"y":4,"y":5}]"#,
            r#"[{"a":1,"b":2,"c":3},{"c":1,"b":2,"c":3}]"#,
            r#"[{"a":1,"b":2},{"a":1,"b":2,"a":3}]"#,
            r#"[{"a":1,"b":2},{},{"b":1,"b":2}]"#,
            r#"[{"a":{"k":1},"b":2},{"a":{"k":1,"k":2},"b":2}]"#,
            // Two shapes at one depth (`n` and `m` objects), each remembered on its own.
            r#"[{"n":{"a":1,"b":2},"m":{"c":1,"d":2}},{"n":{"a":1,"b":2},"m":{"c":1,"c":2}}]"#,
            r#"[{"n":{"a":1,"b":2},"m":{"c":1,"d":2}},{"n":{"a":1,"a":2},"m":{"c":1,"d":2}}]"#,
        ] {
            assert!(!streams(doc), "streamed {doc}");
        }
        // Same names, same order, many records: streamed (and equal to the tree walk).
        let rec = r#"{"ssn":"1","name":"n","k":{"a":1,"b":2},"z":[1]}"#;
        let doc = format!("[{}]", vec![rec; 20].join(","));
        assert!(streams(&doc));
        let doc = r#"[{"a":1,"b":2},{"a":1},{"a":1,"b":2,"c":3},{"b":1,"a":2}]"#;
        assert!(streams(doc));
        // More shapes at one depth than are remembered: the oldest is replaced, and every
        // record is still checked and masked by name.
        let rec = |i: usize| {
            (0..6)
                .map(|j| {
                    format!(
                        r#""o{j}":{{"k{}":1,"ssn":"x","k{}":2}}"#,
                        (i + j) % 3,
                        3 + j
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let doc = format!(
            "[{}]",
            (0..8)
                .map(|i| format!("{{{}}}", rec(i)))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(streams(&doc));
        let dup = doc.replacen(r#""k3":2"#, r#""ssn":2"#, 1);
        assert!(!streams(&dup), "streamed {dup}");
    }

    #[test]
    fn more_states_at_one_depth_than_shapes() {
        // `s1`..`s5` objects: same member names, five DFA states at one depth, one more
        // than the shapes kept. A replaced shape must forget its members (else `s5` would
        // reuse `s1`'s and mask `v1`).
        let obj = r#"{"v1":"a","v2":"b","v3":"c","v4":"d","v5":"e"}"#;
        let rec = (1..=5)
            .map(|i| format!(r#""s{i}":{obj}"#))
            .collect::<Vec<_>>()
            .join(",");
        let doc = format!("[{{{rec}}},{{{rec}}},{{{rec}}}]");
        assert!(streams_with("states", &doc));
        let (out, rep) = set("states").mask_document(doc.as_bytes(), 64).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(rep.count, 15);
        for i in 1..=5 {
            let masked = obj.replace(
                &format!(r#""v{i}":"{}""#, (b'a' + i as u8 - 1) as char),
                &format!(r#""v{i}":"[REDACTED]""#),
            );
            assert_eq!(
                out.matches(&format!(r#""s{i}":{masked}"#)).count(),
                3,
                "{out}"
            );
        }
    }

    #[test]
    fn cut_strings_are_errors_at_every_length() {
        // A body cut inside a string, or right after an escape's backslash, must be a
        // masking error (never a panic past the end, never a partial document), whichever
        // step of the scan (16, 8 or single bytes) reaches the end.
        for n in 0..40 {
            let text = "x".repeat(n);
            for doc in [
                format!(r#"{{"ssn":"{text}"#),
                format!(r#"{{"ssn":"{text}\"#),
                format!(r#"["{text}"#),
                format!(r#"["{text}\"#),
                format!(r#"{{"{text}"#),
            ] {
                assert!(!streams(&doc), "streamed {doc}");
                assert!(
                    set("patient").mask_document(doc.as_bytes(), 128).is_err(),
                    "{doc}"
                );
            }
        }
    }

    #[test]
    fn many_members_use_the_set_check() {
        let mut doc = String::from("{");
        for i in 0..100 {
            doc.push_str(&format!("\"k{i}\":{i},"));
        }
        doc.push_str("\"ssn\":\"123-45-6789\"}");
        assert!(streams(&doc));
        let dup = doc.replace("\"k99\"", "\"k3\"");
        assert!(!streams(&dup));
    }

    /// Masks with the tree walk only (via a clone with a slow rule).
    fn tree_only(name: &str, doc: &str) -> (String, MaskReport) {
        let s = set(name);
        let (out, rep) = s.mask_tree(doc, 128).unwrap();
        (String::from_utf8(out).unwrap(), rep)
    }

    fn masked(name: &str, doc: &str) -> String {
        assert!(streams_with(name, doc), "fell back for {doc}");
        let (out, _) = set(name).mask_document(doc.as_bytes(), 128).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn selected_strings_every_action_and_escape() {
        for v in [
            r#""plain""#,
            r#""""#,
            r#""a\"b\\c\/d""#,
            r#""\u00e9t\u00E9 \ud83d\ude42 \b\f\n\r\t \u0001""#,
            r#""é🙂 ünï名 \u2028""#,
            r#""[REDACTED]""#,
            r#""\u005bREDACTED]""#,
            r#""90+""#,
            r#""93""#,
            r#"" 42 ""#,
            r#""02139""#,
            r#""02139-1234""#,
            r#""021**""#,
            r#""036**""#,
            r#""1984-02-03T10:00:00Z""#,
            r#""1984""#,
            r#""03/04/1984""#,
            r#""aéééééébc""#,
            r#""xy""#,
            r#""ab\"cdefgh\\""#,
        ] {
            let doc = format!(
                r#"{{"rm":{v},"nul":{v},"red":{v},"rep":{v},"repn":{v},"pse":{v},"msk":{v},"yr":{v},"zip":{v},"age":{v}}}"#
            );
            masked("actions", &doc);
            // Pretty input: whitespace everywhere, dropped in the output.
            let pretty = doc.replace("\":", "\" :\n\t ").replace(",\"", " \r\n, \"");
            assert_eq!(masked("actions", &pretty), masked("actions", &doc));
        }
        assert_eq!(
            masked(
                "actions",
                r#"{"msk":"a\"bcd\\e","rep":"q","repn":"q","red":"\n"}"#
            ),
            r#"{"msk":"aéééééé\\e","rep":"x\"y","repn":7,"red":"[REDACTED]"}"#
        );
    }

    #[test]
    fn comma_and_head_compare_every_byte_up_to_16() {
        let pad = |s: &[u8]| {
            let mut a = [b'#'; 16];
            a[..s.len()].copy_from_slice(s);
            a
        };
        // Heads of 3..=15 bytes (with the comma, 4..=16).
        for n in 0..=12 {
            let head = format!("\"{}\":", "k".repeat(n));
            let sep = SepHead::new(head.as_bytes());
            let written = format!(",{head}");
            assert!(sep.matches(&pad(written.as_bytes())), "{written}");
            // Any one byte different, the comma included, is another member.
            for i in 0..written.len() {
                let mut other = written.clone().into_bytes();
                other[i] ^= 0x20;
                assert!(!sep.matches(&pad(&other)), "{head} differs at {i}");
            }
            // What follows the head does not count.
            let mut tail = pad(written.as_bytes());
            tail[written.len()..].fill(b'x');
            assert!(sep.matches(&tail));
        }
        // Too long to fit with its comma, or none remembered: never equal.
        let long = b"\"kkkkkkkkkkkkk\":";
        assert_eq!(long.len(), 16);
        let mut written = [0u8; 16];
        written[0] = b',';
        written[1..].copy_from_slice(&long[..15]);
        assert!(!SepHead::new(long).matches(&written));
        assert!(!SepHead::new(b"").matches(&pad(b",")));
    }

    #[test]
    fn member_heads_match_whole_names_only() {
        // A member is recognised by the bytes `"name":` of the one at its position in the
        // last record: a longer name, a name written with whitespace, or a different value
        // must each still be read as what they are (`masked` compares with the tree walk).
        let docs = [
            r#"[{"ssn":"1","a":2},{"ssnx":"1","a":2},{"ssn":"1","a":2},{"ss":"1","a":2}]"#,
            r#"[{"ssn":"1"},{"ssn" :"2"},{"ssn":"3"},{ "ssn":"4"},{"ssn": "5"}]"#,
            r#"[{"a":{"ssn":"1"}},{"a":[{"ssn":"2"}]},{"a":"ssn"},{"a":{"ssn":"3"}}]"#,
            r#"[{"mrn":"1","age":95},{"MRN":"2","age":3},{"mrn":"3","age":"95"}]"#,
            r#"[{"a":1,"b":2},{"b":1,"a":2},{"a":1},{"a":1,"b":2,"c":3}]"#,
        ];
        for doc in docs {
            let out = masked("patient", doc);
            assert!(!out.contains(r#""ssn":"1""#), "{out}");
        }
        let out = masked("patient", docs[0]);
        assert!(
            out.contains(r#""ssnx":"1""#) && out.contains(r#""ss":"1""#),
            "{out}"
        );
        let out = masked("patient", docs[1]);
        assert_eq!(out.matches("[REDACTED]").count(), 5, "{out}");
        let out = masked("patient", docs[3]);
        assert_eq!(out.matches("[REDACTED]").count(), 3, "{out}");
        // An escaped name where the last record had a plain one: the tree walk's case.
        assert!(!streams(r#"[{"ssn":"1"},{"ss\u006e":"2"}]"#));
    }

    #[test]
    fn numbers_of_every_form() {
        let nums = [
            "0",
            "-0",
            "7",
            "-7",
            "1.0",
            "-1.5",
            "0.1",
            "1e3",
            "1E+3",
            "-1e-3",
            "2.5E10",
            "123456789012345678",
            "1234567890123456789",
            "12345678901234567890",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "-123456789012345678",
            "-1234567890123456789",
            "-9223372036854775808",
            "-9223372036854775809",
            "-9999999999999999999",
            "1e308",
            "4.9e-324",
            "0.30000000000000004",
            "12345",
            "99999",
            "100000",
            "1984",
            "93",
            "89.5",
            // Around the 8-byte integer step.
            "1234567",
            "12345678",
            "1234567.5",
            "1234567e2",
            "12E1",
        ];
        // Invalid ones only in the short documents below.
        for n in nums.into_iter().chain(["5.", "5e", "1234567.", "1234567e"]) {
            let valid = serde_json::from_str::<serde_json::Value>(n).is_ok();
            let doc = format!(
                r#"[{n},{{"rm":{n},"nul":{n},"red":{n},"rep":{n},"pse":{n},"msk":{n},"yr":{n},"zip":{n},"age":{n},"keep":{n}}}]"#
            );
            if valid {
                masked("actions", &doc);
                masked("patient", &doc);
            }
            // Near the end of the text, and followed by what no number may be followed by.
            // (`mask_document` asserts that streaming output equals the tree walk's.)
            for doc in [
                n.to_string(),
                format!("[{n}]"),
                format!("[{n}x]"),
                format!("[{n}-1,2]"),
            ] {
                let valid = serde_json::from_str::<serde_json::Value>(&doc).is_ok();
                let res = set("actions").mask_document(doc.as_bytes(), 128);
                assert_eq!(res.is_ok(), valid, "{doc}");
            }
        }
        // Out of f64 range: an error from the tree walk, never output.
        for doc in [r#"{"keep":1e400}"#, r#"{"age":1e400}"#, r#"{"rm":-1e400}"#] {
            assert!(!streams_with("actions", doc));
            assert!(set("actions").mask_document(doc.as_bytes(), 128).is_err());
        }
    }

    #[test]
    fn selected_literals_and_containers() {
        for v in [
            "true",
            "false",
            "null",
            "{}",
            "[]",
            r#"{"a":[1,{"b":"\u00e9"}]}"#,
            "[1,2,[3]]",
        ] {
            let doc = format!(
                r#"{{"rm":{v},"nul":{v},"red":{v},"rep":{v},"pse":{v},"msk":{v},"yr":{v},"zip":{v},"age":{v}}}"#
            );
            masked("actions", &doc);
        }
        // Invalid JSON inside a selected (skipped) container is still an error.
        for doc in [
            r#"{"rm":{"a":"\ud800"}}"#,
            r#"{"rm":{"a":"\x"}}"#,
            r#"{"red":[1,]}"#,
            r#"{"red":{"a" 1}}"#,
            r#"{"red":{"a":01}}"#,
            r#"{"nul":[tru]}"#,
            r#"{"nul":["ctl	"]}"#,
            r#"{"rm":{"a":1}"#,
        ] {
            assert!(!streams_with("actions", doc), "streamed {doc}");
            assert!(
                set("actions").mask_document(doc.as_bytes(), 128).is_err(),
                "no error for {doc}"
            );
        }
        // Duplicate names inside a skipped container are fine (serde keeps the last).
        masked("actions", r#"{"red":{"a":1,"a":2},"x":1}"#);
        // Depth of a skipped container still counts.
        let s = set("actions");
        let doc = r#"{"rm":[[[[1]]]]}"#;
        assert!(s.mask_document(doc.as_bytes(), 5).is_ok());
        assert_eq!(
            s.mask_document(doc.as_bytes(), 4),
            Err(super::super::MaskError::TooDeep)
        );
    }

    #[test]
    fn removals_at_every_position_with_and_without_whitespace() {
        for doc in [
            r#"{"rm":1}"#,
            r#"{"rm":1,"a":2}"#,
            r#"{"a":1,"rm":2}"#,
            r#"{"a":1,"rm":2,"b":3}"#,
            r#"{"rm":{"x":1},"k":[1],"b":3}"#,
            r#"{"k":1,"rm":2}"#,
            r#"{"a":[{"rm":1},{"rm":2,"k":3},{"q":1,"k":2}]}"#,
            r#"[{"rm":1,"k":2}]"#,
            r#"{"rm":1,"a":{"rm":2,"k":"x","b":[{"k":1},{"rm":{}}]},"k":3,"z":4}"#,
        ] {
            let compact = masked("shapes", doc);
            assert_eq!(masked("actions", doc), tree_only("actions", doc).0);
            for ws in [" ", "\n  ", "\t\r\n"] {
                let pretty = doc
                    .replace('{', &format!("{{{ws}"))
                    .replace('}', &format!("{ws}}}"))
                    .replace(',', &format!("{ws},{ws}"))
                    .replace(':', &format!("{ws}:{ws}"))
                    .replace('[', &format!("[{ws}"));
                assert_eq!(masked("shapes", &pretty), compact, "{pretty}");
                assert_eq!(
                    masked("actions", &format!("{ws}{pretty}{ws}")),
                    masked("actions", doc)
                );
            }
        }
        assert_eq!(
            masked("actions", r#" { "rm" : 1 , "a" : 2 } "#),
            r#"{"a":2}"#
        );
        assert_eq!(masked("actions", r#"{"a":1 ,"rm":2 }"#), r#"{"a":1}"#);
        assert_eq!(
            masked("actions", r#"{"rm":1, "rm2":[ 1 ], "rm3":3}"#),
            r#"{"rm2":[1],"rm3":3}"#
        );
        assert_eq!(
            masked("shapes", r#"[ {"k":1}, {"k":2} , 3 ]"#),
            r#"["first",{},3]"#
        );
        assert_eq!(masked("actions", r#"{"rm":1}"#), "{}");
        assert_eq!(
            masked(
                "actions",
                r#"{ "rm":1 , "rm":2 }"#.replace("\"rm\":2", "\"nul\":2").as_str()
            ),
            r#"{"nul":null}"#
        );
    }

    #[test]
    fn records_of_one_shape_with_removed_members_anywhere() {
        // Up to five members, each kept, redacted or removed (by one of two rules), three
        // records of the same shape in a row (the second and third are replayed), compact
        // and with whitespace: as the tree walk masks them.
        let mut cases = 0;
        for n in 1..=5usize {
            for code in 0..4usize.pow(n as u32) {
                let kinds: Vec<usize> = (0..n).map(|i| code / 4usize.pow(i as u32) % 4).collect();
                // Each of `red`, `rm` and `rm2` at most once (member names are distinct).
                if (1..4).any(|kind| kinds.iter().filter(|&&k| k == kind).count() > 1) {
                    continue;
                }
                let record = |r: usize| {
                    let members: Vec<String> = kinds
                        .iter()
                        .enumerate()
                        .map(|(i, k)| match k {
                            0 => format!(r#""m{i}":{r}"#),
                            1 => format!(r#""red":"v{r}""#),
                            2 => format!(r#""rm":{{"x":[{r}]}}"#),
                            _ => format!(r#""rm2":"w{r}""#),
                        })
                        .collect();
                    format!("{{{}}}", members.join(","))
                };
                let doc = format!("[{},{},{}]", record(1), record(2), record(3));
                let want = tree_only("removals", &doc).0;
                assert_eq!(masked("removals", &doc), want, "{doc}");
                let pretty = doc.replace(',', " ,\n ").replace(':', " : ");
                assert_eq!(masked("removals", &pretty), want, "{pretty}");
                cases += 1;
            }
        }
        assert!(cases > 100, "{cases}");
    }

    #[test]
    fn dfa_wildcards_descendants_and_indices() {
        for doc in [
            r#"[[1,2,3,4],{"k":1},[0,{"k":2},{"k":3,"m":4},{"j":{"k":5}}]]"#,
            r#"{"a":{"p":{"b":1,"c":2},"q":[{"b":3}],"r":{"b":{"b":4}}},"x":{"m":{"y":{"z":"secret"}},"y":{"z":"s2","q":{"y":{"z":"s3"}}}}}"#,
            r#"{"p":["1984-01-02","x","y","2001-02-03"],"q":{"0":"1999-01-01"},"x":[1,2,[1,2,{"k":9}]]}"#,
            r#"{"deep":{"a":[{"w":1},{"v":{"w":"x"}}],"w":2},"w":3,"z":{"deep":[{"w":4}]}}"#,
            r#"[0,1,2,3,4,5,6,7,8,9,10,11,12]"#,
            r#"{"k":{"k":{"k":1}},"kk":1,"K":2}"#,
        ] {
            masked("shapes", doc);
            masked("everything", doc);
            masked("patient", doc);
        }
        assert_eq!(
            masked("shapes", r#"{"x":{"m":{"y":{"z":"secret"}}},"p":[1]}"#),
            r#"{"x":{"m":{"y":{"z":"******"}}},"p":["[REDACTED]"]}"#
        );
        let shapes = set("shapes");
        let dfa = shapes.dfa.as_ref().unwrap();
        assert!(dfa.state_count() > 1 && dfa.state_count() < 64);
        assert!(set("neg").dfa.is_none());
    }

    #[test]
    fn report_paths_are_capped_identically() {
        for n in [199usize, 200, 201, 450] {
            let mut doc = String::from("[");
            for i in 0..n {
                if i > 0 {
                    doc.push(',');
                }
                doc.push_str(&format!(r#"{{"ssn":"1","it's":{{"ssn":{i}}}}}"#));
            }
            doc.push(']');
            let (_, rep) = set("patient").mask_document(doc.as_bytes(), 128).unwrap();
            assert_eq!(rep.count, 2 * n);
            assert_eq!(rep.paths.len(), (2 * n).min(MaskReport::MAX_PATHS));
            assert_eq!(rep.truncated, 2 * n > MaskReport::MAX_PATHS);
            assert_eq!(&rep.paths[1], "$[0]['it\\'s']['ssn']");
            assert_eq!(tree_only("patient", &doc).1, rep);
        }
    }

    #[test]
    fn hash_collisions_and_many_members() {
        use super::super::dfa::name_hash;
        // Same length, first and last 8 bytes: the same hash, so the bloom filter hits and
        // the names must be compared in full.
        let (a, b) = ("aaaaaaaa1zzzzzzzz", "aaaaaaaa2zzzzzzzz");
        assert_eq!(name_hash(a.as_bytes()), name_hash(b.as_bytes()));
        assert!(!super::same(a.as_bytes(), b.as_bytes()));
        assert!(super::same(a.as_bytes(), a.to_string().as_bytes()));
        for (x, y) in [
            ("", ""),
            ("a", "b"),
            ("abc", "abd"),
            ("abcde", "abcdf"),
            ("ssn", "ssn"),
        ] {
            assert_eq!(super::same(x.as_bytes(), y.as_bytes()), x == y);
        }
        assert!(streams(&format!(r#"{{"{a}":1,"{b}":2}}"#)));
        assert!(!streams(&format!(r#"{{"{a}":1,"{b}":2,"{a}":3}}"#)));
        // Selector names that collide with member names still resolve exactly.
        assert!(streams(r#"{"ssnx":"123-45-6789","xssn":1,"ssn":2}"#));
        // Enough members to fill the bloom filter, duplicates at every position.
        let names: Vec<String> = (0..80).map(|i| format!("member_{i:02}_name")).collect();
        let doc = |extra: &str| {
            let mut d = String::from("{");
            for (i, n) in names.iter().enumerate() {
                d.push_str(&format!("\"{n}\":{i},"));
            }
            d.push_str(extra);
            d.push_str("\"email\":\"e@x.example\"}");
            d
        };
        assert!(streams(&doc("")));
        for dup in [0, 5, 23, 24, 25, 79] {
            assert!(
                !streams(&doc(&format!("\"{}\":1,", names[dup]))),
                "dup {dup}"
            );
        }
    }

    #[test]
    fn key_rules_combine_with_the_dfa_winner() {
        // `k` (key rule: remove) beats path rules that are less destructive, wherever it is.
        assert_eq!(
            masked("shapes", r#"{"a":{"z":{"b":1,"k":2}},"k":3}"#),
            r#"{"a":{"z":{}}}"#
        );
        // Key rules of the patient set: redact, unless a more destructive path rule wins.
        assert_eq!(
            masked("patient", r#"{"MRN":1,"name":{"mrn":2},"mrn":{"name":3}}"#),
            r#"{"MRN":"[REDACTED]","mrn":"[REDACTED]"}"#
        );
    }

    #[test]
    fn too_many_dfa_states_fall_back_to_the_tree_walk() {
        // `$..aI..z`: every subset of the `aI` seen above a node is its own state.
        let rules = |n: usize| {
            let mut y = String::from("owner: dana@clinic.example\nsets:\n  s:\n    fields:\n");
            for i in 0..n {
                y.push_str(&format!(
                    "      - {{ path: \"$..a{i}..z\", action: redact }}\n"
                ));
            }
            FieldRules::compile(&y, Some("dana@clinic.example"), &|_| None).unwrap()
        };
        let small = rules(3);
        let s = small.set("s").unwrap();
        // At least one state per subset of {a0, a1, a2}.
        assert!((8..64).contains(&s.dfa.as_ref().unwrap().state_count()));
        let big = rules(13);
        let s = big.set("s").unwrap();
        assert!(s.dfa.is_none());
        assert!(!super::supported(s));
        let (out, rep) = s
            .mask_document(br#"{"a0":{"a12":[{"z":1,"y":2}]},"z":3}"#, 128)
            .unwrap();
        assert_eq!(out, br#"{"a0":{"a12":[{"z":"[REDACTED]","y":2}]},"z":3}"#);
        assert_eq!(rep.paths, ["$['a0']['a12'][0]['z']"]);
    }

    #[test]
    fn the_key_rule_memo_grows_and_keeps_what_it_knew() {
        // Names first met before, between and after the memo's doublings, each met again
        // once the table has grown: every one must keep its own key-rule result.
        let mut doc = String::from("[");
        for round in 0..3 {
            for i in 0..300 {
                let name = if i % 7 == 0 {
                    ["mrn", "MRN", "Mrn"][i % 3]
                } else {
                    "n"
                };
                doc.push_str(&format!(
                    "{{\"{name}{}\":\"v{i}\",",
                    if name == "n" { i } else { 0 }
                ));
                doc.push_str(&format!(
                    "\"{}\":\"M-{round}-{i}\"}},",
                    ["mrn", "MRN", "Mrn"][i % 3]
                ));
            }
        }
        doc.pop();
        doc.push(']');
        assert!(streams(&doc));
        let (want, want_report) = tree_only("patient", &doc);
        let (out, report) = set("patient").mask_document(doc.as_bytes(), 128).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), want);
        assert_eq!(report.count, want_report.count);
        assert_eq!(report.count, 900);
    }

    #[test]
    fn key_rules_still_apply_past_a_chain_of_colliding_names() {
        use super::super::dfa::name_hash;
        // Names landing on the memo slot of "MRN" for every table size (low 12 bits).
        let target = name_hash(b"MRN") & 4095;
        let colliding: Vec<String> = (0u32..)
            .map(|i| format!("c{i}"))
            .filter(|n| name_hash(n.as_bytes()) & 4095 == target)
            .take(2 * super::MEMO_PROBES)
            .collect();
        let mut doc = String::from("{");
        for n in &colliding {
            doc.push_str(&format!("\"{n}\":1,"));
        }
        doc.push_str("\"MRN\":\"M-1\",\"x\":{\"MRN\":\"M-2\"}}");
        assert!(streams(&doc));
        let (out, report) = set("patient").mask_document(doc.as_bytes(), 128).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("M-1") && !out.contains("M-2"), "{out}");
        assert_eq!(report.count, 2);
    }
}
