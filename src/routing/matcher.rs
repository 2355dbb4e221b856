//! Route matching: a segment trie for path templates (cost independent of the number of
//! routes), then anchored regexes for legacy paths. The most specific template wins: at the
//! first segment where two templates differ, a literal beats `{x}`, which beats `{x*}`.

use std::collections::HashMap;

use crate::per_thread::PerThread;
use http::Method;
use regex::RegexSet;

use super::canonical::segments;

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Literal(String),
    Param(String),
    Rest(String),
}

/// Parses `/api/patients/{id}` or `/files/{path*}`.
pub fn parse_template(template: &str) -> Result<Vec<Seg>, String> {
    if !template.starts_with('/') {
        return Err("a path must start with '/'".into());
    }
    let mut segs = Vec::new();
    let mut names = Vec::new();
    let raw: Vec<&str> = segments(template).collect();
    for (i, s) in raw.iter().enumerate() {
        if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            let (name, rest) = match inner.strip_suffix('*') {
                Some(n) => (n, true),
                None => (inner, false),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "bad parameter '{{{inner}}}': use {{name}} or {{name*}}"
                ));
            }
            if names.contains(&name) {
                return Err(format!("parameter '{name}' appears twice"));
            }
            names.push(name);
            if rest {
                if i + 1 != raw.len() {
                    return Err(format!("'{{{name}*}}' must be the last segment"));
                }
                segs.push(Seg::Rest(name.into()));
            } else {
                segs.push(Seg::Param(name.into()));
            }
        } else if s.contains('{') || s.contains('}') {
            return Err(format!("segment '{s}' mixes text and a parameter"));
        } else {
            segs.push(Seg::Literal((*s).to_string()));
        }
    }
    // A literal must already be canonical, or it could never match a canonical request path.
    let literal_path: String = segs
        .iter()
        .map(|s| match s {
            Seg::Literal(l) => format!("/{l}"),
            _ => "/x".to_string(),
        })
        .collect();
    let literal_path = if literal_path.is_empty() {
        "/".to_string()
    } else {
        literal_path
    };
    match super::canonical::canonical_path(&literal_path) {
        Ok(c) if c == literal_path => Ok(segs),
        Ok(c) => Err(format!("path is not in canonical form (write it as '{c}')")),
        Err(e) => Err(format!("path can never match a request: {e}")),
    }
}

/// Which methods a route accepts; HEAD is implied by GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Methods {
    Any,
    Only(Vec<Method>),
}

impl Methods {
    pub fn accepts(&self, m: &Method) -> bool {
        match self {
            Methods::Any => true,
            Methods::Only(list) => {
                list.contains(m) || (*m == Method::HEAD && list.contains(&Method::GET))
            }
        }
    }
    fn overlaps(&self, other: &Methods) -> bool {
        match (self, other) {
            (Methods::Any, _) | (_, Methods::Any) => true,
            (Methods::Only(a), Methods::Only(b)) => {
                a.iter().any(|m| other.accepts(m)) || b.iter().any(|m| self.accepts(m))
            }
        }
    }
    pub fn allowed(&self) -> Vec<String> {
        match self {
            Methods::Any => vec!["*".into()],
            Methods::Only(l) => {
                let mut v: Vec<String> = l.iter().map(|m| m.to_string()).collect();
                if l.contains(&Method::GET) && !l.contains(&Method::HEAD) {
                    v.push("HEAD".into());
                }
                v
            }
        }
    }
}

#[derive(Debug, Default)]
struct Node {
    /// foldhash, not SipHash: the table is built from the rules and never grows from
    /// requests, so a request's bytes cannot flood it; a lookup per segment per request.
    literal: HashMap<String, Node, foldhash::fast::RandomState>,
    param: Option<Box<Node>>,
    /// Routes ending exactly here.
    end: Vec<(Methods, usize)>,
    /// Routes whose `{x*}` starts here.
    rest: Vec<(Methods, usize)>,
}

/// The outcome of matching one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    Found(usize),
    /// Some route has this path, none accepts the method.
    MethodNotAllowed(Vec<String>),
    NotFound,
    /// Two legacy regex routes match: refused rather than guessed (fail closed).
    Ambiguous(Vec<usize>),
}

/// A compiled set of routes, identified by their index in insertion order.
#[derive(Debug, Default)]
pub struct Matcher {
    root: Node,
    regex_set: Option<PerThread<RegexSet>>,
    regex_routes: Vec<(Methods, usize)>,
    regex_sources: Vec<String>,
    names: Vec<String>,
}

