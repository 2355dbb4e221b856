//! JSON masking engine: compiles the DPO's `fields.yaml` once and masks JSON
//! documents / NDJSON lines with it.
//!
//! Semantics (see also `FieldSet::describe`):
//! - All selectors (paths, `key` regexes) are evaluated against the original
//!   document; removals are applied after each container has been walked.
//! - When several rules select the same node, the most destructive action
//!   wins (remove > null > redact > replace > value transforms), then field
//!   (`path`) rules before `key` rules, then file order.
//! - A selected node is replaced as a whole; nothing below it is examined.
//! - The detector backstop runs on every string not selected by a rule
//!   (pseudonym tokens of the current key are skipped).

pub mod actions;
mod config;
#[cfg(test)]
mod cts;
pub mod detect;
mod dfa;
mod engine;
mod finders;
pub mod gather;
mod measure;
pub mod path;
#[cfg(target_arch = "x86_64")]
mod sha_ni;
mod stream;
pub(crate) use stream::needs_escape;
#[cfg(test)]
mod tests;

pub use actions::{Action, Pseudonymizer, REDACTED};
pub use path::{parse_normalized, to_pointer, Step};

use crate::per_thread::PerThread;
use detect::Detectors;
use jsonpath_rust::parser::model::JpQuery;
use path::FastSeg;
use regex::Regex;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// A load error in fields.yaml (1-based line/column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleIssue {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl std::fmt::Display for RuleIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {} column {}: {}",
            self.line, self.column, self.message
        )
    }
}

/// What was masked: normalized JSONPaths (RFC 9535 §2.7), never values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskReport {
    /// Every masked node, exact.
    pub count: usize,
    /// The first `MAX_PATHS` masked nodes, in document order.
    pub paths: Paths,
    /// More than `MAX_PATHS` nodes were masked (`paths` holds the first ones).
    pub truncated: bool,
}

impl MaskReport {
    /// Paths kept per report: the audit log keeps no more, and rendering a path for each of
    /// thousands of masked fields would cost more than masking them.
    pub const MAX_PATHS: usize = 200;

    /// Counts one masked node; its path is rendered (appended by `render`) only while
    /// under the cap.
    #[inline]
    pub(crate) fn note(&mut self, render: impl FnOnce(&mut String)) {
        self.count += 1;
        if self.paths.len() < Self::MAX_PATHS {
            self.paths.push_with(render);
        } else {
            self.truncated = true;
        }
    }

    /// `note` for a node past the cap (no path to render): a plain count, for callers that
    /// test the cap themselves.
    #[inline(always)]
    pub(crate) fn note_past_cap(&mut self) {
        self.count += 1;
        self.truncated = true;
    }
}

/// A list of paths in one buffer: noting a masked node allocates nothing (a 64 KB patient
/// list notes 200, and an allocation each was a measurable share of masking it).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Paths {
    text: String,
    /// End of each path in `text` (each starts where the one before ends).
    ends: Vec<usize>,
}

impl Paths {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.text[start..end])
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + Clone + '_ {
        (0..self.len()).map(|i| &self[i])
    }

    pub fn contains(&self, path: &str) -> bool {
        self.iter().any(|p| p == path)
    }

    /// Every path, one after the other (to check them all for escapes in one pass).
    pub fn joined(&self) -> &str {
        &self.text
    }

    /// Appends the path `render` appends to the buffer.
    #[inline]
    pub(crate) fn push_with(&mut self, render: impl FnOnce(&mut String)) {
        render(&mut self.text);
        self.ends.push(self.text.len());
    }
}

impl std::ops::Index<usize> for Paths {
    type Output = str;
    fn index(&self, i: usize) -> &str {
        self.get(i).expect("path index in range")
    }
}

impl std::fmt::Debug for Paths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl serde::Serialize for Paths {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<S: AsRef<str>> PartialEq<[S]> for Paths {
    fn eq(&self, other: &[S]) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b.as_ref())
    }
}

impl<S: AsRef<str>> PartialEq<Vec<S>> for Paths {
    fn eq(&self, other: &Vec<S>) -> bool {
        *self == other[..]
    }
}

impl<S: AsRef<str>, const N: usize> PartialEq<[S; N]> for Paths {
    fn eq(&self, other: &[S; N]) -> bool {
        *self == other[..]
    }
}

impl<S: AsRef<str>> FromIterator<S> for Paths {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut paths = Paths::default();
        for p in iter {
            paths.push_with(|t| t.push_str(p.as_ref()));
        }
        paths
    }
}

/// Why a body could not be masked. Messages never contain body content.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MaskError {
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("JSON nesting exceeds the depth limit")]
    TooDeep,
    #[error("body starts with a UTF-8 byte order mark")]
    Bom,
    #[error("body is not valid UTF-8")]
    InvalidUtf8,
    #[error("failed to serialize masked JSON")]
    Serialize,
}

/// serde_json's own recursion limit; documents nested deeper always fail.
pub const SERDE_JSON_DEPTH_LIMIT: usize = 128;

