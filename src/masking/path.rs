//! JSONPath compilation (fast matcher vs. jsonpath-rust slow path) and
//! RFC 9535 §2.7 normalized-path parsing/formatting.

use jsonpath_rust::parser::model::{
    Comparable, Filter, FilterAtom, FnArg, JpQuery, Segment, Selector, Test, TestFunction,
};
use jsonpath_rust::parser::parse_json_path;
use serde_json::Value;
use std::fmt::Write as _;

/// One step of a location inside a JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// A selector the fast matcher understands.
#[derive(Debug, Clone, PartialEq)]
pub enum FastSel {
    Name(String),
    Wildcard,
    Index(i64),
}

/// One segment of a fast path: `descendant` means `..` (the node itself or any
/// descendant, then the selectors applied to its children).
#[derive(Debug, Clone, PartialEq)]
pub struct FastSeg {
    pub descendant: bool,
    pub sels: Vec<FastSel>,
}

/// Fast paths are NFAs over steps; states are bits of a u64, so the segment
/// count must stay below 64 (bit `segs.len()` is the accepting state).
pub const MAX_FAST_SEGMENTS: usize = 63;

#[derive(Debug, Clone)]
pub enum CompiledPath {
    /// Evaluated by our own matcher during the single masking walk.
    Fast(Vec<FastSeg>),
    /// Filters/slices: evaluated with jsonpath-rust on the parsed query.
    Slow(JpQuery),
}

/// A step as seen by the matcher while walking: keys borrow from the document,
/// indices carry the array length so negative index selectors can resolve.
#[derive(Debug, Clone, Copy)]
pub enum StepRef<'a> {
    Key(&'a str),
    Index { idx: usize, len: usize },
}

impl FastSel {
    #[inline]
    fn matches(&self, step: StepRef<'_>) -> bool {
        match (self, step) {
            (FastSel::Wildcard, _) => true,
            (FastSel::Name(n), StepRef::Key(k)) => n == k,
            (FastSel::Index(i), StepRef::Index { idx, len }) => {
                if *i >= 0 {
                    *i as u64 == idx as u64
                } else {
                    // -1 is the last element; out-of-range negatives select nothing.
                    let back = i.unsigned_abs();
                    back <= len as u64 && (len as u64 - back) == idx as u64
                }
            }
            _ => false,
        }
    }
}

/// Advances the NFA state set `states` of a fast path by one child step.
#[inline]
pub fn advance(segs: &[FastSeg], states: u64, step: StepRef<'_>) -> u64 {
    let mut out = 0u64;
    let mut s = states;
    while s != 0 {
        let i = s.trailing_zeros() as usize;
        s &= s - 1;
        if i >= segs.len() {
            continue;
        }
        let seg = &segs[i];
        if seg.descendant {
            // `..` may skip any number of levels before its selectors apply.
            out |= 1 << i;
        }
        if seg.sels.iter().any(|sel| sel.matches(step)) {
            out |= 1 << (i + 1);
        }
    }
    out
}

/// Error while compiling a path; the message is user-facing (load error).
#[derive(Debug, Clone, PartialEq)]
pub struct PathError(pub String);

/// Parses and classifies a JSONPath. Forms whose evaluation is known to diverge
/// from RFC 9535 (see CTS_GAPS.md) are rejected instead of silently selecting
/// something else.
pub fn compile_path(path: &str) -> Result<CompiledPath, PathError> {
    let q = parse_json_path(path).map_err(|e| PathError(format!("invalid JSONPath: {e}")))?;
    match to_fast(&q) {
        Some(segs) => Ok(CompiledPath::Fast(segs)),
        None => {
            check_slow_supported(&q)?;
            Ok(CompiledPath::Slow(q))
        }
    }
}

