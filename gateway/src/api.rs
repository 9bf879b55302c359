//! The routes (the table is in the crate documentation): the OpenFaaS REST API under
//! `/system`, `/function`, `/async-function`, `/healthz`, `/metrics` and `/`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use bytes::Bytes;
use futures::StreamExt as _;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use serde::Serialize;
use tracing::{debug, warn};

use crate::gateway::Shared;
use crate::http_util::{
    ApiError, call_id_of, empty, parse_bool, parse_json, read_body, read_json, text_response,
};
use crate::provider::Provider;
use crate::queue::{CallRecord, validate_callback_url};
use crate::types::{
    DeleteFunctionRequest, FunctionDeployment, FunctionNamespace, FunctionResources,
    ImportedImages, LogRequest, ProviderInfo, ScaleServiceRequest, Secret, VersionInfo,
};
use crate::validate;

/// Most replicas a function may be scaled to.
pub const MAX_REPLICAS: u64 = 8;

type Gw<P> = State<Arc<Shared<P>>>;
type Params = Query<HashMap<String, String>>;
type ApiResult = Result<Response, ApiError>;

pub(crate) fn router<P: Provider>(shared: &Arc<Shared<P>>, admin: &[Router]) -> Router {
    let system = Router::new()
        .route(
            "/system/functions",
            get(list_functions::<P>)
                .post(deploy::<P>)
                .put(update::<P>)
                .delete(delete_function::<P>),
        )
        .route("/system/function/{name}", get(get_function::<P>))
        .route("/system/scale-function/{name}", post(scale::<P>))
        .route("/system/info", get(info::<P>))
        .route("/system/namespaces", get(list_namespaces::<P>))
        .route("/system/namespace/", post(create_namespace::<P>))
        .route(
            "/system/namespace/{name}",
            get(get_namespace::<P>)
                .put(update_namespace::<P>)
                .delete(delete_namespace::<P>),
        )
        .route(
            "/system/secrets",
            get(list_secrets::<P>)
                .post(put_secret::<P>)
                .put(put_secret::<P>)
                .delete(delete_secret::<P>),
        )
        .route("/system/logs", get(logs::<P>))
        .route(
            "/system/images",
            get(list_images::<P>)
                .post(import_images::<P>)
                .delete(remove_image::<P>),
        )
        // Unknown paths under /system answer 404 only to a client with credentials: without
        // them, 401 like every other /system route (nothing is learnt about what exists).
        .route("/system", any(not_found))
        .route("/system/", any(not_found))
        .route("/system/{*rest}", any(not_found))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(shared),
            require_auth::<P>,
        ));
    let mut router: Router = Router::new()
        .merge(system)
        .route("/healthz", get(healthz::<P>))
        .route("/metrics", get(metrics::<P>))
        .route("/", get(root))
        .route("/function/{*rest}", any(function::<P>))
        .route("/async-function/{*rest}", post(async_function::<P>))
        .fallback(not_found)
        .with_state(Arc::clone(shared));
    // Routes the node adds (hardware administration): behind the same credentials.
    for routes in admin {
        router = router.merge(routes.clone().route_layer(middleware::from_fn_with_state(
            Arc::clone(shared),
            require_auth::<P>,
        )));
    }
    router.layer(middleware::from_fn(log_request))
}

// ---------------------------------------------------------------------------------------------
// Middleware
// ---------------------------------------------------------------------------------------------

async fn require_auth<P: Provider>(State(shared): Gw<P>, request: Request, next: Next) -> Response {
    if crate::auth::authorized(&shared.config.credentials, request.headers()) {
        return next.run(request).await;
    }
    debug!(path = %request.uri().path(), "request without valid credentials");
    let mut response = text_response(StatusCode::UNAUTHORIZED, "invalid credentials");
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Restricted\""),
    );
    response
}

