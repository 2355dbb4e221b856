//! The route matcher: templates and request paths from the input. Never panics; a found
//! route is one that was added; HEAD follows GET (where GET finds a route, HEAD finds the
//! same one, or a route for HEAD but not GET: the most specific route that accepts the
//! method wins, and one that also took GET would have been GET's).
#![no_main]
use libfuzzer_sys::fuzz_target;
use phigate::routing::canonical::canonical_path;
use phigate::routing::matcher::{parse_template, Matcher, Methods, RouteMatch};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut m = Matcher::new();
    let mut added = 0usize;
    // Routes that accept HEAD but not GET (by line).
    let mut head_only = [false; 64];
    let mut paths = Vec::new();
    for (i, line) in text.lines().enumerate().take(64) {
        if let Some(t) = line.strip_prefix("T ") {
            let (method, t) = t.split_once(' ').unwrap_or(("*", t));
            let methods = match method.parse::<http::Method>() {
                Ok(x) if method != "*" => Methods::Only(vec![x]),
                _ => Methods::Any,
            };
            if let Ok(segs) = parse_template(t) {
                let head = matches!(&methods, Methods::Only(l)
                    if l.contains(&http::Method::HEAD) && !l.contains(&http::Method::GET));
                if m.add_template(i, &format!("r{i}"), &segs, methods).is_ok() {
                    added = added.max(i + 1);
                    head_only[i] = head;
                }
            }
        } else {
            paths.push(line);
        }
    }
    for p in paths {
        let Ok(c) = canonical_path(p) else { continue };
        for method in [http::Method::GET, http::Method::HEAD, http::Method::POST] {
            match m.find(&method, &c) {
                RouteMatch::Found(id) => {
                    assert!(id < added, "found a route never added");
                    if method == http::Method::GET {
                        assert!(
                            matches!(m.find(&http::Method::HEAD, &c), RouteMatch::Found(h) if h == id || head_only[h]),
                            "HEAD does not follow GET on {c}"
                        );
                    }
                }
                RouteMatch::MethodNotAllowed(a) => assert!(!a.is_empty()),
                RouteMatch::NotFound | RouteMatch::Ambiguous(_) => {}
            }
        }
    }
});
