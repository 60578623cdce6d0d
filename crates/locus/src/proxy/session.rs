//! HTTPRoute `sessionPersistence` (GEP-1619): a request carrying its session's cookie (or
//! header) goes to the backendRef and the endpoint that answered the session's first request,
//! while that endpoint may take traffic (ready, not ejected, its bucket in use); otherwise it
//! is routed as any other and the session moves to the endpoint that answers.
//!
//! The session's value is written by the gateway and read back, never trusted further than
//! the routes allow: `BACKEND.STARTED.ADDRESS` — the backendRef's index in the rule, the
//! session's start in Unix seconds (for `absoluteTimeout`), and the endpoint's address in hex.
//! A value naming an endpoint the Service does not have is a session that starts again.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderName, HeaderValue};

use crate::model::SessionModel;

/// The session of one request on a rule with `sessionPersistence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// The backendRef it is bound to (an index into the rule's backends).
    pub backend: usize,
    /// When it started, in Unix seconds.
    pub started: u64,
    /// The endpoint it sticks to; `None` for a request that starts a session.
    pub pinned: Option<SocketAddr>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The session a request carries, if it is one of this rule's (a backend whose `weights` entry
/// is not 0) and not past `absoluteTimeout`.
pub fn read(model: &SessionModel, headers: &http::HeaderMap, weights: &[u32]) -> Option<Session> {
    let value = match &model.header {
        Some(name) => headers.get(name)?.to_str().ok()?.trim(),
        None => cookie(headers, &model.name)?,
    };
    let s = parse(value)?;
    let fresh = model
        .absolute_timeout
        .is_none_or(|t| now_secs().saturating_sub(s.started) < t.as_secs().max(1));
    let serving = weights.get(s.backend).is_some_and(|w| *w > 0);
    (serving && fresh).then_some(s)
}

/// A new session for a request that starts one on `backend`.
pub fn start(backend: usize) -> Session {
    Session {
        backend,
        started: now_secs(),
        pinned: None,
    }
}

/// The field that tells the client its session, when the endpoint that answered (`addr`) is
/// not the one the request came for: a `Set-Cookie` or the session's header.
pub fn answer(
    model: &SessionModel,
    session: &Session,
    addr: SocketAddr,
) -> Option<(HeaderName, HeaderValue)> {
    if session.pinned == Some(addr) {
        return None;
    }
    let value = format!(
        "{}.{}.{}",
        session.backend,
        session.started,
        hex(&addr.to_string())
    );
    if let Some(name) = &model.header {
        return Some((name.clone(), HeaderValue::from_str(&value).ok()?));
    }
    let mut cookie = format!("{}={value}; Path=/; HttpOnly", model.name);
    if let Some(age) = model.max_age {
        let left = age.saturating_sub(Duration::from_secs(
            now_secs().saturating_sub(session.started),
        ));
        cookie.push_str(&format!("; Max-Age={}", left.as_secs().max(1)));
    }
    Some((header::SET_COOKIE, HeaderValue::from_str(&cookie).ok()?))
}

/// The value of cookie `name` in the request's `Cookie` fields.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.trim_matches('"'))
        })
}

fn parse(value: &str) -> Option<Session> {
    let mut parts = value.splitn(3, '.');
    let backend = parts.next()?.parse().ok()?;
    let started = parts.next()?.parse().ok()?;
    let addr = unhex(parts.next()?)?.parse().ok()?;
    Some(Session {
        backend,
        started,
        pinned: Some(addr),
    })
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) || s.len() > 96 {
        return None;
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(header: bool, absolute: Option<u64>) -> SessionModel {
        SessionModel {
            name: "sticky".into(),
            header: header.then(|| HeaderName::from_static("sticky")),
            max_age: None,
            absolute_timeout: absolute.map(Duration::from_secs),
        }
    }

    #[test]
    fn a_session_written_is_read_back_and_foreign_values_are_not() {
        let addr: SocketAddr = "[::1]:8080".parse().unwrap();
        for header in [false, true] {
            let m = model(header, Some(3600));
            let s = start(1);
            let (name, value) = answer(&m, &s, addr).unwrap();
            let mut headers = http::HeaderMap::new();
            if header {
                headers.insert(name, value);
            } else {
                let set = value.to_str().unwrap();
                assert!(set.ends_with("; Path=/; HttpOnly"), "{set}");
                let pair = set.split(';').next().unwrap();
                let cookie = format!("other=1; {pair}; last=2");
                headers.insert(header::COOKIE, cookie.parse().unwrap());
            }
            let back = read(&m, &headers, &[1, 1]).unwrap();
            assert_eq!(back.pinned, Some(addr));
            assert_eq!((back.backend, back.started), (1, s.started));
            // Already pinned there: nothing to write.
            assert_eq!(answer(&m, &back, addr), None);
            // Not one of this rule's backends, or one that takes no traffic now.
            assert_eq!(read(&m, &headers, &[1]), None);
            assert_eq!(read(&m, &headers, &[1, 0]), None);
        }
        let mut headers = http::HeaderMap::new();
        for bad in [
            "x",
            "0.1.zz",
            "0.1.31",
            "9.x.3132",
            "0.1.3132372e302e302e313a3830",
        ] {
            headers.insert(header::COOKIE, format!("sticky={bad}").parse().unwrap());
            let parsed = read(&model(false, None), &headers, &[1; 10]);
            assert!(parsed.is_none() || bad.ends_with("3830"), "{bad}");
        }
        // Past absoluteTimeout: a new session.
        headers.insert(
            header::COOKIE,
            "sticky=0.1.3132372e302e302e313a3830".parse().unwrap(),
        );
        assert!(read(&model(false, None), &headers, &[1]).is_some());
        assert!(read(&model(false, Some(60)), &headers, &[1]).is_none());
    }
}