/// One debug line per request: method, path (never the query or a body), status, duration.
async fn log_request(request: Request, next: Next) -> Response {
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

async fn root() -> Response {
    text_response(
        StatusCode::OK,
        "bramble: an OpenFaaS-compatible function runtime for Raspberry Pi boards.\n\
         Invoke a function:   curl http://HOST:8080/function/NAME\n\
         Manage functions:    faas-cli (OpenFaaS REST API under /system, HTTP Basic auth)\n\
         Health and metrics:  /healthz, /metrics\n\
         Documentation: see the README that ships with bramble.",
    )
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

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

fn check_resources(
    field: &str,
    resources: Option<&FunctionResources>,
    limits: bool,
) -> Result<(), ApiError> {
    let Some(r) = resources else { return Ok(()) };
    if let Some(memory) = r.memory.as_deref() {
        let bytes = validate::parse_memory(memory)
            .map_err(|e| ApiError::field(&format!("{field}.memory"), e))?;
        if limits && bytes == 0 {
            return Err(ApiError::field(
                &format!("{field}.memory"),
                "a memory limit must be more than 0",
            ));
        }
    }
    if let Some(cpu) = r.cpu.as_deref() {
        let millis = validate::parse_cpu_millis(cpu)
            .map_err(|e| ApiError::field(&format!("{field}.cpu"), e))?;
        if limits && millis == 0 {
            return Err(ApiError::field(
                &format!("{field}.cpu"),
                "a cpu limit must be more than 0",
            ));
        }
    }
    Ok(())
}

/// Validates a deployment and fills in its namespace.
fn check_deployment<P: Provider>(
    shared: &Shared<P>,
    d: &mut FunctionDeployment,
) -> Result<(), ApiError> {
    validate::function_name(&d.service).map_err(|e| ApiError::field("service", e))?;
    if d.image.trim().is_empty() {
        return Err(ApiError::field("image", "an image is required"));
    }
    d.namespace = Some(namespace_of(shared, "namespace", d.namespace.as_deref())?);
    for (i, secret) in d.secrets.iter().enumerate() {
        validate::secret_name(secret).map_err(|e| ApiError::field(&format!("secrets[{i}]"), e))?;
    }
    for (key, value) in &d.env_vars {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(ApiError::field(
                &format!("envVars.{key}"),
                "an environment variable name must be non-empty without '=' or NUL",
            ));
        }
        if value.contains('\0') {
            return Err(ApiError::field(
                &format!("envVars.{key}"),
                "the value contains a NUL byte",
            ));
        }
    }
    if d.env_process.as_deref().is_some_and(|p| p.contains('\0')) {
        return Err(ApiError::field("envProcess", "contains a NUL byte"));
    }
    check_resources("limits", d.limits.as_ref(), true)?;
    check_resources("requests", d.requests.as_ref(), false)?;
    Ok(())
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

// ---------------------------------------------------------------------------------------------
// Functions
// ---------------------------------------------------------------------------------------------

async fn list_functions<P: Provider>(State(shared): Gw<P>, Query(q): Params) -> ApiResult {
    let namespace = namespace_of(&shared, "namespace", q.get("namespace").map(String::as_str))?;
    let mut functions = shared
        .provider
        .list_functions(&namespace)
        .await
        .map_err(provider_error)?;
    for f in &mut functions {
        let ns = f.namespace.get_or_insert_with(|| namespace.clone()).clone();
        f.invocation_count = shared.metrics.invocations(&format!("{}.{ns}", f.name)) as f64;
    }
    json(StatusCode::OK, &functions)
}

async fn get_function<P: Provider>(
    State(shared): Gw<P>,
    Path(name): Path<String>,
    Query(q): Params,
) -> ApiResult {
    validate::function_name(&name).map_err(|e| ApiError::field("name", e))?;
    let namespace = namespace_of(&shared, "namespace", q.get("namespace").map(String::as_str))?;
    let usage = query_bool(&q, "usage", StatusCode::BAD_REQUEST)?;
    let Some(mut function) = shared
        .provider
        .get_function(&name, &namespace, usage)
        .await
        .map_err(provider_error)?
    else {
        return Err(ApiError::not_found(format!(
            "function {name}.{namespace} not found"
        )));
    };
    function.namespace.get_or_insert_with(|| namespace.clone());
    function.invocation_count = shared.metrics.invocations(&format!("{name}.{namespace}")) as f64;
    json(StatusCode::OK, &function)
}

async fn deploy<P: Provider>(State(shared): Gw<P>, headers: HeaderMap, body: Body) -> ApiResult {
    let mut d: FunctionDeployment = read_json(&headers, body, shared.config.max_api_body).await?;
    check_deployment(&shared, &mut d)?;
    shared.provider.deploy(d).await.map_err(provider_error)?;
    Ok(empty(StatusCode::OK))
}

async fn update<P: Provider>(State(shared): Gw<P>, headers: HeaderMap, body: Body) -> ApiResult {
    let mut d: FunctionDeployment = read_json(&headers, body, shared.config.max_api_body).await?;
    check_deployment(&shared, &mut d)?;
    shared.provider.update(d).await.map_err(provider_error)?;
    Ok(empty(StatusCode::OK))
}

async fn delete_function<P: Provider>(
    State(shared): Gw<P>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let r: DeleteFunctionRequest = read_json(&headers, body, shared.config.max_api_body).await?;
    validate::function_name(&r.function_name).map_err(|e| ApiError::field("functionName", e))?;
    let namespace = namespace_of(&shared, "namespace", r.namespace.as_deref())?;
    shared
        .provider
        .delete(&r.function_name, &namespace)
        .await
        .map_err(provider_error)?;
    Ok(empty(StatusCode::OK))
}

async fn scale<P: Provider>(
    State(shared): Gw<P>,
    Path(path_name): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let r: ScaleServiceRequest = read_json(&headers, body, shared.config.max_api_body).await?;
    // faasd uses `serviceName` and ignores the path; the path is the fallback.
    let (name, field) = if r.service_name.is_empty() {
        (path_name, "name")
    } else {
        (r.service_name, "serviceName")
    };
    validate::function_name(&name).map_err(|e| ApiError::field(field, e))?;
    let namespace = match r.namespace.as_deref().filter(|s| !s.is_empty()) {
        Some(ns) => namespace_of(&shared, "namespace", Some(ns))?,
        None => namespace_of(&shared, "namespace", q.get("namespace").map(String::as_str))?,
    };
    if r.replicas > MAX_REPLICAS {
        return Err(ApiError::field(
            "replicas",
            format!("{} is more than the maximum of {MAX_REPLICAS}", r.replicas),
        ));
    }
    shared
        .provider
        .scale(&name, &namespace, r.replicas)
        .await
        .map_err(provider_error)?;
    Ok(empty(StatusCode::OK))
}

#[derive(Serialize)]
struct SystemInfo<'a> {
    provider: ProviderInfo,
    version: &'a VersionInfo,
    arch: &'a str,
}

async fn info<P: Provider>(State(shared): Gw<P>) -> ApiResult {
    json(
        StatusCode::OK,
        &SystemInfo {
            provider: shared.provider.info(),
            version: &shared.config.version,
            arch: &shared.arch,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------------------------------

async fn list_namespaces<P: Provider>(State(shared): Gw<P>) -> ApiResult {
    let namespaces = shared
        .provider
        .list_namespaces()
        .await
        .map_err(provider_error)?;
    json(StatusCode::OK, &namespaces)
}

/// faasd's rule: a namespace bramble manages carries the label `openfaas` = `1` or `true`.
fn check_namespace_labels(ns: &FunctionNamespace) -> Result<(), ApiError> {
    match ns.labels.get("openfaas").map(String::as_str) {
        Some("1" | "true") => Ok(()),
        _ => Err(ApiError::field(
            "labels.openfaas",
            "a namespace needs the label openfaas=\"1\" (or \"true\")",
        )),
    }
}

async fn create_namespace<P: Provider>(
    State(shared): Gw<P>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let ns: FunctionNamespace = read_json(&headers, body, shared.config.max_api_body).await?;
    validate::namespace_name(&ns.name).map_err(|e| ApiError::field("name", e))?;
    check_namespace_labels(&ns)?;
    shared
        .provider
        .create_namespace(ns)
        .await
        .map_err(provider_error)?;
    Ok(empty(StatusCode::CREATED))
}

async fn get_namespace<P: Provider>(State(shared): Gw<P>, Path(name): Path<String>) -> ApiResult {
    validate::namespace_name(&name).map_err(|e| ApiError::field("name", e))?;
    match shared
        .provider
        .get_namespace(&name)
        .await
        .map_err(provider_error)?
    {
        Some(ns) => json(StatusCode::OK, &ns),
        None => Err(ApiError::not_found(format!("namespace {name} not found"))),
    }
}

async fn update_namespace<P: Provider>(
    State(shared): Gw<P>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    validate::namespace_name(&name).map_err(|e| ApiError::field("name", e))?;
    let mut ns: FunctionNamespace = read_json(&headers, body, shared.config.max_api_body).await?;
    if ns.name.is_empty() {
        ns.name.clone_from(&name);
    }
    if ns.name != name {
        return Err(ApiError::field(
            "name",
            format!(
                "{:?} does not match the namespace in the path, {name:?}",
                ns.name
            ),
        ));
    }
    check_namespace_labels(&ns)?;
    shared
        .provider
        .update_namespace(ns)
        .await
        .map_err(provider_error)?;
    Ok(empty(StatusCode::ACCEPTED))
}

async fn delete_namespace<P: Provider>(
    State(shared): Gw<P>,
    Path(name): Path<String>,
) -> ApiResult {
    validate::namespace_name(&name).map_err(|e| ApiError::field("name", e))?;
    shared
        .provider
        .delete_namespace(&name)
        .await
        .map_err(provider_error)?;
    Ok(empty(StatusCode::ACCEPTED))
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

async fn list_secrets<P: Provider>(State(shared): Gw<P>, Query(q): Params) -> ApiResult {
    let namespace = namespace_of(&shared, "namespace", q.get("namespace").map(String::as_str))?;
    let secrets = shared
        .provider
        .list_secrets(&namespace)
        .await
        .map_err(provider_error)?;
    // Names only, whatever the provider returned.
    let secrets: Vec<Secret> = secrets
        .into_iter()
        .map(|s| Secret {
            namespace: Some(s.namespace.unwrap_or_else(|| namespace.clone())),
            name: s.name,
            ..Secret::default()
        })
        .collect();
    json(StatusCode::OK, &secrets)
}

async fn put_secret<P: Provider>(
    State(shared): Gw<P>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let mut secret: Secret = read_json(&headers, body, shared.config.max_api_body).await?;
    validate::secret_name(&secret.name).map_err(|e| ApiError::field("name", e))?;
    secret.namespace = Some(namespace_of(
        &shared,
        "namespace",
        secret.namespace.as_deref(),
    )?);
    if secret.value.is_none() && secret.raw_value.is_none() {
        return Err(ApiError::field(
            "value",
            "a secret needs a value or a rawValue",
        ));
    }
    shared
        .provider
        .put_secret(secret)
        .await
        .map_err(provider_error)?;
    Ok(empty(StatusCode::OK))
}

async fn delete_secret<P: Provider>(
    State(shared): Gw<P>,
    Query(q): Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    // faas-cli sends `{"name","namespace"}` in the body; faasd reads the namespace from the
    // query. Both work here: the body first, then the query, then the default.
    let bytes = read_body(&headers, body, shared.config.max_api_body).await?;
    let from_body: Secret = if bytes.iter().all(u8::is_ascii_whitespace) {
        Secret::default()
    } else {
        parse_json(&bytes)?
    };
    let name = Some(from_body.name)
        .filter(|n| !n.is_empty())
        .or_else(|| q.get("name").cloned())
        .unwrap_or_default();
    validate::secret_name(&name).map_err(|e| ApiError::field("name", e))?;
    let namespace = match from_body.namespace.as_deref().filter(|s| !s.is_empty()) {
        Some(ns) => namespace_of(&shared, "namespace", Some(ns))?,
        None => namespace_of(&shared, "namespace", q.get("namespace").map(String::as_str))?,
    };
    shared
        .provider
        .delete_secret(&name, &namespace)
        .await
        .map_err(provider_error)?;
    Ok(empty(StatusCode::OK))
}

// ---------------------------------------------------------------------------------------------
// Images (a bramble extension: deploying with no registry on the LAN)
// ---------------------------------------------------------------------------------------------

async fn list_images<P: Provider>(State(shared): Gw<P>) -> ApiResult {
    let images = shared
        .provider
        .list_images()
        .await
        .map_err(provider_error)?;
    json(StatusCode::OK, &images)
}

/// `POST /system/images[?name=REF]`: the body is an image archive (OCI layout or `docker
/// save`, plain or gzipped). It is spooled to a file — the importer reads it twice, checking
/// everything before it writes — and removed afterwards whatever happens.
async fn import_images<P: Provider>(
    State(shared): Gw<P>,
    Query(q): Params,
    body: Body,
) -> ApiResult {
    let name = q
        .get("name")
        .map(String::as_str)
        .filter(|n| !n.trim().is_empty());
    let spooled =
        Spooled::receive(&shared.config.upload_dir, body, shared.config.max_upload).await?;
    let images = shared
        .provider
        .import_images(&spooled.path, name)
        .await
        .map_err(provider_error)?;
    json(StatusCode::OK, &ImportedImages { images })
}

async fn remove_image<P: Provider>(
    State(shared): Gw<P>,
    Query(q): Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    #[derive(serde::Deserialize, Default)]
    struct RemoveImage {
        #[serde(default)]
        name: String,
    }
    let bytes = read_body(&headers, body, shared.config.max_api_body).await?;
    let from_body: RemoveImage = if bytes.iter().all(u8::is_ascii_whitespace) {
        RemoveImage::default()
    } else {
        parse_json(&bytes)?
    };
    let name = Some(from_body.name)
        .filter(|n| !n.is_empty())
        .or_else(|| q.get("name").cloned())
        .unwrap_or_default();
    if name.trim().is_empty() {
        return Err(ApiError::field("name", "the image to remove is required"));
    }
    shared
        .provider
        .remove_image(&name)
        .await
        .map_err(provider_error)?;
    Ok(empty(StatusCode::OK))
}

/// An uploaded file, removed on drop.
struct Spooled {
    path: std::path::PathBuf,
}

impl Spooled {
    async fn receive(dir: &std::path::Path, body: Body, limit: u64) -> Result<Spooled, ApiError> {
        use tokio::io::AsyncWriteExt as _;
        let internal = |what: &str, e: std::io::Error| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{what} {}: {e}", dir.display()),
            )
        };
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| internal("creating", e))?;
        let spooled = Spooled {
            path: dir.join(format!("upload-{}.tar", crate::http_util::new_call_id())),
        };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&spooled.path)
            .await
            .map_err(|e| internal("spooling an upload in", e))?;
        let mut stream = body.into_data_stream();
        let mut received: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, format!("reading the upload: {e}"))
            })?;
            received += chunk.len() as u64;
            if received > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the image archive is larger than the {limit} bytes allowed"),
                ));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| internal("writing an upload in", e))?;
        }
        file.flush()
            .await
            .map_err(|e| internal("writing an upload in", e))?;
        if received == 0 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "the body must be an image archive (tar or tar.gz)",
            ));
        }
        Ok(spooled)
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

