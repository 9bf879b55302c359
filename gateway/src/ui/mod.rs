//! The dashboard: a web page served by the gateway itself at `/ui/`, on the API's port, with
//! the API's credentials.
//!
//! The page is plain HTML, CSS and JavaScript modules from `gateway/ui/`, built into the binary
//! (`build.rs`; see [`assets`]). It reads and changes everything through the same API as
//! faas-cli (`/system/...`, `/function/...`), authenticated by a session cookie instead of
//! Basic auth, and follows what happens through one server-sent-events stream per open page
//! ([`events`]). What the gateway does not know itself comes from the provider
//! ([`crate::provider::Provider::status_changes`], `replicas`, `boards`) and from a
//! [`NodeFeed`] the node plugs in (hardware, trigger deliveries).
//!
//! | route | |
//! |---|---|
//! | `GET /ui/`, `/ui/functions/NAME.NS`, `/ui/deploy`, `/ui/images`, `/ui/hardware` | the page (303 to the login without a session) |
//! | `GET /ui/login` | the login form (`autocomplete` `username` and `current-password`) |
//! | `POST /ui/login` | form `username`, `password`, `next`: 303 to `next` with the session cookie, or 401 with the form again |
//! | `POST /ui/logout` | ends the session (needs the CSRF token), clears the cookie |
//! | `GET /ui/session` | `{"user","csrfToken"}` of the caller's session (`csrfToken` null with Basic auth) |
//! | `GET /ui/events[?function=NAME.NS\|?view=hardware]` | the page's event stream (see [`model`]) |
//! | `GET /ui/assets/PATH` | a file of `gateway/ui/` (public: the login page needs them; no data) |
//!
//! Security: see [`access`] (Basic auth or a session, CSRF token and same origin for
//! changes) and [`session`] (the cookie). Every response under `/ui/` carries a
//! Content-Security-Policy that allows only bramble's own files and connections, no inline
//! script or style, and no framing; and `X-Content-Type-Options: nosniff`. Secret values
//! never reach the page: the API it reads lists secret names only.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Serialize;
use tracing::info;

use crate::gateway::Shared;
use crate::http_util::{read_body, text_response};
use crate::provider::Provider;

pub(crate) mod access;
mod assets;
mod events;
mod feed;
pub mod model;
pub(crate) mod session;
mod stats;
mod views;

pub use feed::{FeedFuture, NodeEvents, NodeFeed};

/// The Content-Security-Policy of every dashboard response.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; manifest-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The largest login form accepted.
const MAX_LOGIN_FORM: usize = 8 * 1024;
/// How long a failed login waits before it answers (slows guessing down).
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(500);

/// The dashboard's routes (see the module documentation); `protect` is the API's
/// authentication middleware, applied to the data routes.
pub(crate) fn router<P: Provider>(
    protect: impl Fn(Router<Arc<Shared<P>>>) -> Router<Arc<Shared<P>>>,
) -> Router<Arc<Shared<P>>> {
    let data = protect(
        Router::new()
            .route("/ui/session", get(session_info::<P>))
            .route("/ui/events", get(events::events::<P>))
            .route("/ui/logout", post(logout::<P>)),
    );
    Router::new()
        .merge(data)
        .route("/ui", get(|| async { redirect("/ui/") }))
        .route("/ui/", get(page::<P>))
        .route("/ui/login", get(login_form).post(login::<P>))
        .route("/ui/assets/{*path}", get(asset))
        .route("/ui/{*rest}", get(page::<P>))
        .layer(middleware::from_fn(security_headers))
}

/// CSP and friends on every response under `/ui/`.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    response
}

fn redirect(to: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        response.headers_mut().insert(LOCATION, v);
    }
    response
}

/// Whether a browser asks for a page (`Accept` names `text/html`): `GET /` redirects those to
/// the dashboard and answers everyone else (the watchdog, curl) as before.
pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

/// The pages the dashboard has (the rest of `/ui/…` is 404).
fn is_page(rest: &str) -> bool {
    let rest = rest.trim_end_matches('/');
    matches!(rest, "" | "deploy" | "images" | "hardware")
        || rest
            .strip_prefix("functions/")
            .is_some_and(|f| !f.is_empty() && !f.contains('/'))
}

/// A page of the dashboard: the same document for all (the script shows the right one), to a
/// caller with a session or Basic auth; others are sent to the login form first.
async fn page<P: Provider>(State(shared): State<Arc<Shared<P>>>, request: Request) -> Response {
    let rest = request
        .uri()
        .path()
        .strip_prefix("/ui/")
        .unwrap_or_default();
    if !is_page(rest) {
        return text_response(StatusCode::NOT_FOUND, "not found");
    }
    let (parts, _) = request.into_parts();
    if access::authorize(&shared.config.credentials, &shared.sessions, &parts).is_err() {
        let next = parts
            .uri
            .path_and_query()
            .map_or("/ui/", |pq| pq.as_str())
            .to_owned();
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("next", &next)
            .finish();
        return redirect(&format!("/ui/login?{query}"));
    }
    match assets::find("index.html") {
        Some(index) => assets::serve(index, &parts.headers),
        None => text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the dashboard is missing",
        ),
    }
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    // The HTML documents are pages, served by their routes.
    match assets::find(&path).filter(|a| !a.path.ends_with(".html")) {
        Some(asset) => assets::serve(asset, &headers),
        None => text_response(StatusCode::NOT_FOUND, "not found"),
    }
}

