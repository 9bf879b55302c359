//! `/system/secrets`: names only in answers, never values.

use axum::body::Body;
use axum::extract::{Query, State};
use http::{HeaderMap, StatusCode};

use crate::http_util::{ApiError, empty, parse_json, read_body, read_json};
use crate::provider::Provider;
use crate::types::Secret;
use crate::validate;

use super::{ApiResult, Gw, Params, json, namespace_of, provider_error};

pub(super) async fn list_secrets<P: Provider>(State(shared): Gw<P>, Query(q): Params) -> ApiResult {
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

pub(super) async fn put_secret<P: Provider>(
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

pub(super) async fn delete_secret<P: Provider>(
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
