//! Request matching and the Gateway API's precedence between matches.

use std::cmp::Ordering;

use http::request::Parts;

use crate::model::{MatchModel, PathMatch};

/// Whether `path` is under `prefix` by whole segments.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The first value of query parameter `name` (the Gateway API considers only the first).
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub fn matches(m: &MatchModel, req: &Parts) -> bool {
    if let Some(method) = &m.method {
        if req.method != *method {
            return false;
        }
    }
    let path = req.uri.path();
    let path_ok = match &m.path {
        PathMatch::Exact(v) => path == v,
        PathMatch::Prefix(p) => prefix_matches(p, path),
        PathMatch::Regex(r) => r.is_match(path),
    };
    if !path_ok {
        return false;
    }
    for (name, want) in &m.headers {
        let any = req
            .headers
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| want.matches(v)));
        if !any {
            return false;
        }
    }
    for (name, want) in &m.query {
        match query_value(req.uri.query(), name) {
            Some(v) if want.matches(v) => {}
            _ => return false,
        }
    }
    true
}

/// Sort key: the Gateway API's precedence for matches competing for the same host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Precedence {
    /// Exact path, then prefix, then regular expression.
    path_kind: u8,
    /// Longer prefixes first.
    path_len: usize,
    has_method: bool,
    headers: usize,
    query: usize,
    /// Older routes first (a missing timestamp sorts last).
    created: Option<String>,
    /// Then alphabetical `namespace/name`, then rule and match order.
    route: String,
    rule: usize,
    index: usize,
}

impl Precedence {
    pub fn new(
        m: &MatchModel,
        created: Option<String>,
        route: String,
        rule: usize,
        index: usize,
    ) -> Self {
        let (path_kind, path_len) = match &m.path {
            PathMatch::Exact(v) => (0, v.len()),
            PathMatch::Prefix(p) => (1, p.len()),
            PathMatch::Regex(_) => (2, 0),
        };
        Precedence {
            path_kind,
            path_len,
            has_method: m.method.is_some(),
            headers: m.headers.len(),
            query: m.query.len(),
            created,
            route,
            rule,
            index,
        }
    }
}

impl Ord for Precedence {
    fn cmp(&self, o: &Self) -> Ordering {
        self.path_kind
            .cmp(&o.path_kind)
            .then(o.path_len.cmp(&self.path_len))
            .then(o.has_method.cmp(&self.has_method))
            .then(o.headers.cmp(&self.headers))
            .then(o.query.cmp(&self.query))
            .then_with(|| match (&self.created, &o.created) {
                (Some(a), Some(b)) => a.cmp(b),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            })
            .then_with(|| self.route.cmp(&o.route))
            .then(self.rule.cmp(&o.rule))
            .then(self.index.cmp(&o.index))
    }
}

impl PartialOrd for Precedence {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// How a host pattern from a route (after intersecting with its listener's) is indexed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostKey {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Wildcard(String),
    Any,
}

impl HostKey {
    pub fn parse(h: &str) -> HostKey {
        match h.strip_prefix('*') {
            Some(suffix) => HostKey::Wildcard(suffix.to_owned()),
            None => HostKey::Exact(h.to_owned()),
        }
    }

    pub fn covers(&self, host: &str) -> bool {
        match self {
            HostKey::Exact(h) => h == host,
            HostKey::Wildcard(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
            HostKey::Any => true,
        }
    }
}

/// The hostnames a route serves on a listener: the intersection of both (Gateway API rules).
/// `None` when they do not intersect, so the route does not attach to that listener.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<HostKey>> {
    let Some(l) = listener else {
        return Some(if route.is_empty() {
            vec![HostKey::Any]
        } else {
            route.iter().map(|h| HostKey::parse(h)).collect()
        });
    };
    let lk = HostKey::parse(l);
    if route.is_empty() {
        return Some(vec![lk]);
    }
    let mut out = Vec::new();
    for r in route {
        let rk = HostKey::parse(r);
        let key = match (&lk, &rk) {
            (HostKey::Exact(a), HostKey::Exact(b)) => (a == b).then(|| rk.clone()),
            (HostKey::Wildcard(_), HostKey::Exact(b)) => lk.covers(b).then(|| rk.clone()),
            (HostKey::Exact(a), HostKey::Wildcard(_)) => rk.covers(a).then(|| lk.clone()),
            (HostKey::Wildcard(a), HostKey::Wildcard(b)) => {
                if b.ends_with(a.as_str()) {
                    Some(rk.clone())
                } else if a.ends_with(b.as_str()) {
                    Some(lk.clone())
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(k) = key {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_by_segment() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/foo", "/foo"));
        assert!(prefix_matches("/foo", "/foo/"));
        assert!(prefix_matches("/foo", "/foo/bar"));
        assert!(!prefix_matches("/foo", "/foobar"));
        assert!(!prefix_matches("/foo", "/fo"));
    }

    #[test]
    fn query_takes_first_value() {
        assert_eq!(query_value(Some("a=1&b=2&a=3"), "a"), Some("1"));
        assert_eq!(query_value(Some("flag&b=2"), "flag"), Some(""));
        assert_eq!(query_value(None, "a"), None);
    }

    #[test]
    fn wildcards_cover_subdomains_only() {
        let w = HostKey::parse("*.example.com");
        assert!(w.covers("foo.example.com"));
        assert!(w.covers("a.b.example.com"));
        assert!(!w.covers("example.com"));
    }

    #[test]
    fn hostname_intersection() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(intersect(None, &[]), Some(vec![HostKey::Any]));
        assert_eq!(
            intersect(Some("*.example.com"), &r(&["foo.example.com", "other.org"])),
            Some(vec![HostKey::Exact("foo.example.com".into())])
        );
        assert_eq!(
            intersect(Some("foo.example.com"), &r(&["*.example.com"])),
            Some(vec![HostKey::Exact("foo.example.com".into())])
        );
        assert_eq!(intersect(Some("a.org"), &r(&["b.org"])), None);
        assert_eq!(
            intersect(Some("a.org"), &[]),
            Some(vec![HostKey::Exact("a.org".into())])
        );
    }
}
