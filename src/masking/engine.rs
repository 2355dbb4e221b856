//! The masking walk: one recursive pass over the document that evaluates all
//! fast paths (as NFA state bitsets), `key` rules, precomputed slow-path hits
//! and the detector backstop. Every selector sees the ORIGINAL document
//! (removals are deferred to the end of each container), so rule order cannot
//! change what another rule selects.

use super::path::{advance, parse_normalized, push_index, push_name, Step, StepRef};
use super::{FieldSet, MaskReport};
use serde_json::Value;
use std::collections::HashMap;

/// Hits of slow-path (jsonpath-rust) rules as a trie over original paths.
#[derive(Default)]
pub struct Trie {
    hits: Vec<u32>,
    keys: HashMap<String, Trie>,
    idx: HashMap<usize, Trie>,
}

impl Trie {
    fn insert(&mut self, steps: Vec<Step>, rule: u32) {
        let mut t = self;
        for s in steps {
            t = match s {
                Step::Key(k) => t.keys.entry(k).or_default(),
                Step::Index(i) => t.idx.entry(i).or_default(),
            };
        }
        if !t.hits.contains(&rule) {
            t.hits.push(rule);
        }
    }
}

/// Runs the slow-path queries on the untouched document.
pub fn slow_hits(set: &FieldSet, doc: &Value) -> Option<Trie> {
    if set.slow.is_empty() {
        return None;
    }
    let mut trie = Trie::default();
    for (q, rule) in &set.slow {
        if let Ok(refs) = jsonpath_rust::query::js_path_process(q, doc) {
            for r in refs {
                // Paths come from jsonpath-rust's normal-form printer; a parse
                // failure would be a bug there, so fail closed on the root.
                let steps = parse_normalized(&r.path).unwrap_or_default();
                trie.insert(steps, *rule);
            }
        }
    }
    Some(trie)
}

/// Per member name: which key rules match, and whether any fast-path name
/// selector mentions it.
#[derive(Clone, Copy)]
pub(super) struct KeyInfo {
    pub key_rules: u64,
    pub named: bool,
}

/// Linked path on the call stack; turned into a string only for reports.
struct PathNode<'a> {
    parent: Option<&'a PathNode<'a>>,
    step: StepRef<'a>,
}

fn render(s: &mut String, node: Option<&PathNode<'_>>) {
    fn push(out: &mut String, n: &PathNode<'_>) {
        if let Some(p) = n.parent {
            push(out, p);
        }
        match n.step {
            StepRef::Key(k) => push_name(out, k),
            StepRef::Index { idx, .. } => push_index(out, idx),
        }
    }
    s.push('$');
    if let Some(n) = node {
        push(s, n);
    }
}

pub struct Walker<'s, 'r> {
    pub(super) set: &'s FieldSet,
    pub(super) report: &'r mut MaskReport,
    /// Fast-rule NFA states, one frame of `set.fast.len()` words per depth.
    states: Vec<u64>,
    /// Per frame: whether the next frame holds this frame's transition on a member name
    /// no selector mentions (then the next such step has nothing to recompute).
    unnamed_next: Vec<bool>,
    pub(super) max_depth: usize,
    pub too_deep: bool,
}

impl<'s, 'r> Walker<'s, 'r> {
    pub fn new(set: &'s FieldSet, report: &'r mut MaskReport, max_depth: usize) -> Self {
        let r = set.fast.len();
        let mut states = vec![0u64; r * 8];
        for s in states.iter_mut().take(r) {
            *s = 1;
        }
        Walker {
            set,
            report,
            states,
            unnamed_next: vec![false; 8],
            max_depth,
            too_deep: false,
        }
    }

    /// Masks the root. Removing the root is impossible; it becomes null.
    pub fn run(&mut self, root: &mut Value, trie: Option<&Trie>) {
        if self.visit(root, 0, 0, trie, None, None) {
            *root = Value::Null;
        }
    }

    pub(super) fn key_info(&self, k: &str) -> KeyInfo {
        KeyInfo {
            key_rules: self.set.key_rule_bits(k),
            named: self.set.fast_names.contains(k),
        }
    }

    /// Child NFA frame at `off + R` from the frame at `off`.
    pub(super) fn step_states(&mut self, off: usize, step: StepRef<'_>, named: bool) {
        let r = self.set.fast.len();
        if self.states.len() < off + 2 * r {
            self.states.resize(off + 2 * r, 0);
        }
        let frame = off / r;
        if self.unnamed_next.len() < frame + 2 {
            self.unnamed_next.resize(frame + 2, false);
        }
        let unnamed = !named && matches!(step, StepRef::Key(_));
        if unnamed && self.unnamed_next[frame] {
            return;
        }
        // The next frame changes: what was derived from it is stale.
        self.unnamed_next[frame] = unnamed;
        self.unnamed_next[frame + 1] = false;
        let (cur, next) = self.states[off..off + 2 * r].split_at_mut(r);
        for (i, fr) in self.set.fast.iter().enumerate() {
            let s = cur[i];
            next[i] = if s == 0 {
                0
            } else if named || matches!(step, StepRef::Index { .. }) {
                advance(&fr.segs, s, step)
            } else {
                // Name selectors cannot match: only `..` self-loops and
                // wildcards move the NFA.
                (s & fr.desc_mask) | ((s & fr.wild_mask) << 1)
            };
        }
    }