impl Matcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a template route; two routes equally specific for some request are an error.
    pub fn add_template(
        &mut self,
        id: usize,
        name: &str,
        segs: &[Seg],
        methods: Methods,
    ) -> Result<(), String> {
        self.note_name(id, name);
        let mut node = &mut self.root;
        let mut slot_is_rest = false;
        for seg in segs {
            match seg {
                Seg::Literal(l) => node = node.literal.entry(l.clone()).or_default(),
                Seg::Param(_) => node = node.param.get_or_insert_with(Default::default),
                Seg::Rest(_) => slot_is_rest = true,
            }
        }
        let slot = if slot_is_rest {
            &mut node.rest
        } else {
            &mut node.end
        };
        if let Some((_, other)) = slot.iter().find(|(m, _)| m.overlaps(&methods)) {
            return Err(format!(
                "route '{name}' is as specific as route '{}' for the same requests (same path shape and overlapping methods)",
                self.names[*other]
            ));
        }
        slot.push((methods, id));
        Ok(())
    }

    /// Adds a legacy `path_regex` route (anchored); these rank below every template.
    pub fn add_regex(
        &mut self,
        id: usize,
        name: &str,
        regex: &str,
        methods: Methods,
    ) -> Result<(), String> {
        self.note_name(id, name);
        let anchored = format!("^(?:{regex})$");
        regex::Regex::new(&anchored).map_err(|e| format!("invalid path_regex: {e}"))?;
        self.regex_sources.push(anchored);
        self.regex_routes.push((methods, id));
        self.regex_set = Some(PerThread::new(
            RegexSet::new(&self.regex_sources).map_err(|e| e.to_string())?,
        ));
        Ok(())
    }

    fn note_name(&mut self, id: usize, name: &str) {
        if self.names.len() <= id {
            self.names.resize(id + 1, String::new());
        }
        self.names[id] = name.to_string();
    }

    /// Finds the route for a canonical path.
    pub fn find(&self, method: &Method, canonical: &str) -> RouteMatch {
        // The segments on the stack for the usual path depth, in a `Vec` beyond it.
        const ON_STACK: usize = 16;
        let mut few = [""; ON_STACK];
        let mut n = 0;
        let mut many = Vec::new();
        for s in segments(canonical) {
            if n < ON_STACK {
                few[n] = s;
                n += 1;
            } else {
                if many.is_empty() {
                    many.extend_from_slice(&few);
                }
                many.push(s);
            }
        }
        let segs = if many.is_empty() {
            &few[..n]
        } else {
            &many[..]
        };
        let mut allowed = Vec::new();
        if let Some(id) = walk(&self.root, segs, method, &mut allowed) {
            return RouteMatch::Found(id);
        }
        if let Some(set) = &self.regex_set {
            let hits: Vec<usize> = set.get().matches(canonical).into_iter().collect();
            let accepting: Vec<usize> = hits
                .iter()
                .filter(|i| self.regex_routes[**i].0.accepts(method))
                .map(|i| self.regex_routes[*i].1)
                .collect();
            match accepting.len() {
                1 => return RouteMatch::Found(accepting[0]),
                0 => {
                    for i in hits {
                        allowed.extend(self.regex_routes[i].0.allowed());
                    }
                }
                _ => return RouteMatch::Ambiguous(accepting),
            }
        }
        if allowed.is_empty() {
            RouteMatch::NotFound
        } else {
            allowed.sort();
            allowed.dedup();
            RouteMatch::MethodNotAllowed(allowed)
        }
    }

    /// Every route whose path matches, whatever the method, most specific first (for explain).
    pub fn candidates(&self, canonical: &str) -> Vec<usize> {
        let segs: Vec<&str> = segments(canonical).collect();
        let mut out = Vec::new();
        collect(&self.root, &segs, &mut out);
        if let Some(set) = &self.regex_set {
            out.extend(
                set.get()
                    .matches(canonical)
                    .into_iter()
                    .map(|i| self.regex_routes[i].1),
            );
        }
        out
    }
}

fn pick(routes: &[(Methods, usize)], method: &Method, allowed: &mut Vec<String>) -> Option<usize> {
    for (m, id) in routes {
        if m.accepts(method) {
            return Some(*id);
        }
        allowed.extend(m.allowed());
    }
    None
}

