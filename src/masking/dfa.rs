//! The fast rules of a set combined into one DFA for the streaming masker.
//!
//! The tree walk steps every fast rule's NFA (a u64 of segment states) on every member and
//! element. Here a DFA state is the interned tuple of all those NFA state words, built once
//! per set at load time, so a step is one table lookup. Input classes: each name used by a
//! name selector, "any other name", each non-negative index used by an index selector and
//! "any other index" — steps in the same class move every NFA identically. Each state also
//! carries the fast rule the tree walk's `Walker::winner` would pick there.

use super::path::{advance, FastSel, StepRef};
use super::{FastRule, RuleInfo};
use std::collections::HashMap;

/// Above this many states (or transitions) a set is masked by the tree walk instead; sets of
/// dozens of ordinary rules stay far below.
const MAX_STATES: usize = 4096;
const MAX_TRANSITIONS: usize = 1 << 18;

/// The winning fast rule of a state: (rank, position, rule), compared like `Walker::winner`.
pub(crate) type Win = (u8, u32, u32);

#[derive(Debug)]
pub(crate) struct Dfa {
    /// Open-addressed table of the selector names (by `name_hash`), with their class.
    names: Vec<Option<(u64, Box<str>, u32)>>,
    /// Non-negative indices used by index selectors, with their class.
    indices: Vec<(usize, u32)>,
    /// One past the largest of `indices` (0 without): every index from here on is of
    /// class `other_index`.
    listed_end: usize,
    other_name: u32,
    other_index: u32,
    classes: usize,
    trans: Vec<u32>,
    win: Vec<Option<Win>>,
}

/// A cheap hash of a member name (first and last 8 bytes and the length), used for the
/// selector-name table, the key-rule memo and the duplicate-name bloom filter. Equal names
/// hash equal; every user compares the names on a hit.
#[inline(always)]
pub(crate) fn name_hash(b: &[u8]) -> u64 {
    let n = b.len();
    let (x, y) = if n >= 8 {
        (
            u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            u64::from_le_bytes(b[n - 8..].try_into().expect("8 bytes")),
        )
    } else if n >= 4 {
        (
            u64::from(u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))),
            u64::from(u32::from_le_bytes(b[n - 4..].try_into().expect("4 bytes"))),
        )
    } else if n > 0 {
        (
            u64::from(b[0]) | u64::from(b[n / 2]) << 8 | u64::from(b[n - 1]) << 16,
            0,
        )
    } else {
        (0, 0)
    };
    // Folded 128-bit multiply (as in wyhash): every input bit reaches the high bits.
    let m = u128::from(x ^ 0xA076_1D64_78BD_642F)
        * u128::from(y ^ (n as u64).wrapping_mul(0xE703_7ED1_A0B4_28DB) ^ 0x8EBC_6AF0_9C88_C6E3);
    (m as u64) ^ ((m >> 64) as u64)
}

/// `a == b` for the short member names of real documents, without a memcmp call.
#[inline]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let w8 = |x: &[u8], i: usize| u64::from_le_bytes(x[i..i + 8].try_into().expect("8 bytes"));
    let w4 = |x: &[u8], i: usize| u32::from_le_bytes(x[i..i + 4].try_into().expect("4 bytes"));
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => w4(a, 0) == w4(b, 0) && w4(a, n - 4) == w4(b, n - 4),
        8..=16 => w8(a, 0) == w8(b, 0) && w8(a, n - 8) == w8(b, n - 8),
        _ => a == b,
    }
}

#[derive(Clone, Copy)]
enum Class<'a> {
    Name(&'a str),
    Index(usize),
    /// A name or an index no selector mentions: only `..` and `*` move the NFAs.
    Other,
}