pub(crate) fn parse_log_request(
    q: &HashMap<String, String>,
    default_namespace: &str,
) -> Result<LogRequest, ApiError> {
    let unprocessable = |field: &str, message: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{field}: {message}"),
        )
    };
    let name = q.get("name").map(String::as_str).unwrap_or_default();
    validate::function_name(name).map_err(|e| unprocessable("name", e))?;
    let namespace = match q
        .get("namespace")
        .map(String::as_str)
        .filter(|s| !s.is_empty())
    {
        Some(ns) => {
            validate::namespace_name(ns).map_err(|e| unprocessable("namespace", e))?;
            ns.to_owned()
        }
        None => default_namespace.to_owned(),
    };
    let tail = match q.get("tail").map(String::as_str).filter(|s| !s.is_empty()) {
        None => None,
        Some(t) => {
            let n: i64 = t
                .parse()
                .map_err(|_| unprocessable("tail", format!("{t:?} is not an integer")))?;
            // Go's -1 (and any negative) means every line.
            usize::try_from(n).ok()
        }
    };
    let follow = query_bool(q, "follow", StatusCode::UNPROCESSABLE_ENTITY)?;
    let since = match q.get("since").map(String::as_str).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(crate::rfc3339::parse(s).map_err(|e| unprocessable("since", e))?),
    };
    let instance = q.get("instance").filter(|s| !s.is_empty()).cloned();
    Ok(LogRequest {
        name: name.to_owned(),
        namespace,
        instance,
        since,
        tail,
        follow,
    })
}