fn to_fast(q: &JpQuery) -> Option<Vec<FastSeg>> {
    if q.segments.len() > MAX_FAST_SEGMENTS {
        return None;
    }
    let conv = |s: &Selector| match s {
        Selector::Name(n) => Some(FastSel::Name(n.clone())),
        Selector::Wildcard => Some(FastSel::Wildcard),
        Selector::Index(i) => Some(FastSel::Index(*i)),
        _ => None,
    };
    let plain = |seg: &Segment| -> Option<Vec<FastSel>> {
        match seg {
            Segment::Selector(s) => Some(vec![conv(s)?]),
            Segment::Selectors(v) => v.iter().map(conv).collect(),
            Segment::Descendant(_) => None,
        }
    };
    q.segments
        .iter()
        .map(|seg| match seg {
            Segment::Descendant(inner) => Some(FastSeg {
                descendant: true,
                sels: plain(inner)?,
            }),
            other => Some(FastSeg {
                descendant: false,
                sels: plain(other)?,
            }),
        })
        .collect()
}

/// Slow-path forms that jsonpath-rust 1.0.12 accepts although RFC 9535 makes
/// them invalid (function well-typedness, §2.4.3), or evaluates wrongly (a
/// filter selector nested inside a filter expression: `$[?@[?@>1]]` selects
/// nothing, `$[?!@[?@>1]]` everything). Both are load errors so a DPO rule can
/// never silently select fewer nodes than written.
fn check_slow_supported(q: &JpQuery) -> Result<(), PathError> {
    check_segments(&q.segments, false)
}

fn check_segments(segs: &[Segment], in_filter: bool) -> Result<(), PathError> {
    for seg in segs {
        match seg {
            Segment::Descendant(inner) => check_segments(std::slice::from_ref(inner), in_filter)?,
            Segment::Selector(s) => check_selector(s, in_filter)?,
            Segment::Selectors(v) => {
                for s in v {
                    check_selector(s, in_filter)?;
                }
            }
        }
    }
    Ok(())
}

fn check_selector(s: &Selector, in_filter: bool) -> Result<(), PathError> {
    if let Selector::Filter(f) = s {
        if in_filter {
            return Err(PathError(
                "unsupported JSONPath form: a filter selector nested inside a filter expression \
                 (evaluated incorrectly by the JSONPath engine)"
                    .into(),
            ));
        }
        check_filter(f)?;
    }
    Ok(())
}

fn check_filter(f: &Filter) -> Result<(), PathError> {
    match f {
        Filter::Or(v) | Filter::And(v) => v.iter().try_for_each(check_filter),
        Filter::Atom(FilterAtom::Filter { expr, .. }) => check_filter(expr),
        Filter::Atom(FilterAtom::Test { expr, .. }) => match &**expr {
            Test::RelQuery(segs) => check_segments(segs, true),
            Test::AbsQuery(q) => check_segments(&q.segments, true),
            Test::Function(func) => match &**func {
                TestFunction::Match(..) | TestFunction::Search(..) => check_function(func),
                TestFunction::Custom(name, _) => Err(unknown_fn(name)),
                _ => Err(PathError(format!(
                    "invalid JSONPath: the result of {func} must be compared"
                ))),
            },
        },
        Filter::Atom(FilterAtom::Comparison(c)) => {
            let (l, r) = c.vals();
            check_comparable(l)?;
            check_comparable(r)
        }
    }
}

fn unknown_fn(name: &str) -> PathError {
    PathError(format!("invalid JSONPath: unknown function {name}()"))
}

fn check_comparable(c: &Comparable) -> Result<(), PathError> {
    match c {
        Comparable::Function(func) => match func {
            TestFunction::Length(_) | TestFunction::Count(_) | TestFunction::Value(_) => {
                check_function(func)
            }
            TestFunction::Custom(name, _) => Err(unknown_fn(name)),
            _ => Err(PathError(format!(
                "invalid JSONPath: {func} returns a logical value and cannot be compared"
            ))),
        },
        _ => Ok(()),
    }
}

fn is_singular(segs: &[Segment]) -> bool {
    segs.iter().all(|s| {
        matches!(
            s,
            Segment::Selector(Selector::Name(_)) | Segment::Selector(Selector::Index(_))
        )
    })
}