impl Dfa {
    /// `None` when the set cannot use the DFA (negative index selectors need the array
    /// length; too many states): the set is then masked by the tree walk.
    pub(crate) fn build(fast: &[FastRule], rules: &[RuleInfo]) -> Option<Dfa> {
        let mut names: Vec<&str> = Vec::new();
        let mut indices: Vec<usize> = Vec::new();
        for sel in fast.iter().flat_map(|f| &f.segs).flat_map(|s| &s.sels) {
            match sel {
                FastSel::Name(n) if !names.contains(&n.as_str()) => names.push(n),
                FastSel::Index(i) if *i < 0 => return None,
                FastSel::Index(i) => {
                    let i = usize::try_from(*i).ok()?;
                    if !indices.contains(&i) {
                        indices.push(i);
                    }
                }
                _ => {}
            }
        }
        let mut classes: Vec<Class> = names.iter().map(|n| Class::Name(n)).collect();
        classes.push(Class::Other);
        classes.extend(indices.iter().map(|i| Class::Index(*i)));
        classes.push(Class::Other);
        let nc = classes.len();
        let other_name = names.len() as u32;
        let other_index = (nc - 1) as u32;

        let step = |words: &[u64], c: Class| -> Vec<u64> {
            fast.iter()
                .zip(words)
                .map(|(f, &s)| match c {
                    _ if s == 0 => 0,
                    Class::Name(n) => advance(&f.segs, s, StepRef::Key(n)),
                    Class::Index(idx) => advance(
                        &f.segs,
                        s,
                        StepRef::Index {
                            idx,
                            len: usize::MAX,
                        },
                    ),
                    // As `Walker::step_states` for names no selector mentions.
                    Class::Other => (s & f.desc_mask) | ((s & f.wild_mask) << 1),
                })
                .collect()
        };

        let start: Vec<u64> = vec![1; fast.len()];
        let mut ids: HashMap<Vec<u64>, u32> = HashMap::new();
        let mut states: Vec<Vec<u64>> = Vec::new();
        ids.insert(start.clone(), 0);
        states.push(start);
        let mut trans: Vec<u32> = Vec::new();
        let mut k = 0;
        while k < states.len() {
            for &c in &classes {
                let next = step(&states[k], c);
                let id = match ids.get(&next) {
                    Some(&id) => id,
                    None => {
                        if states.len() >= MAX_STATES || (states.len() + 1) * nc > MAX_TRANSITIONS {
                            return None;
                        }
                        let id = states.len() as u32;
                        ids.insert(next.clone(), id);
                        states.push(next);
                        id
                    }
                };
                trans.push(id);
            }
            k += 1;
        }

        let win = states
            .iter()
            .map(|words| {
                fast.iter()
                    .zip(words)
                    .filter(|(f, &s)| s & f.accept != 0)
                    .map(|(f, _)| {
                        let r = &rules[f.rule as usize];
                        (r.action.rank(), r.position, f.rule)
                    })
                    .min()
            })
            .collect();

        let mut table = vec![None; (names.len() * 4).next_power_of_two().max(4)];
        let mask = table.len() - 1;
        for (c, n) in names.iter().enumerate() {
            let h = name_hash(n.as_bytes());
            let mut j = h as usize & mask;
            while table[j].is_some() {
                j = (j + 1) & mask;
            }
            table[j] = Some((h, Box::from(*n), c as u32));
        }
        let listed_end = indices.iter().max().map_or(0, |i| i + 1);
        let indices = indices
            .iter()
            .enumerate()
            .map(|(c, i)| (*i, other_name + 1 + c as u32))
            .collect();
        Some(Dfa {
            names: table,
            indices,
            listed_end,
            other_name,
            other_index,
            classes: nc,
            trans,
            win,
        })
    }

    pub(crate) const START: u32 = 0;

    /// Class of member name `k` (`h` = `name_hash(k)`).
    #[inline(always)]
    pub(crate) fn name_class(&self, k: &[u8], h: u64) -> u32 {
        let mask = self.names.len() - 1;
        let mut j = h as usize & mask;
        while let Some((eh, n, c)) = &self.names[j] {
            if *eh == h && same(n.as_bytes(), k) {
                return *c;
            }
            j = (j + 1) & mask;
        }
        self.other_name
    }

    /// Indices from here on are all of one class (`other_index`), so step the DFA alike.
    #[inline]
    pub(crate) fn listed_end(&self) -> usize {
        self.listed_end
    }

    #[inline]
    pub(crate) fn other_index(&self) -> u32 {
        self.other_index
    }

    #[inline]
    pub(crate) fn index_class(&self, idx: usize) -> u32 {
        for &(i, c) in &self.indices {
            if i == idx {
                return c;
            }
        }
        self.other_index
    }

    #[inline]
    pub(crate) fn next(&self, state: u32, class: u32) -> u32 {
        self.trans[state as usize * self.classes + class as usize]
    }

    #[inline]
    pub(crate) fn win(&self, state: u32) -> Option<Win> {
        self.win[state as usize]
    }

    #[cfg(test)]
    pub(crate) fn state_count(&self) -> usize {
        self.win.len()
    }
}
