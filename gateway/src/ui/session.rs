//! Dashboard sessions: a random id in an `HttpOnly`, `SameSite=Strict` cookie, looked up in a
//! table in memory (lost on restart: the user logs in again), with a CSRF token per session.
//!
//! The table holds the SHA-256 digest of each id, never the id, so neither a lookup's timing
//! nor a dump of the table gives a usable cookie away. Sessions end after [`IDLE_TIMEOUT`]
//! without a request, at the latest [`MAX_AGE`] after login, and on logout. At most
//! [`MAX_SESSIONS`] are kept: a new login beyond that ends the least recently used one.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "bramble_session";
/// A session unused this long ends.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// A session ends this long after login, used or not.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most sessions kept at once.
pub(crate) const MAX_SESSIONS: usize = 64;

/// One logged-in browser.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) user: String,
    /// Sent back by the page in the CSRF header of every state-changing request.
    pub(crate) csrf: String,
    created: Instant,
    last_used: Instant,
}

impl Session {
    /// Whether `token` is this session's CSRF token (constant time).
    pub(crate) fn csrf_matches(&self, token: &[u8]) -> bool {
        bool::from(crate::auth::same(token, self.csrf.as_bytes()))
    }
}

/// The session table.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    table: Mutex<HashMap<[u8; 32], Session>>,
}