async fn login_form(headers: HeaderMap) -> Response {
    match assets::find("login.html") {
        Some(login) => assets::serve(login, &headers),
        None => text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the dashboard is missing",
        ),
    }
}

/// The login form again, with `message` shown: 401, never cached.
fn login_failed(message: &str) -> Response {
    let page = assets::find("login.html")
        .map(|a| String::from_utf8_lossy(a.raw).into_owned())
        .unwrap_or_default();
    let page = page.replace(
        r#"<p id="login-error" class="form-error" role="alert" hidden></p>"#,
        &format!(r#"<p id="login-error" class="form-error" role="alert">{message}</p>"#),
    );
    let mut response = Response::new(Body::from(page));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Where to go after logging in: a dashboard page of this gateway, never elsewhere.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next)
            if next.starts_with("/ui/")
                && !next.starts_with("//")
                && !next.contains(['\\', '\r', '\n']) =>
        {
            next
        }
        _ => "/ui/",
    }
}

async fn login<P: Provider>(
    State(shared): State<Arc<Shared<P>>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // A login from another site's page is as suspect as any other cross-site change.
    if headers.contains_key(http::header::ORIGIN)
        && let Err(reason) = access::check_same_origin(&headers)
    {
        return text_response(
            StatusCode::FORBIDDEN,
            format!("cross-site login refused: {reason}"),
        );
    }
    let Ok(body) = read_body(&headers, body, MAX_LOGIN_FORM).await else {
        return login_failed("The form could not be read; try again.");
    };
    let mut user = None;
    let mut password = None;
    let mut next = query.get("next").cloned();
    for (key, value) in form_urlencoded::parse(&body) {
        match &*key {
            "username" => user = Some(value.into_owned()),
            "password" => password = Some(value.into_owned()),
            "next" if !value.is_empty() => next = Some(value.into_owned()),
            _ => {}
        }
    }
    let (Some(user), Some(password)) = (user, password) else {
        return login_failed("Enter the user name and the password.");
    };
    if !crate::auth::valid(
        &shared.config.credentials,
        user.as_bytes(),
        password.as_bytes(),
    ) {
        info!("dashboard login refused: wrong user name or password");
        tokio::time::sleep(FAILED_LOGIN_DELAY).await;
        return login_failed("Wrong user name or password.");
    }
    let (id, _) = shared.sessions.start(&user);
    info!(%user, "dashboard login");
    let mut response = redirect(safe_next(next.as_deref()));
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id)) {
        response.headers_mut().insert(SET_COOKIE, v);
    }
    response
}

async fn logout<P: Provider>(State(shared): State<Arc<Shared<P>>>, headers: HeaderMap) -> Response {
    if let Some(id) = session::cookie_of(&headers) {
        shared.sessions.end(id);
    }
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
        response.headers_mut().insert(SET_COOKIE, v);
    }
    response
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionInfo {
    user: String,
    /// What the page sends in `X-Bramble-CSRF`; `None` with Basic auth (no cookie, no CSRF).
    csrf_token: Option<String>,
}

async fn session_info<P: Provider>(
    State(shared): State<Arc<Shared<P>>>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let info = match access::authorize(&shared.config.credentials, &shared.sessions, &parts) {
        Ok(access::Caller::Session(session)) => SessionInfo {
            user: session.user,
            csrf_token: Some(session.csrf),
        },
        Ok(access::Caller::Basic) => SessionInfo {
            user: shared.config.credentials.user.clone(),
            csrf_token: None,
        },
        Err(refusal) => return refusal.into_response(),
    };
    let mut response = axum::Json(info).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_next_targets() {
        for page in [
            "",
            "deploy",
            "images/",
            "hardware",
            "functions/hello.openfaas-fn",
        ] {
            assert!(is_page(page), "{page}");
        }
        for other in ["nope", "functions/", "functions/a/b", "assets"] {
            assert!(!is_page(other), "{other}");
        }
        assert_eq!(safe_next(Some("/ui/functions/a.b")), "/ui/functions/a.b");
        for evil in [
            "https://evil.example/",
            "//evil.example/ui/",
            "/system/functions",
            "/ui/\r\nSet-Cookie: x",
            "/ui/\\evil",
        ] {
            assert_eq!(safe_next(Some(evil)), "/ui/", "{evil}");
        }
        assert_eq!(safe_next(None), "/ui/");
    }

    #[test]
    fn browsers_are_told_apart_by_accept() {
        let mut h = HeaderMap::new();
        assert!(!wants_html(&h));
        h.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!wants_html(&h));
        h.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
        );
        assert!(wants_html(&h));
    }

    #[test]
    fn the_policy_allows_only_our_own_files() {
        for needed in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(CSP.contains(needed), "{needed}");
        }
        assert!(!CSP.contains("unsafe-inline") && !CSP.contains("unsafe-eval"));
    }
}