async fn logs<P: Provider>(State(shared): Gw<P>, Query(q): Params) -> ApiResult {
    let request = parse_log_request(&q, &shared.config.default_namespace)?;
    let stream = shared
        .provider
        .logs(request)
        .await
        .map_err(provider_error)?;
    // A followed stream ends when the server shuts down, so it does not hold up draining.
    let lines = stream
        .take_until(shared.shutting_down())
        .filter_map(|message| async move {
            match serde_json::to_vec(&message) {
                Ok(mut line) => {
                    line.push(b'\n');
                    Some(Ok::<_, Infallible>(Bytes::from(line)))
                }
                Err(e) => {
                    warn!(error = %e, "cannot encode a log line");
                    None
                }
            }
        });
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Health and metrics
// ---------------------------------------------------------------------------------------------

async fn healthz<P: Provider>(State(shared): Gw<P>) -> Response {
    match shared.provider.health().await {
        Ok(()) => {
            // Exactly `OK`, like the OpenFaaS gateway's `/healthz`.
            let mut response = Response::new(Body::from("OK"));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        }
        Err(reason) => {
            warn!(%reason, "unhealthy");
            text_response(StatusCode::SERVICE_UNAVAILABLE, reason)
        }
    }
}

async fn metrics<P: Provider>(State(shared): Gw<P>) -> Response {
    let usage = shared.provider.usage().await;
    let mut response = Response::new(Body::from(shared.metrics.render(&usage)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

// ---------------------------------------------------------------------------------------------
// Invocation
// ---------------------------------------------------------------------------------------------

/// Splits `/PREFIX/NAME[.NS][/rest]` into name, namespace and the path the function sees.
fn split_function_path(
    path: &str,
    prefix: &str,
    default_namespace: &str,
) -> Result<(String, String, String), ApiError> {
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let (target, function_path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (name, namespace) = match target.rsplit_once('.') {
        Some((name, ns)) => (name, ns),
        None => (target, default_namespace),
    };
    validate::function_name(name).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    validate::namespace_name(namespace).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    Ok((
        name.to_owned(),
        namespace.to_owned(),
        function_path.to_owned(),
    ))
}

/// The function's view of a request URI: `rest` plus the original query.
fn function_uri(rest: &str, original: &Uri) -> Result<Uri, ApiError> {
    let pq = match original.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    // As a path (never an authority, whatever it starts with).
    let pq: http::uri::PathAndQuery = pq
        .parse()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid path: {e}")))?;
    Ok(Uri::from(pq))
}

async fn function<P: Provider>(State(shared): Gw<P>, mut request: Request) -> Response {
    let (name, namespace, rest) = match split_function_path(
        request.uri().path(),
        "/function/",
        &shared.config.default_namespace,
    ) {
        Ok(split) => split,
        Err(e) => return e.into_response(),
    };
    match function_uri(&rest, request.uri()) {
        Ok(uri) => *request.uri_mut() = uri,
        Err(e) => return e.into_response(),
    }
    crate::proxy::invoke(&shared, &name, &namespace, request).await
}

async fn async_function<P: Provider>(State(shared): Gw<P>, request: Request) -> ApiResult {
    let (name, namespace, rest) = split_function_path(
        request.uri().path(),
        "/async-function/",
        &shared.config.default_namespace,
    )?;
    let uri = function_uri(&rest, request.uri())?;
    let (parts, body) = request.into_parts();
    let callback_url = match parts.headers.get("x-callback-url") {
        Some(value) => {
            Some(validate_callback_url(value).map_err(|e| ApiError::field("X-Callback-Url", e))?)
        }
        None => None,
    };
    let body = read_body(&parts.headers, body, shared.config.max_async_body).await?;
    // A clear 404 now rather than a callback saying 404 later; when the provider cannot tell
    // (it is down), the call is queued and retried.
    if let Ok(None) = shared.provider.get_function(&name, &namespace, false).await {
        return Err(ApiError::not_found(format!(
            "function {name}.{namespace} not found"
        )));
    }
    let call_id = call_id_of(&parts.headers);
    let mut headers = parts.headers;
    if let Ok(v) = HeaderValue::from_str(&call_id) {
        headers.insert("x-call-id", v);
    }
    if let Some(peer) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        let ip = peer.0.ip().to_string();
        let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(previous) => format!("{previous}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded) {
            headers.insert("x-forwarded-for", v);
        }
    }
    let record = CallRecord::new(
        call_id.clone(),
        &name,
        &namespace,
        &parts.method,
        uri.to_string(),
        &headers,
        callback_url,
    );
    shared.queue.enqueue(&record, body).await.map_err(|e| {
        warn!(error = %e, "cannot queue an async call");
        if matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ) {
            // Refused, not accepted and lost: the caller can retry once there is space.
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("cannot queue the call, the disk is full: {e}"),
            )
        } else {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot queue the call: {e}"),
            )
        }
    })?;
    debug!(call_id = %call_id, function = %format!("{name}.{namespace}"), "async call queued");
    let mut response = empty(StatusCode::ACCEPTED);
    if let Ok(v) = HeaderValue::from_str(&call_id) {
        response.headers_mut().insert("x-call-id", v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_paths_split_on_the_last_dot() {
        let split = |p: &str| split_function_path(p, "/function/", "openfaas-fn");
        assert_eq!(
            split("/function/hello").unwrap(),
            ("hello".into(), "openfaas-fn".into(), "/".into())
        );
        assert_eq!(
            split("/function/hello/").unwrap(),
            ("hello".into(), "openfaas-fn".into(), "/".into())
        );
        assert_eq!(
            split("/function/hello.dev/a/b.c").unwrap(),
            ("hello".into(), "dev".into(), "/a/b.c".into())
        );
        assert!(
            split("/function/a.b.c")
                .unwrap_err()
                .message
                .contains("function name \"a.b\"")
        );
        assert!(split("/function/hello.").is_err());
        assert!(split("/function/Hello").is_err());
        let uri: Uri = "/function/hello/x?y=1&z".parse().unwrap();
        assert_eq!(function_uri("/x", &uri).unwrap(), "/x?y=1&z");
        assert_eq!(function_uri("//x", &uri).unwrap().path(), "//x");
    }

    #[test]
    fn log_queries() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>()
        };
        let r = parse_log_request(
            &q(&[("name", "f"), ("tail", "-1"), ("follow", "false")]),
            "openfaas-fn",
        )
        .unwrap();
        assert_eq!(
            (r.namespace.as_str(), r.tail, r.follow, r.since),
            ("openfaas-fn", None, false, None)
        );
        let r = parse_log_request(
            &q(&[
                ("name", "f"),
                ("tail", "5"),
                ("follow", "1"),
                ("since", "2024-05-01T10:00:00Z"),
                ("instance", "i"),
            ]),
            "x",
        )
        .unwrap();
        assert_eq!(
            (r.tail, r.follow, r.instance.as_deref()),
            (Some(5), true, Some("i"))
        );
        assert!(r.since.is_some());
        for (bad, field) in [
            (q(&[]), "name"),
            (q(&[("name", "f"), ("tail", "x")]), "tail"),
            (q(&[("name", "f"), ("follow", "yes")]), "follow"),
            (q(&[("name", "f"), ("since", "yesterday")]), "since"),
            (q(&[("name", "f"), ("namespace", "Bad")]), "namespace"),
        ] {
            let e = parse_log_request(&bad, "x").unwrap_err();
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(
                e.message.starts_with(&format!("{field}: ")),
                "{}",
                e.message
            );
        }
    }
}