/// 32 random bytes, base64url without padding (43 characters).
fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn key_of(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Starts a session for `user`; answers its id (the cookie's value) and the session.
    pub(crate) fn start(&self, user: &str) -> (String, Session) {
        self.start_at(user, Instant::now())
    }

    fn start_at(&self, user: &str, now: Instant) -> (String, Session) {
        let id = random_token();
        let session = Session {
            user: user.to_owned(),
            csrf: random_token(),
            created: now,
            last_used: now,
        };
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.retain(|_, s| alive(s, now));
        while table.len() >= MAX_SESSIONS {
            let oldest = table
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(key, _)| *key);
            match oldest {
                Some(key) => table.remove(&key),
                None => break,
            };
        }
        table.insert(key_of(&id), session.clone());
        (id, session)
    }

    /// The live session with id `id`, marked used now; `None` when there is none (unknown,
    /// expired, logged out).
    pub(crate) fn find(&self, id: &str) -> Option<Session> {
        self.find_at(id, Instant::now())
    }

    fn find_at(&self, id: &str, now: Instant) -> Option<Session> {
        let key = key_of(id);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        match table.get_mut(&key) {
            Some(session) if alive(session, now) => {
                session.last_used = now;
                Some(session.clone())
            }
            Some(_) => {
                table.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session with id `id` (logout); nothing happens when there is none.
    pub(crate) fn end(&self, id: &str) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.remove(&key_of(id));
    }

    /// Sessions kept (live or not yet swept).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

fn alive(session: &Session, now: Instant) -> bool {
    now.saturating_duration_since(session.last_used) < IDLE_TIMEOUT
        && now.saturating_duration_since(session.created) < MAX_AGE
}

/// The session id in the `Cookie` headers, if any.
pub(crate) fn cookie_of(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// Removes the dashboard's credentials from a request on its way to a function: the session
/// cookie (the browser sends it with every request to this host, `/function/…` included, and
/// a function must never get a user's session) and the CSRF header. Other cookies stay. One
/// header lookup when there are no cookies.
pub(crate) fn strip_dashboard_credentials(headers: &mut http::HeaderMap) {
    if headers.contains_key(super::access::CSRF_HEADER) {
        headers.remove(super::access::CSRF_HEADER);
    }
    if !headers.contains_key(http::header::COOKIE) {
        return;
    }
    let is_session = |pair: &[u8]| {
        pair.trim_ascii_start()
            .strip_prefix(COOKIE.as_bytes())
            .is_some_and(|rest| rest.trim_ascii_start().starts_with(b"="))
    };
    // Nothing is copied unless the session cookie is there (an invocation from the page).
    if !headers
        .get_all(http::header::COOKIE)
        .iter()
        .any(|v| v.as_bytes().split(|b| *b == b';').any(is_session))
    {
        return;
    }
    let cookies: Vec<http::HeaderValue> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .cloned()
        .collect();
    headers.remove(http::header::COOKIE);
    for value in cookies {
        let kept: Vec<&[u8]> = value
            .as_bytes()
            .split(|b| *b == b';')
            .filter(|pair| !is_session(pair) && !pair.trim_ascii().is_empty())
            .map(<[u8]>::trim_ascii)
            .collect();
        if kept.is_empty() {
            continue;
        }
        if let Ok(v) = http::HeaderValue::from_bytes(&kept.join(&b"; "[..])) {
            headers.append(http::header::COOKIE, v);
        }
    }
}

/// The `Set-Cookie` value that stores session `id` in the browser (a session cookie: it ends
/// with the browser, or sooner on the server).
pub(crate) fn set_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn sessions_start_are_found_and_end() {
        let sessions = Sessions::default();
        let (id, session) = sessions.start("admin");
        assert_eq!(id.len(), 43);
        assert_ne!(id, session.csrf);
        let found = sessions.find(&id).unwrap();
        assert_eq!(found.user, "admin");
        assert!(found.csrf_matches(session.csrf.as_bytes()));
        assert!(!found.csrf_matches(b"wrong"));
        assert!(!found.csrf_matches(b""));
        assert!(sessions.find("not-a-session").is_none());
        sessions.end(&id);
        assert!(sessions.find(&id).is_none());
        // Two logins: two sessions, two tokens.
        let (a, sa) = sessions.start("admin");
        let (b, sb) = sessions.start("admin");
        assert!(a != b && sa.csrf != sb.csrf);
    }

    #[test]
    fn sessions_expire_when_idle_and_at_their_maximum_age() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let (id, _) = sessions.start_at("admin", t0);
        // Used within the idle timeout, again and again: alive until the maximum age.
        let mut t = t0;
        while t + IDLE_TIMEOUT / 2 < t0 + MAX_AGE {
            t += IDLE_TIMEOUT / 2;
            assert!(sessions.find_at(&id, t).is_some(), "{:?}", t - t0);
        }
        assert!(sessions.find_at(&id, t0 + MAX_AGE).is_none());
        assert_eq!(
            sessions.len(),
            0,
            "an expired session is removed when found"
        );
        let (idle, _) = sessions.start_at("admin", t0);
        assert!(sessions.find_at(&idle, t0 + IDLE_TIMEOUT).is_none());
    }

    #[test]
    fn the_table_is_bounded() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let (first, _) = sessions.start_at("admin", t0);
        let mut ids = Vec::new();
        for i in 1..=MAX_SESSIONS as u64 {
            ids.push(sessions.start_at("admin", t0 + Duration::from_secs(i)).0);
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        // The least recently used one made room.
        assert!(
            sessions
                .find_at(&first, t0 + Duration::from_secs(100))
                .is_none()
        );
        assert!(ids.iter().all(|id| {
            sessions
                .find_at(id, t0 + Duration::from_secs(100))
                .is_some()
        }));
    }

    #[test]
    fn functions_never_get_the_session() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("theme=dark; bramble_session=abc; x=1"),
        );
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("bramble_session=def"),
        );
        h.insert("x-bramble-csrf", HeaderValue::from_static("token"));
        h.insert("x-other", HeaderValue::from_static("kept"));
        strip_dashboard_credentials(&mut h);
        let cookies: Vec<&str> = h
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["theme=dark; x=1"]);
        assert!(h.get("x-bramble-csrf").is_none());
        assert_eq!(h["x-other"], "kept");
        // Nothing of ours: nothing changes.
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            HeaderValue::from_static("bramble_sessionx=1; a=2"),
        );
        strip_dashboard_credentials(&mut h);
        assert_eq!(h[http::header::COOKIE], "bramble_sessionx=1; a=2");
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        let mut h = HeaderMap::new();
        assert_eq!(cookie_of(&h), None);
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("theme=dark; bramble_session=abc; x=1"),
        );
        assert_eq!(cookie_of(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("bramble_session=\"q\""),
        );
        assert_eq!(cookie_of(&h), Some("q"));
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("bramble_session="),
        );
        assert_eq!(cookie_of(&h), None);
        assert!(set_cookie("x").contains("HttpOnly; SameSite=Strict"));
        assert!(clear_cookie().contains("Max-Age=0"));
    }
}