#[derive(Debug)]
pub(crate) struct RuleInfo {
    pub action: Action,
    /// The JSON text every selected node becomes, when that does not depend on the node
    /// (`null`, `redact`, `replace`): the streaming masker writes it without a transform.
    pub constant: Option<Box<[u8]>>,
    /// `constant` when it fits 16 bytes, padded with zeros: written as one 16-byte move.
    pub constant16: Option<[u8; 16]>,
    /// How the streaming masker writes a plain string when the action is a `mask`.
    pub direct_mask: Option<actions::DirectMask>,
    /// Index in the set's `fields` list (file order).
    pub position: u32,
    pub display: String,
}

impl RuleInfo {
    pub(crate) fn new(action: Action, position: u32, display: String) -> RuleInfo {
        let constant = action.constant_json();
        let constant16 = constant.as_deref().filter(|c| c.len() <= 16).map(|c| {
            let mut pad = [0u8; 16];
            pad[..c.len()].copy_from_slice(c);
            pad
        });
        RuleInfo {
            constant,
            constant16,
            direct_mask: actions::DirectMask::of(&action),
            action,
            position,
            display,
        }
    }
}

#[derive(Debug)]
pub(crate) struct FastRule {
    pub segs: Vec<FastSeg>,
    /// Bit of the accepting state.
    pub accept: u64,
    /// States that are `..` segments (self-loop on any step).
    pub desc_mask: u64,
    /// States whose selectors include `*` (advance on any step).
    pub wild_mask: u64,
    pub rule: u32,
}

#[derive(Debug)]
pub(crate) struct KeyRule {
    pub re: PerThread<Regex>,
    pub rule: u32,
    /// Shortest member name that can match.
    pub min_len: usize,
    /// Longest matching member name, when the regex is anchored at both ends.
    pub max_len: Option<usize>,
}

/// Names used by fast-path name selectors. Usually a handful, where a
/// length-filtered scan beats hashing every member name.
#[derive(Debug, Default)]
pub(crate) struct NameSet {
    small: Vec<String>,
    large: HashSet<String>,
}

impl NameSet {
    const SMALL: usize = 16;

    pub fn insert(&mut self, n: &str) {
        if self.small.iter().any(|x| x == n) || self.large.contains(n) {
            return;
        }
        if self.large.is_empty() && self.small.len() < Self::SMALL {
            self.small.push(n.to_string());
        } else {
            self.large.extend(self.small.drain(..));
            self.large.insert(n.to_string());
        }
    }