    /// The rule selecting the node at NFA frame `off`, if any: the lowest
    /// (rank, is_key_rule, file position) among the fast rules accepting here,
    /// the slow-path hits and the key rules of its member name.
    #[inline]
    pub(super) fn winner(
        &self,
        off: usize,
        trie: Option<&Trie>,
        key: Option<KeyInfo>,
    ) -> Option<u32> {
        let mut best: Option<(u8, bool, u32, u32)> = None;
        let mut consider = |rule: u32, is_key: bool| {
            let a = &self.set.rules[rule as usize];
            let cand = (a.action.rank(), is_key, a.position, rule);
            if best.is_none_or(|b| cand < b) {
                best = Some(cand);
            }
        };
        for (i, fr) in self.set.fast.iter().enumerate() {
            if self.states[off + i] & fr.accept != 0 {
                consider(fr.rule, false);
            }
        }
        if let Some(t) = trie {
            for &rule in &t.hits {
                consider(rule, false);
            }
        }
        if let Some(mut bits) = key.map(|k| k.key_rules) {
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                consider(self.set.keys[b].rule, true);
            }
        }
        best.map(|(_, _, _, rule)| rule)
    }

    /// Returns true if the node must be removed from its parent.
    fn visit(
        &mut self,
        v: &mut Value,
        off: usize,
        depth: usize,
        trie: Option<&Trie>,
        key: Option<KeyInfo>,
        path: Option<&PathNode<'_>>,
    ) -> bool {
        if let Some(rule) = self.winner(off, trie, key) {
            // The replaced subtree is not walked; still enforce the depth limit.
            if (v.is_object() || v.is_array()) && depth + depth_of(v) > self.max_depth {
                self.too_deep = true;
                return false;
            }
            self.report.note(|s| render(s, path));
            let action = &self.set.rules[rule as usize].action;
            return action.apply(v, self.set.pseudonymizer.as_deref());
        }

        let r = self.set.fast.len();
        match v {
            Value::Object(map) => {
                if depth >= self.max_depth {
                    self.too_deep = true;
                    return false;
                }
                let mut removed: Vec<String> = Vec::new();
                for (k, c) in map.iter_mut() {
                    let info = if self.set.needs_key_info {
                        self.key_info(k)
                    } else {
                        KeyInfo {
                            key_rules: 0,
                            named: false,
                        }
                    };
                    let step = StepRef::Key(k);
                    if r > 0 {
                        self.step_states(off, step, info.named);
                    }
                    let child_trie = trie.and_then(|t| t.keys.get(k.as_str()));
                    let node = PathNode { parent: path, step };
                    if self.visit(c, off + r, depth + 1, child_trie, Some(info), Some(&node)) {
                        removed.push(k.clone());
                    }
                    if self.too_deep {
                        return false;
                    }
                }
                for k in removed {
                    // shift_remove keeps the order of the other members.
                    map.shift_remove(&k);
                }
            }
            Value::Array(items) => {
                if depth >= self.max_depth {
                    self.too_deep = true;
                    return false;
                }
                let len = items.len();
                let mut removed: Vec<usize> = Vec::new();
                for (idx, c) in items.iter_mut().enumerate() {
                    let step = StepRef::Index { idx, len };
                    if r > 0 {
                        self.step_states(off, step, false);
                    }
                    let child_trie = trie.and_then(|t| t.idx.get(&idx));
                    let node = PathNode { parent: path, step };
                    if self.visit(c, off + r, depth + 1, child_trie, None, Some(&node)) {
                        removed.push(idx);
                    }
                    if self.too_deep {
                        return false;
                    }
                }
                if !removed.is_empty() {
                    // `removed` is ascending and Vec::retain visits in order.
                    let mut i = 0;
                    let mut next = removed.iter().peekable();
                    items.retain(|_| {
                        let drop = next.peek() == Some(&&i);
                        if drop {
                            next.next();
                        }
                        i += 1;
                        !drop
                    });
                }
            }
            // Our own pseudonym tokens are never scanned (base64 may look numeric).
            Value::String(s)
                if !self.set.detectors.is_empty()
                    && !self
                        .set
                        .pseudonymizer
                        .as_deref()
                        .is_some_and(|p| p.is_token(s)) =>
            {
                if let Some(new) = self.set.detectors.scrub(s) {
                    *s = new;
                    self.report.note(|s| render(s, path));
                }
            }
            _ => {}
        }
        false
    }
}

/// Nesting depth of a value (containers count 1); used by `mask_value` callers
/// and tests.
pub fn depth_of(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth_of).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}