/// A ValueType argument: literal, singular query, or a value-returning function.
fn check_value_arg(a: &FnArg, func: &TestFunction) -> Result<(), PathError> {
    let bad = || {
        PathError(format!(
            "invalid JSONPath: {func} needs a value argument (literal or singular query)"
        ))
    };
    match a {
        FnArg::Literal(_) => Ok(()),
        FnArg::Filter(_) => Err(bad()),
        FnArg::Test(t) => match &**t {
            Test::RelQuery(segs) if is_singular(segs) => check_segments(segs, true),
            Test::AbsQuery(q) if is_singular(&q.segments) => check_segments(&q.segments, true),
            Test::Function(f) => match &**f {
                TestFunction::Length(_) | TestFunction::Count(_) | TestFunction::Value(_) => {
                    check_function(f)
                }
                TestFunction::Custom(name, _) => Err(unknown_fn(name)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        },
    }
}

/// A NodesType argument: any query.
fn check_nodes_arg(a: &FnArg, func: &TestFunction) -> Result<(), PathError> {
    match a {
        FnArg::Test(t) => match &**t {
            Test::RelQuery(segs) => check_segments(segs, true),
            Test::AbsQuery(q) => check_segments(&q.segments, true),
            Test::Function(_) => Err(PathError(format!(
                "invalid JSONPath: {func} needs a query argument"
            ))),
        },
        _ => Err(PathError(format!(
            "invalid JSONPath: {func} needs a query argument"
        ))),
    }
}

fn check_function(func: &TestFunction) -> Result<(), PathError> {
    match func {
        TestFunction::Length(a) => check_value_arg(a, func),
        TestFunction::Count(a) | TestFunction::Value(a) => check_nodes_arg(a, func),
        TestFunction::Match(a, b) | TestFunction::Search(a, b) => {
            check_value_arg(a, func)?;
            check_value_arg(b, func)
        }
        TestFunction::Custom(name, _) => Err(unknown_fn(name)),
    }
}

/// Selects with a compiled path and returns normalized paths (used by the CTS
/// and by tests; masking uses the walk in `engine`).
pub fn select_paths(cp: &CompiledPath, doc: &Value) -> Vec<String> {
    match cp {
        CompiledPath::Slow(q) => jsonpath_rust::query::js_path_process(q, doc)
            .map(|v| v.into_iter().map(|r| r.path).collect())
            .unwrap_or_default(),
        CompiledPath::Fast(segs) => {
            let mut out = Vec::new();
            let mut stack: Vec<Step> = Vec::new();
            fast_collect(segs, doc, 1, &mut stack, &mut out);
            out
        }
    }
}

fn fast_collect(
    segs: &[FastSeg],
    v: &Value,
    states: u64,
    stack: &mut Vec<Step>,
    out: &mut Vec<String>,
) {
    if states & (1u64 << segs.len()) != 0 {
        out.push(format_normalized(stack));
    }
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let s = advance(segs, states, StepRef::Key(k));
                if s != 0 {
                    stack.push(Step::Key(k.clone()));
                    fast_collect(segs, c, s, stack, out);
                    stack.pop();
                }
            }
        }
        Value::Array(a) => {
            let len = a.len();
            for (idx, c) in a.iter().enumerate() {
                let s = advance(segs, states, StepRef::Index { idx, len });
                if s != 0 {
                    stack.push(Step::Index(idx));
                    fast_collect(segs, c, s, stack, out);
                    stack.pop();
                }
            }
        }
        _ => {}
    }
}

/// `name` is written as it is in a normalized path (`push_name` escapes nothing in it).
#[inline]
pub fn plain_name(name: &[u8]) -> bool {
    !name.iter().any(|&c| c == b'\'' || c == b'\\' || c < 0x20)
}