/// Depth-first, most specific branch first; backtracks when a branch has no route for the method.
fn walk(node: &Node, segs: &[&str], method: &Method, allowed: &mut Vec<String>) -> Option<usize> {
    match segs.split_first() {
        None => pick(&node.end, method, allowed),
        Some((first, rest)) => {
            if let Some(child) = node.literal.get(*first) {
                if let Some(id) = walk(child, rest, method, allowed) {
                    return Some(id);
                }
            }
            if let (Some(child), false) = (&node.param, first.is_empty()) {
                if let Some(id) = walk(child, rest, method, allowed) {
                    return Some(id);
                }
            }
            pick(&node.rest, method, allowed)
        }
    }
}

fn collect(node: &Node, segs: &[&str], out: &mut Vec<usize>) {
    match segs.split_first() {
        None => out.extend(node.end.iter().map(|(_, id)| *id)),
        Some((first, rest)) => {
            if let Some(child) = node.literal.get(*first) {
                collect(child, rest, out);
            }
            if let (Some(child), false) = (&node.param, first.is_empty()) {
                collect(child, rest, out);
            }
            out.extend(node.rest.iter().map(|(_, id)| *id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matcher(routes: &[(&str, &str, Methods)]) -> Matcher {
        let mut m = Matcher::new();
        for (i, (name, path, methods)) in routes.iter().enumerate() {
            m.add_template(i, name, &parse_template(path).unwrap(), methods.clone())
                .unwrap();
        }
        m
    }

    fn get() -> Methods {
        Methods::Only(vec![Method::GET])
    }

    #[test]
    fn most_specific_wins() {
        let m = matcher(&[
            ("rest", "/api/{p*}", Methods::Any),
            ("param", "/api/patients/{id}", get()),
            ("literal", "/api/patients/search", get()),
        ]);
        assert_eq!(
            m.find(&Method::GET, "/api/patients/search"),
            RouteMatch::Found(2)
        );
        assert_eq!(
            m.find(&Method::GET, "/api/patients/7"),
            RouteMatch::Found(1)
        );
        assert_eq!(
            m.find(&Method::HEAD, "/api/patients/7"),
            RouteMatch::Found(1)
        );
        assert_eq!(
            m.find(&Method::POST, "/api/patients/7"),
            RouteMatch::Found(0)
        );
        assert_eq!(
            m.find(&Method::GET, "/api/patients/7/notes"),
            RouteMatch::Found(0)
        );
        assert_eq!(m.find(&Method::GET, "/other"), RouteMatch::NotFound);
        assert_eq!(m.find(&Method::GET, "/api"), RouteMatch::NotFound);
        assert_eq!(m.find(&Method::GET, "/api/patients/"), RouteMatch::Found(0));
    }

    #[test]
    fn deep_paths_match_past_the_stack_segments() {
        // 16 segments fit on the stack; 17 and more take the `Vec`.
        for depth in [15usize, 16, 17, 40] {
            let deep: String = (0..depth).map(|i| format!("/s{i}")).collect();
            let m = matcher(&[
                ("exact", &deep, get()),
                ("param", &format!("{deep}/{{id}}"), get()),
                ("rest", "/s0/{p*}", get()),
            ]);
            assert_eq!(m.find(&Method::GET, &deep), RouteMatch::Found(0), "{depth}");
            assert_eq!(
                m.find(&Method::GET, &format!("{deep}/7")),
                RouteMatch::Found(1)
            );
            assert_eq!(
                m.find(&Method::GET, &format!("{deep}/7/8")),
                RouteMatch::Found(2)
            );
            let other = deep.replace(&format!("/s{}", depth - 1), "/x");
            assert_eq!(m.find(&Method::GET, &other), RouteMatch::Found(2));
        }
    }

    #[test]
    fn backtracks_to_less_specific_branch() {
        let m = matcher(&[("a", "/a/{x}/c", get()), ("b", "/a/b/d", get())]);
        assert_eq!(m.find(&Method::GET, "/a/b/c"), RouteMatch::Found(0));
        assert_eq!(m.find(&Method::GET, "/a/b/d"), RouteMatch::Found(1));
    }

    #[test]
    fn method_not_allowed_lists_methods() {
        let m = matcher(&[("a", "/a", get())]);
        assert_eq!(
            m.find(&Method::DELETE, "/a"),
            RouteMatch::MethodNotAllowed(vec!["GET".into(), "HEAD".into()])
        );
    }

    #[test]
    fn equally_specific_routes_are_an_error() {
        let mut m = Matcher::new();
        m.add_template(0, "one", &parse_template("/a/{x}").unwrap(), get())
            .unwrap();
        let err = m
            .add_template(1, "two", &parse_template("/a/{y}").unwrap(), Methods::Any)
            .unwrap_err();
        assert!(err.contains("'two'") && err.contains("'one'"), "{err}");
        // Different methods on the same shape are fine.
        m.add_template(
            2,
            "three",
            &parse_template("/a/{z}").unwrap(),
            Methods::Only(vec![Method::POST]),
        )
        .unwrap();
    }

    #[test]
    fn template_errors() {
        assert!(parse_template("api").is_err());
        assert!(parse_template("/a/{x*}/b").is_err());
        assert!(parse_template("/a/x{y}").is_err());
        assert!(parse_template("/a/{x}/{x}").is_err());
        assert!(parse_template("/a/../b").is_err());
        assert!(parse_template("/a/%70").is_err());
        assert_eq!(parse_template("/").unwrap(), vec![]);
    }

    #[test]
    fn regex_routes_rank_last_and_refuse_ambiguity() {
        let mut m = matcher(&[("t", "/legacy/x", get())]);
        m.add_regex(1, "r1", "/legacy/[a-z]+", get()).unwrap();
        m.add_regex(2, "r2", "/legacy/y.*", get()).unwrap();
        assert_eq!(m.find(&Method::GET, "/legacy/x"), RouteMatch::Found(0));
        assert_eq!(m.find(&Method::GET, "/legacy/abc"), RouteMatch::Found(1));
        assert_eq!(
            m.find(&Method::GET, "/legacy/yes"),
            RouteMatch::Ambiguous(vec![1, 2])
        );
        assert_eq!(m.find(&Method::GET, "/legacy/ABC"), RouteMatch::NotFound);
        assert!(m.add_regex(3, "bad", "(", get()).is_err());
    }

    proptest! {
        // The trie agrees with a brute-force "most specific of all matching templates".
        #[test]
        fn trie_equals_brute_force(
            templates in proptest::collection::vec(proptest::collection::vec(0u8..5, 1..4), 1..12),
            path in proptest::collection::vec(0u8..3, 0..5),
        ) {
            let seg_of = |c: u8, i: usize| match c {
                0 => Seg::Literal("a".into()),
                1 => Seg::Literal("b".into()),
                2 => Seg::Literal("c".into()),
                3 => Seg::Param(format!("p{i}")),
                _ => Seg::Rest(format!("r{i}")),
            };
            let mut m = Matcher::new();
            let mut kept: Vec<(usize, Vec<Seg>)> = Vec::new();
            for (id, t) in templates.iter().enumerate() {
                let mut segs: Vec<Seg> = t.iter().enumerate().map(|(i, c)| seg_of(*c, i)).collect();
                if let Some(pos) = segs.iter().position(|s| matches!(s, Seg::Rest(_))) {
                    segs.truncate(pos + 1);
                }
                if m.add_template(id, &format!("r{id}"), &segs, Methods::Any).is_ok() {
                    kept.push((id, segs));
                }
            }
            let names = ["a", "b", "c"];
            let path_segs: Vec<&str> = path.iter().map(|c| names[*c as usize]).collect();
            let canonical = format!("/{}", path_segs.join("/"));
            // rank: per segment 0 literal, 1 param, 2 rest; lexicographically smallest wins.
            let matches = |segs: &[Seg]| -> Option<Vec<u8>> {
                let mut rank = Vec::new();
                for (i, s) in segs.iter().enumerate() {
                    match s {
                        Seg::Literal(l) => { if path_segs.get(i) != Some(&l.as_str()) { return None; } rank.push(0); }
                        Seg::Param(_) => { path_segs.get(i)?; rank.push(1); }
                        Seg::Rest(_) => { if path_segs.len() <= i { return None; } rank.push(2); return Some(rank); }
                    }
                }
                (segs.len() == path_segs.len()).then_some(rank)
            };
            let best = kept.iter().filter_map(|(id, s)| matches(s).map(|r| (r, *id))).min();
            let got = m.find(&Method::GET, &canonical);
            match best {
                Some((_, id)) => prop_assert_eq!(got, RouteMatch::Found(id)),
                None => prop_assert_eq!(got, RouteMatch::NotFound),
            }
        }
    }
}
