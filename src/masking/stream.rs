//! Streaming masker: the common case (fast paths, `key` rules and detectors; no slow-path
//! rule) masks in one pass over the bytes, without building a `serde_json::Value` of the
//! document. Unselected members are copied through in compact form; a selected node alone
//! is parsed, transformed by its action and written back.
//!
//! The output is byte-for-byte what the tree walk in `engine` produces (compact serde_json,
//! numbers and escapes normalised the same way). Whatever would need the whole tree or could
//! differ — duplicate member names, escaped member names, negative index selectors, invalid
//! JSON, nesting near the limits — makes this pass give up (`None`), and the caller masks
//! with the tree walk, which also produces the exact error.

use super::engine::{depth_of, KeyInfo, Walker};
use super::path::{push_index, push_name, FastSel, StepRef};
use super::{FieldSet, MaskReport};
use serde_json::Value;
use std::collections::HashSet;

/// serde_json's recursion limit, minus a margin: deeper documents take the tree walk.
const MAX_STREAM_DEPTH: usize = 120;
/// Objects up to this many members are checked for duplicate names by a linear scan.
const LINEAR_DUP_CHECK: usize = 24;

/// Whether this set can be masked by the streaming pass at all.
pub(super) fn supported(set: &FieldSet) -> bool {
    set.slow.is_empty()
        && !set.fast.iter().any(|f| {
            f.segs.iter().any(|s| {
                s.sels
                    .iter()
                    .any(|x| matches!(x, FastSel::Index(i) if *i < 0))
            })
        })
}

struct Bail;

type R<T> = Result<T, Bail>;

#[derive(Clone, Copy)]
enum PStep<'a> {
    Key(&'a str),
    Index(usize),
}

#[derive(Default)]
struct Names<'a> {
    list: Vec<&'a str>,
    set: HashSet<&'a str>,
}

struct Stream<'s, 'r, 'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    out: Vec<u8>,
    w: Walker<'s, 'r>,
    path: Vec<PStep<'a>>,
    names: Vec<Names<'a>>,
    max_depth: usize,
}

/// Masks `text` (already checked to be UTF-8 without a BOM). `None`: use the tree walk.
pub(super) fn mask(
    set: &FieldSet,
    text: &str,
    max_depth: usize,
    report: &mut MaskReport,
) -> Option<Vec<u8>> {
    let mut s = Stream {
        text,
        b: text.as_bytes(),
        i: 0,
        out: Vec::with_capacity(text.len()),
        w: Walker::new(set, report, max_depth),
        path: Vec::with_capacity(16),
        names: Vec::new(),
        max_depth: max_depth.min(MAX_STREAM_DEPTH),
    };
    s.ws();
    let removed = s.value(0, 0, None).ok()?;
    if removed {
        // Removing the root is impossible; it becomes null (as the tree walk does).
        s.out.clear();
        s.out.extend_from_slice(b"null");
    }
    s.ws();
    (s.i == s.b.len()).then_some(s.out)
}

