//! Who may use the API and the dashboard's data: HTTP Basic auth (faas-cli, curl; unchanged)
//! or a dashboard session cookie. A request authenticated by its cookie that changes state
//! (any method but `GET`, `HEAD`, `OPTIONS`) must also come from the dashboard itself:
//!
//! * its `Origin` names this gateway (the `Host` it was sent to), and `Sec-Fetch-Site`, when
//!   the browser sends it, says `same-origin`;
//! * it carries the session's CSRF token in [`CSRF_HEADER`], a value only the dashboard's own
//!   script can read (from `GET /ui/session`; another site cannot read that answer).
//!
//! Otherwise it is refused with 403 and changes nothing. A page on another site can make a
//! logged-in browser send a request (a form, `fetch` with `no-cors`), but neither set the
//! header nor fake the `Origin`. `SameSite=Strict` keeps the cookie off cross-site requests
//! in the first place; these checks also cover same-site origins (another port of the same
//! host, a sibling board's page).

use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::config::Credentials;
use crate::http_util::text_response;

use super::session::{Session, Sessions, cookie_of};

/// The header the dashboard sends its CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-bramble-csrf";

/// How a request was let in.
#[derive(Debug)]
pub(crate) enum Caller {
    /// HTTP Basic auth.
    Basic,
    /// A dashboard session (cookie), checked against cross-site use.
    Session(Session),
}

/// Why a request was not let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No valid credentials: 401 with `WWW-Authenticate: Basic`, exactly as before the
    /// dashboard existed.
    Unauthorized,
    /// The session cookie names a session that has ended: 401 without the Basic challenge
    /// (the dashboard then asks for a login, not the browser).
    SessionEnded,
    /// A change made with a session cookie from elsewhere than the dashboard itself: 403.
    CrossSite(&'static str),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Unauthorized => {
                let mut response = text_response(StatusCode::UNAUTHORIZED, "invalid credentials");
                response.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"Restricted\""),
                );
                response
            }
            Self::SessionEnded => text_response(
                StatusCode::UNAUTHORIZED,
                "your dashboard session has ended: log in again",
            ),
            Self::CrossSite(reason) => text_response(
                StatusCode::FORBIDDEN,
                format!("cross-site request refused: {reason}; nothing was changed"),
            ),
        }
    }
}

/// Lets the request in, or says why not (see [`Refusal`]).
pub(crate) fn authorize(
    credentials: &Credentials,
    sessions: &Sessions,
    parts: &Parts,
) -> Result<Caller, Refusal> {
    if crate::auth::authorized(credentials, &parts.headers) {
        return Ok(Caller::Basic);
    }
    let Some(id) = cookie_of(&parts.headers) else {
        return Err(Refusal::Unauthorized);
    };
    let Some(session) = sessions.find(id) else {
        return Err(Refusal::SessionEnded);
    };
    if !is_safe(&parts.method) {
        check_same_origin(&parts.headers).map_err(Refusal::CrossSite)?;
        let token = parts
            .headers
            .get(CSRF_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !session.csrf_matches(token) {
            return Err(Refusal::CrossSite(
                "it lacks the dashboard's CSRF token (header X-Bramble-CSRF)",
            ));
        }
    }
    Ok(Caller::Session(session))
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `Ok` when the browser says the request comes from this gateway's own pages: `Origin`
/// present with the host and port the request was sent to, and `Sec-Fetch-Site` (when sent)
/// `same-origin`. The scheme is not compared: bramble may sit behind a TLS proxy.
pub(crate) fn check_same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return Err("the browser says it comes from another site");
    }
    let origin = headers
        .get(http::header::ORIGIN)
        .ok_or("it has no Origin header")?
        .to_str()
        .map_err(|_| "its Origin header is not text")?;
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or("it has no Host header")?;
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .ok_or("its Origin is not this gateway")?;
    if authority.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err("its Origin is another site")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::builder()
            .method(method)
            .uri("/system/functions");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.body(()).unwrap().into_parts().0
    }

    fn credentials() -> Credentials {
        Credentials {
            user: "admin".into(),
            password: "pw".into(),
        }
    }

    #[test]
    fn basic_auth_is_unchanged_and_sessions_are_checked_for_cross_site_use() {
        let sessions = Sessions::default();
        let c = credentials();
        // No credentials: 401 with the Basic challenge, as always.
        let r = authorize(&c, &sessions, &parts(Method::GET, &[]))
            .unwrap_err()
            .into_response();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key(http::header::WWW_AUTHENTICATE));
        // Basic auth: any method, no Origin or token needed (faas-cli).
        let basic = "Basic YWRtaW46cHc="; // admin:pw
        let ok = authorize(
            &c,
            &sessions,
            &parts(Method::DELETE, &[("authorization", basic)]),
        );
        assert!(matches!(ok, Ok(Caller::Basic)));

        let (id, session) = sessions.start("admin");
        let cookie = format!("bramble_session={id}");
        // Reads need only the cookie.
        let ok = authorize(&c, &sessions, &parts(Method::GET, &[("cookie", &cookie)]));
        assert!(matches!(ok, Ok(Caller::Session(_))));
        // A change from the dashboard: same origin, with the token.
        let own = [
            ("cookie", cookie.as_str()),
            ("host", "pi.local:8080"),
            ("origin", "http://pi.local:8080"),
            ("sec-fetch-site", "same-origin"),
            ("x-bramble-csrf", session.csrf.as_str()),
        ];
        assert!(authorize(&c, &sessions, &parts(Method::POST, &own)).is_ok());
        // Without the token, with a wrong one, from another origin or site: 403.
        for (skip, replace) in [
            (Some("x-bramble-csrf"), None),
            (None, Some(("x-bramble-csrf", "guess"))),
            (None, Some(("origin", "http://evil.example"))),
            (None, Some(("origin", "http://pi.local:9999"))),
            (None, Some(("origin", "null"))),
            (Some("origin"), None),
            (None, Some(("sec-fetch-site", "same-site"))),
            (None, Some(("sec-fetch-site", "cross-site"))),
        ] {
            let headers: Vec<(&str, &str)> = own
                .iter()
                .filter(|(k, _)| Some(*k) != skip)
                .map(|(k, v)| match replace {
                    Some((rk, rv)) if rk == *k => (*k, rv),
                    _ => (*k, *v),
                })
                .collect();
            let r = authorize(&c, &sessions, &parts(Method::POST, &headers))
                .unwrap_err()
                .into_response();
            assert_eq!(r.status(), 403, "{skip:?} {replace:?}");
        }
        // An ended session: 401, without the Basic challenge (no browser dialog).
        sessions.end(&id);
        let r = authorize(&c, &sessions, &parts(Method::GET, &[("cookie", &cookie)]))
            .unwrap_err()
            .into_response();
        assert_eq!(r.status(), 401);
        assert!(!r.headers().contains_key(http::header::WWW_AUTHENTICATE));
    }
}