    #[inline]
    pub fn contains(&self, n: &str) -> bool {
        if self.large.is_empty() {
            self.small.iter().any(|x| x.len() == n.len() && x == n)
        } else {
            self.large.contains(n)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.small.is_empty() && self.large.is_empty()
    }
}

/// One compiled set of fields.yaml.
#[derive(Debug)]
pub struct FieldSet {
    name: String,
    pub(crate) rules: Vec<RuleInfo>,
    pub(crate) fast: Vec<FastRule>,
    /// Every name selector used by a fast rule (skip NFA work for other keys).
    pub(crate) fast_names: NameSet,
    pub(crate) slow: Vec<(JpQuery, u32)>,
    pub(crate) keys: Vec<KeyRule>,
    pub(crate) needs_key_info: bool,
    /// The fast rules as one DFA, for the streaming masker (`None`: use the tree walk).
    pub(crate) dfa: Option<dfa::Dfa>,
    pub(crate) detectors: Detectors,
    pub(crate) pseudonymizer: Option<Arc<Pseudonymizer>>,
}

/// Compiled fields.yaml.
#[derive(Debug)]
pub struct FieldRules {
    owner: String,
    sets: BTreeMap<String, Arc<FieldSet>>,
}

impl FieldRules {
    /// Parse + validate + compile fields.yaml text. `dpo_user` is the one user
    /// whose data_access is dpo; `key_lookup` resolves `pseudonym_key_env`.
    /// Returns every issue found (YAML structure errors stop at the first).
    pub fn compile(
        yaml: &str,
        dpo_user: Option<&str>,
        key_lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<FieldRules, Vec<RuleIssue>> {
        let (owner, sets) = config::compile(yaml, dpo_user, key_lookup)?;
        Ok(FieldRules {
            owner,
            sets: sets.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn set(&self, name: &str) -> Option<&Arc<FieldSet>> {
        self.sets.get(name)
    }

    /// Set names in sorted order.
    pub fn set_names(&self) -> impl Iterator<Item = &str> {
        self.sets.keys().map(String::as_str)
    }
}

fn classify_json_error(e: &serde_json::Error) -> MaskError {
    let msg = e.to_string();
    if msg.starts_with("recursion limit exceeded") {
        MaskError::TooDeep
    } else {
        // serde_json's messages for `Value` are fixed texts plus a position;
        // they never echo document content.
        MaskError::InvalidJson(msg)
    }
}

/// `body` as text, when it is UTF-8. Most API bodies are ASCII, which a wide OR over 64
/// bytes a step confirms in a fraction of `from_utf8`'s time; anything else takes the
/// full check.
fn utf8(body: &[u8]) -> Option<&str> {
    if gather::is_ascii(body) {
        // SAFETY: every byte is below 0x80, and ASCII is valid UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(body) });
    }
    std::str::from_utf8(body).ok()
}

impl FieldSet {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Masks one JSON document. Strict: exactly one JSON value; invalid UTF-8,
    /// a BOM, trailing non-whitespace, nesting deeper than `max_depth`
    /// (containers counted; at most 128 in any case) and numbers out of f64
    /// range are errors. Output is compact JSON.
    pub fn mask_document(
        &self,
        body: &[u8],
        max_depth: usize,
    ) -> Result<(Vec<u8>, MaskReport), MaskError> {
        if body.starts_with(b"\xEF\xBB\xBF") {
            return Err(MaskError::Bom);
        }
        let text = utf8(body).ok_or(MaskError::InvalidUtf8)?;
        self.mask_text(text, false, max_depth)
    }

    /// `mask_document` of a gathered body, which skips the UTF-8 pass when the body was
    /// found to be ASCII as it arrived (no BOM then either).
    pub fn mask_gathered(
        &self,
        body: &gather::Gathered,
        max_depth: usize,
    ) -> Result<(Vec<u8>, MaskReport), MaskError> {
        match body.ascii_text() {
            Some(text) => self.mask_text(text, true, max_depth),
            None => self.mask_document(body.bytes(), max_depth),
        }
    }

    /// `ascii`: `text` is known to be all ASCII.
    fn mask_text(
        &self,
        text: &str,
        ascii: bool,
        max_depth: usize,
    ) -> Result<(Vec<u8>, MaskReport), MaskError> {
        if stream::supported(self) {
            let mut report = MaskReport::default();
            if let Some(out) = stream::mask(self, text, ascii, max_depth, &mut report) {
                #[cfg(test)]
                {
                    // Every unit test doubles as a check that both engines agree exactly.
                    let tree = self.mask_tree(text, max_depth);
                    assert_eq!(
                        tree.as_ref().map(|(o, r)| (String::from_utf8_lossy(o), r)),
                        Ok((String::from_utf8_lossy(&out), &report)),
                        "streaming and tree masking differ for {text}"
                    );
                }
                return Ok((out, report));
            }
        }
        self.mask_tree(text, max_depth)
    }

    /// The tree walk: parse into a `Value`, mask it, serialize it.
    fn mask_tree(&self, text: &str, max_depth: usize) -> Result<(Vec<u8>, MaskReport), MaskError> {
        let mut value: Value = serde_json::from_str(text).map_err(|e| classify_json_error(&e))?;
        let mut report = MaskReport::default();
        self.mask_inner(&mut value, &mut report, max_depth)?;
        // Output is about as large as the input: avoid repeated regrowth.
        let mut out = Vec::with_capacity(text.len());
        serde_json::to_writer(&mut out, &value).map_err(|_| MaskError::Serialize)?;
        Ok((out, report))
    }

    /// Masks an already-parsed value in place (no depth limit).
    pub fn mask_value(&self, value: &mut Value, report: &mut MaskReport) {
        // Cannot fail without a depth limit.
        let _ = self.mask_inner(value, report, usize::MAX);
    }

    /// Masks one NDJSON line (without its newline); same strictness as
    /// `mask_document`. An empty/whitespace-only line yields empty output.
    pub fn mask_line(
        &self,
        line: &[u8],
        max_depth: usize,
    ) -> Result<(Vec<u8>, MaskReport), MaskError> {
        if line
            .iter()
            .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            return Ok((Vec::new(), MaskReport::default()));
        }
        self.mask_document(line, max_depth)
    }

    fn mask_inner(
        &self,
        value: &mut Value,
        report: &mut MaskReport,
        max_depth: usize,
    ) -> Result<(), MaskError> {
        let trie = engine::slow_hits(self, value);
        let mut w = engine::Walker::new(self, report, max_depth);
        w.run(value, trie.as_ref());
        if w.too_deep {
            return Err(MaskError::TooDeep);
        }
        Ok(())
    }

    /// Bit i: key rule i matches member name `k`.
    pub(crate) fn key_rule_bits(&self, k: &str) -> u64 {
        let mut key_rules = 0u64;
        for (bit, kr) in self.keys.iter().enumerate() {
            // Length bounds from the regex skip most evaluations.
            if k.len() >= kr.min_len
                && kr.max_len.is_none_or(|m| k.len() <= m)
                && kr.re.get().is_match(k)
            {
                key_rules |= 1 << bit;
            }
        }
        key_rules
    }

    /// Human-readable rule descriptions, e.g. `$..ssn -> redact`.
    pub fn describe(&self) -> Vec<String> {
        let mut out: Vec<String> = self.rules.iter().map(|r| r.display.clone()).collect();
        if !self.detectors.is_empty() {
            out.push(format!(
                "detect in remaining strings: {}",
                self.detectors.names().join(", ")
            ));
        }
        out.push(
            "precedence: remove > null > redact > replace > other actions; \
             path rules before key rules; then file order"
                .into(),
        );
        out
    }
}
