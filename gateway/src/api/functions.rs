//! `/system/functions`, `/system/function/{name}` and `/system/scale-function/{name}`:
//! list, read, deploy, update, delete and scale functions.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use http::{HeaderMap, StatusCode};

use crate::gateway::Shared;
use crate::http_util::{ApiError, empty, read_json};
use crate::provider::Provider;
use crate::types::{
    DeleteFunctionRequest, FunctionDeployment, FunctionResources, ScaleServiceRequest,
};
use crate::validate;

use super::{ApiResult, Gw, MAX_REPLICAS, Params, json, namespace_of, provider_error, query_bool};

pub(super) async fn list_functions<P: Provider>(
    State(shared): Gw<P>,
    Query(q): Params,
) -> ApiResult {
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

pub(super) async fn get_function<P: Provider>(
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

pub(super) async fn deploy<P: Provider>(
    State(shared): Gw<P>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let mut d: FunctionDeployment = read_json(&headers, body, shared.config.max_api_body).await?;
    check_deployment(&shared, &mut d)?;
    shared.provider.deploy(d).await.map_err(provider_error)?;
    Ok(empty(StatusCode::OK))
}

pub(super) async fn update<P: Provider>(
    State(shared): Gw<P>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let mut d: FunctionDeployment = read_json(&headers, body, shared.config.max_api_body).await?;
    check_deployment(&shared, &mut d)?;
    shared.provider.update(d).await.map_err(provider_error)?;
    Ok(empty(StatusCode::OK))
}

pub(super) async fn delete_function<P: Provider>(
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

pub(super) async fn scale<P: Provider>(
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

pub(super) fn check_resources(
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
pub(super) fn check_deployment<P: Provider>(
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
