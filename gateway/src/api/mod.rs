//! The routes (the table is in the crate documentation): the OpenFaaS REST API under
//! `/system`, `/function`, `/async-function`, `/healthz`, `/metrics`, `/` and the dashboard
//! (`/ui/`, see [`crate::ui`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{any, get, post};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};
use serde::Serialize;
use tracing::{debug, warn};

use crate::gateway::Shared;
use crate::http_util::{ApiError, parse_bool, text_response};
use crate::provider::Provider;
use crate::validate;

mod functions;
mod images;
pub(crate) mod invoke;
pub(crate) mod logs;
mod namespaces;
mod secrets;
mod system;

/// Most replicas a function may be scaled to.
pub const MAX_REPLICAS: u64 = 8;

type Gw<P> = State<Arc<Shared<P>>>;
type Params = Query<HashMap<String, String>>;
type ApiResult = Result<Response, ApiError>;

pub(crate) fn router<P: Provider>(
    shared: &Arc<Shared<P>>,
    admin: &[Router],
    public: &[Router],
) -> Router {
    let system = Router::new()
        .route(
            "/system/functions",
            get(functions::list_functions::<P>)
                .post(functions::deploy::<P>)
                .put(functions::update::<P>)
                .delete(functions::delete_function::<P>),
        )
        .route("/system/function/{name}", get(functions::get_function::<P>))
        .route("/system/scale-function/{name}", post(functions::scale::<P>))
        .route("/system/info", get(system::info::<P>))
        .route("/system/namespaces", get(namespaces::list_namespaces::<P>))
        .route(
            "/system/namespace/",
            post(namespaces::create_namespace::<P>),
        )
        .route(
            "/system/namespace/{name}",
            get(namespaces::get_namespace::<P>)
                .put(namespaces::update_namespace::<P>)
                .delete(namespaces::delete_namespace::<P>),
        )
        .route(
            "/system/secrets",
            get(secrets::list_secrets::<P>)
                .post(secrets::put_secret::<P>)
                .put(secrets::put_secret::<P>)
                .delete(secrets::delete_secret::<P>),
        )
        .route("/system/logs", get(logs::logs::<P>))
        .route(
            "/system/images",
            get(images::list_images::<P>)
                .post(images::import_images::<P>)
                .delete(images::remove_image::<P>),
        )
        // Unknown paths under /system answer 404 only to a client with credentials: without
        // them, 401 like every other /system route (nothing is learnt about what exists).
        .route("/system", any(not_found))
        .route("/system/", any(not_found))
        .route("/system/{*rest}", any(not_found));
    let protect = |routes: Router<Arc<Shared<P>>>| {
        routes.route_layer(middleware::from_fn_with_state(
            Arc::clone(shared),
            require_auth::<P>,
        ))
    };
    let system = protect(system);
    let ui = crate::ui::router(protect);
    let mut router: Router = Router::new()
        .merge(system)
        .merge(ui)
        .route("/healthz", get(system::healthz::<P>))
        .route("/metrics", get(system::metrics::<P>))
        .route("/", get(root))
        .route("/function/{*rest}", any(invoke::function::<P>))
        .route("/async-function/{*rest}", post(invoke::async_function::<P>))
        .fallback(not_found)
        .with_state(Arc::clone(shared));
    // Routes the node adds (hardware administration): behind the same credentials.
    for routes in admin {
        router = router.merge(routes.clone().route_layer(middleware::from_fn_with_state(
            Arc::clone(shared),
            require_auth::<P>,
        )));
    }
    for routes in public {
        router = router.merge(routes.clone());
    }
    router.layer(middleware::from_fn(log_request))
}

// Middleware

/// Basic auth, or a dashboard session (whose changes must come from the dashboard itself):
/// see [`crate::ui::access`].
async fn require_auth<P: Provider>(State(shared): Gw<P>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    match crate::ui::access::authorize(&shared.config.credentials, &shared.sessions, &parts) {
        Ok(_) => next.run(Request::from_parts(parts, body)).await,
        Err(refusal) => {
            debug!(path = %parts.uri.path(), ?refusal, "request refused");
            refusal.into_response()
        }
    }
}

/// Whether [`log_request`]'s lines are written (debug level for this module).
pub(crate) fn request_lines_enabled() -> bool {
    tracing::enabled!(tracing::Level::DEBUG)
}

/// One debug line per request: method, path (never the query or a body), status, duration.
pub(crate) async fn log_request(request: Request, next: Next) -> Response {
    if !request_lines_enabled() {
        // Nothing copied or timed per request when nobody reads the line.
        return next.run(request).await;
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    debug!(%method, %path, status = response.status().as_u16(), seconds = started.elapsed().as_secs_f64(), "request");
    response
}

async fn not_found() -> Response {
    text_response(StatusCode::NOT_FOUND, "not found")
}

/// `GET /`: a browser is sent to the dashboard; other clients (the watchdog, curl) get the
/// text they always got.
async fn root(headers: http::HeaderMap) -> Response {
    if crate::ui::wants_html(&headers) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SEE_OTHER;
        response
            .headers_mut()
            .insert(http::header::LOCATION, HeaderValue::from_static("/ui/"));
        return response;
    }
    text_response(
        StatusCode::OK,
        "bramble: an OpenFaaS-compatible function runtime for Raspberry Pi boards.\n\
         Invoke a function:   curl http://HOST:8080/function/NAME\n\
         Manage functions:    faas-cli (OpenFaaS REST API under /system, HTTP Basic auth)\n\
         Health and metrics:  /healthz, /metrics\n\
         Documentation: see the README that ships with bramble.",
    )
}

// Helpers shared by the resources

fn json<T: Serialize>(status: StatusCode, value: &T) -> ApiResult {
    let body = serde_json::to_vec(value).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {e}"),
        )
    })?;
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// A namespace from a query or body, validated; the default when absent or empty.
fn namespace_of<P: Provider>(
    shared: &Shared<P>,
    field: &str,
    given: Option<&str>,
) -> Result<String, ApiError> {
    match given.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(shared.config.default_namespace.clone()),
        Some(ns) => {
            validate::namespace_name(ns).map_err(|e| ApiError::field(field, e))?;
            Ok(ns.to_owned())
        }
    }
}

fn provider_error(e: crate::provider::ProviderError) -> ApiError {
    let e = ApiError::from(e);
    if e.status.is_server_error() {
        warn!(status = e.status.as_u16(), error = %e.message, "provider error");
    }
    e
}

fn query_bool(
    params: &HashMap<String, String>,
    key: &str,
    status: StatusCode,
) -> Result<bool, ApiError> {
    match params.get(key).map(String::as_str) {
        None | Some("") => Ok(false),
        Some(v) => parse_bool(v).ok_or_else(|| {
            ApiError::new(
                status,
                format!("{key}: {v:?} is not a boolean (true or false)"),
            )
        }),
    }
}
