//! `/system/namespaces` and `/system/namespace/{name}`.

use axum::body::Body;
use axum::extract::{Path, State};
use http::{HeaderMap, StatusCode};

use crate::http_util::{ApiError, empty, read_json};
use crate::provider::Provider;
use crate::types::FunctionNamespace;
use crate::validate;

use super::{ApiResult, Gw, json, provider_error};

pub(super) async fn list_namespaces<P: Provider>(State(shared): Gw<P>) -> ApiResult {
    let namespaces = shared
        .provider
        .list_namespaces()
        .await
        .map_err(provider_error)?;
    json(StatusCode::OK, &namespaces)
}

/// faasd's rule: a namespace bramble manages carries the label `openfaas` = `1` or `true`.
pub(super) fn check_namespace_labels(ns: &FunctionNamespace) -> Result<(), ApiError> {
    match ns.labels.get("openfaas").map(String::as_str) {
        Some("1" | "true") => Ok(()),
        _ => Err(ApiError::field(
            "labels.openfaas",
            "a namespace needs the label openfaas=\"1\" (or \"true\")",
        )),
    }
}

pub(super) async fn create_namespace<P: Provider>(
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

pub(super) async fn get_namespace<P: Provider>(
    State(shared): Gw<P>,
    Path(name): Path<String>,
) -> ApiResult {
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

pub(super) async fn update_namespace<P: Provider>(
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

pub(super) async fn delete_namespace<P: Provider>(
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