impl<'a> Stream<'_, '_, 'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> R<u8> {
        self.b.get(self.i).copied().ok_or(Bail)
    }

    fn render_path(&self) -> String {
        let mut s = String::with_capacity(64);
        s.push('$');
        for st in &self.path {
            match *st {
                PStep::Key(k) => push_name(&mut s, k),
                PStep::Index(i) => push_index(&mut s, i),
            }
        }
        s
    }

    fn note_masked(&mut self) {
        let p = self.render_path();
        self.w.report.paths.push(p);
        self.w.report.count += 1;
    }

    /// One value at NFA frame `off`. Returns true when it must be removed from its parent
    /// (nothing was written for it then).
    fn value(&mut self, off: usize, depth: usize, key: Option<KeyInfo>) -> R<bool> {
        if let Some(rule) = self.w.winner(off, None, key) {
            return self.selected(rule, depth);
        }
        match self.peek()? {
            b'{' => self.object(off, depth).map(|_| false),
            b'[' => self.array(off, depth).map(|_| false),
            b'"' => self.string().map(|_| false),
            b't' => self.literal(b"true").map(|_| false),
            b'f' => self.literal(b"false").map(|_| false),
            b'n' => self.literal(b"null").map(|_| false),
            _ => self.number().map(|_| false),
        }
    }

    /// A node some rule selects: parsed alone, its action applied, written back.
    fn selected(&mut self, rule: u32, depth: usize) -> R<bool> {
        let set = self.w.set;
        let action = &set.rules[rule as usize].action;
        let rest = &self.text[self.i..];
        let mut de = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let mut v = match de.next() {
            Some(Ok(v)) => v,
            _ => return Err(Bail),
        };
        let end = self.i + de.byte_offset();
        // The replaced subtree is not walked; its depth still counts against the limit.
        if (v.is_object() || v.is_array()) && depth + depth_of(&v) > self.max_depth {
            return Err(Bail);
        }
        self.i = end;
        self.note_masked();
        if action.apply(&mut v, set.pseudonymizer.as_deref()) {
            return Ok(true);
        }
        serde_json::to_writer(&mut self.out, &v).map_err(|_| Bail)?;
        Ok(false)
    }

    fn literal(&mut self, lit: &[u8]) -> R<()> {
        if self.b[self.i..].starts_with(lit) {
            self.out.extend_from_slice(lit);
            self.i += lit.len();
            Ok(())
        } else {
            Err(Bail)
        }
    }

    /// Scans a string token; returns its span (with quotes) and whether it has escapes.
    #[inline]
    fn scan_string(&mut self) -> R<(usize, usize, bool)> {
        let start = self.i;
        let mut j = start + 1;
        let mut escaped = false;
        loop {
            match self.b.get(j) {
                None => return Err(Bail),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    j += 2;
                }
                Some(c) if *c < 0x20 => return Err(Bail),
                Some(_) => j += 1,
            }
        }
        self.i = j + 1;
        Ok((start, j + 1, escaped))
    }

    /// An unselected string: the detector backstop, then copied (or re-escaped as serde does).
    fn string(&mut self) -> R<()> {
        let (start, end, escaped) = self.scan_string()?;
        let decoded: String;
        let s: &str = if escaped {
            decoded = serde_json::from_str(&self.text[start..end]).map_err(|_| Bail)?;
            &decoded
        } else {
            &self.text[start + 1..end - 1]
        };
        let set = self.w.set;
        if !set.detectors.is_empty() && !set.pseudonymizer.as_deref().is_some_and(|p| p.is_token(s))
        {
            if let Some(new) = set.detectors.scrub(s) {
                self.note_masked();
                return serde_json::to_writer(&mut self.out, &new).map_err(|_| Bail);
            }
        }
        if escaped {
            serde_json::to_writer(&mut self.out, s).map_err(|_| Bail)
        } else {
            self.out.extend_from_slice(&self.b[start..end]);
            Ok(())
        }
    }

    /// A number: plain integers serde_json keeps as integers are copied; anything else
    /// (fractions, exponents, -0, beyond 64 bits) is parsed and written as serde does.
    fn number(&mut self) -> R<()> {
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
        self.i = j;
        let tok = &self.text[start..j];
        if simple {
            let mag = &self.text[digits..int_end];
            let fits = if neg {
                mag != "0" && tok.parse::<i64>().is_ok()
            } else {
                mag.parse::<u64>().is_ok()
            };
            if fits {
                self.out.extend_from_slice(tok.as_bytes());
                return Ok(());
            }
        }
        let n: Value = serde_json::from_str(tok).map_err(|_| Bail)?;
        serde_json::to_writer(&mut self.out, &n).map_err(|_| Bail)
    }

    fn object(&mut self, off: usize, depth: usize) -> R<()> {
        if depth >= self.max_depth {
            return Err(Bail);
        }
        let r = self.w.set.fast.len();
        if self.names.len() <= depth {
            self.names.resize_with(depth + 1, Names::default);
        }
        self.names[depth].list.clear();
        self.names[depth].set.clear();
        self.i += 1;
        self.out.push(b'{');
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            self.out.push(b'}');
            return Ok(());
        }
        let mut written = 0usize;
        loop {
            if self.peek()? != b'"' {
                return Err(Bail);
            }
            let (ks, ke, escaped) = self.scan_string()?;
            if escaped {
                return Err(Bail);
            }
            let k: &'a str = &self.text[ks + 1..ke - 1];
            self.check_duplicate(depth, k)?;
            self.ws();
            if self.peek()? != b':' {
                return Err(Bail);
            }
            self.i += 1;
            self.ws();
            let info = if self.w.set.needs_key_info {
                self.w.key_info(k)
            } else {
                KeyInfo {
                    key_rules: 0,
                    named: false,
                }
            };
            if r > 0 {
                self.w.step_states(off, StepRef::Key(k), info.named);
            }
            let mark = self.out.len();
            if written > 0 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(&self.b[ks..ke]);
            self.out.push(b':');
            self.path.push(PStep::Key(k));
            let removed = self.value(off + r, depth + 1, Some(info))?;
            self.path.pop();
            if removed {
                self.out.truncate(mark);
            } else {
                written += 1;
            }
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b'}' => {
                    self.i += 1;
                    self.out.push(b'}');
                    return Ok(());
                }
                _ => return Err(Bail),
            }
        }
    }

    /// serde_json keeps one member per name (the last value, at the first position): such
    /// objects take the tree walk.
    #[inline]
    fn check_duplicate(&mut self, depth: usize, k: &'a str) -> R<()> {
        let n = &mut self.names[depth];
        if n.list.len() < LINEAR_DUP_CHECK {
            if n.list.iter().any(|x| x.len() == k.len() && *x == k) {
                return Err(Bail);
            }
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

    fn array(&mut self, off: usize, depth: usize) -> R<()> {
        if depth >= self.max_depth {
            return Err(Bail);
        }
        let r = self.w.set.fast.len();
        self.i += 1;
        self.out.push(b'[');
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            self.out.push(b']');
            return Ok(());
        }
        let (mut idx, mut written) = (0usize, 0usize);
        loop {
            if r > 0 {
                // No negative index selector here (see `supported`): the length is unused.
                self.w.step_states(
                    off,
                    StepRef::Index {
                        idx,
                        len: usize::MAX,
                    },
                    false,
                );
            }
            let mark = self.out.len();
            if written > 0 {
                self.out.push(b',');
            }
            self.path.push(PStep::Index(idx));
            let removed = self.value(off + r, depth + 1, None)?;
            self.path.pop();
            if removed {
                self.out.truncate(mark);
            } else {
                written += 1;
            }
            idx += 1;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    self.ws();
                }
                b']' => {
                    self.i += 1;
                    self.out.push(b']');
                    return Ok(());
                }
                _ => return Err(Bail),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! `mask_document` compares both engines on every call under `cfg(test)`; these cases
    //! make sure the streaming pass is really taken for them, and cover its edges.
    use super::super::{FieldRules, MaskReport};

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
"#;

    fn set(name: &str) -> std::sync::Arc<super::super::FieldSet> {
        let r =
            FieldRules::compile(YAML, Some("dana@clinic.example"), &|_| Some("k".into())).unwrap();
        r.set(name).unwrap().clone()
    }

    fn streams(doc: &str) -> bool {
        let s = set("patient");
        let mut rep = MaskReport::default();
        let streamed = super::mask(&s, doc, 128, &mut rep).is_some();
        // Compares with the tree walk (cfg(test)), or produces the tree walk's error.
        let _ = s.mask_document(doc.as_bytes(), 128);
        streamed
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
    fn falls_back_where_it_must() {
        for doc in [
            r#"{"a":1,"a":2}"#,   // duplicate names
            r#"{"\u0061":1}"#,    // escaped name
            r#"{"a":1} x"#,       // trailing garbage (an error, from the tree walk)
            r#"{"a":[1,2,]}"#,    // invalid
            r#"{"a":"ctl	tab"}"#, // raw control character
            r#"{"a":01}"#,        // leading zero
        ] {
            assert!(!streams(doc), "streamed {doc}");
        }
        let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
        assert!(!streams(&deep));
        assert!(!super::supported(&set("neg")));
        assert!(super::supported(&set("patient")));
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
}