/// Appends `['name']` in RFC 9535 normal form (single quotes; `'`, `\` and
/// C0 controls escaped).
pub fn push_name(out: &mut String, name: &str) {
    out.push_str("['");
    // Most names need no escape: copy them whole.
    if plain_name(name.as_bytes()) {
        out.push_str(name);
        out.push_str("']");
        return;
    }
    for ch in name.chars() {
        match ch {
            '\u{0008}' => out.push_str("\\b"),
            '\u{000C}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            c if c < '\u{0020}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push_str("']");
}

pub fn push_index(out: &mut String, idx: usize) {
    // Without the formatting machinery: cheaper for the few digits of an index.
    let mut digits = [0u8; 20];
    let mut n = idx;
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push('[');
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
    out.push(']');
}

pub fn format_normalized(steps: &[Step]) -> String {
    let mut s = String::from("$");
    for st in steps {
        match st {
            Step::Key(k) => push_name(&mut s, k),
            Step::Index(i) => push_index(&mut s, *i),
        }
    }
    s
}

/// Parses a normalized path (`$['a'][0]['it\'s']`) into steps. Accepts the
/// escapes of RFC 9535 (`\b \f \n \r \t \' \\ \/ \" \uXXXX` incl. surrogate
/// pairs) and, leniently, double-quoted names.
pub fn parse_normalized(p: &str) -> Result<Vec<Step>, String> {
    let mut chars = p.chars().peekable();
    if chars.next() != Some('$') {
        return Err("normalized path must start with '$'".into());
    }
    let mut steps = Vec::new();
    while let Some(c) = chars.next() {
        if c != '[' {
            return Err(format!("expected '[' but found {c:?}"));
        }
        match chars.peek().copied() {
            Some(q @ ('\'' | '"')) => {
                chars.next();
                let mut name = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated name".into()),
                        Some(c) if c == q => break,
                        Some('\\') => {
                            let e = chars.next().ok_or("dangling escape")?;
                            match e {
                                'b' => name.push('\u{0008}'),
                                'f' => name.push('\u{000C}'),
                                'n' => name.push('\n'),
                                'r' => name.push('\r'),
                                't' => name.push('\t'),
                                '\'' | '"' | '\\' | '/' => name.push(e),
                                'u' => {
                                    let hi = read_hex4(&mut chars)?;
                                    let cp = if (0xD800..0xDC00).contains(&hi) {
                                        if chars.next() != Some('\\') || chars.next() != Some('u') {
                                            return Err("lone high surrogate".into());
                                        }
                                        let lo = read_hex4(&mut chars)?;
                                        if !(0xDC00..0xE000).contains(&lo) {
                                            return Err("invalid low surrogate".into());
                                        }
                                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                                    } else {
                                        hi
                                    };
                                    name.push(char::from_u32(cp).ok_or("invalid code point")?);
                                }
                                other => return Err(format!("invalid escape \\{other}")),
                            }
                        }
                        Some(c) => name.push(c),
                    }
                }
                steps.push(Step::Key(name));
            }
            Some(d) if d.is_ascii_digit() => {
                let mut n: usize = 0;
                while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                    chars.next();
                    n = n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(d as usize))
                        .ok_or("index overflow")?;
                }
                steps.push(Step::Index(n));
            }
            _ => return Err("expected a quoted name or an index".into()),
        }
        if chars.next() != Some(']') {
            return Err("expected ']'".into());
        }
    }
    Ok(steps)
}

fn read_hex4(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<u32, String> {
    let mut v = 0u32;
    for _ in 0..4 {
        let d = chars
            .next()
            .and_then(|c| c.to_digit(16))
            .ok_or("invalid \\u escape")?;
        v = v * 16 + d;
    }
    Ok(v)
}

/// Converts steps to an RFC 6901 JSON Pointer (for `pointer_mut`).
pub fn to_pointer(steps: &[Step]) -> String {
    let mut s = String::new();
    for st in steps {
        s.push('/');
        match st {
            Step::Key(k) => s.push_str(&k.replace('~', "~0").replace('/', "~1")),
            Step::Index(i) => {
                let _ = write!(s, "{i}");
            }
        }
    }
    s
}
