//! `/system/info`, `/healthz` and `/metrics`.

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};
use serde::Serialize;
use tracing::warn;

use crate::http_util::text_response;
use crate::provider::Provider;
use crate::types::{ProviderInfo, VersionInfo};

use super::{ApiResult, Gw, json};

#[derive(Serialize)]
struct SystemInfo<'a> {
    provider: ProviderInfo,
    version: &'a VersionInfo,
    arch: &'a str,
}

pub(super) async fn info<P: Provider>(State(shared): Gw<P>) -> ApiResult {
    json(
        StatusCode::OK,
        &SystemInfo {
            provider: shared.provider.info(),
            version: &shared.config.version,
            arch: &shared.arch,
        },
    )
}

pub(super) async fn healthz<P: Provider>(State(shared): Gw<P>) -> Response {
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

pub(super) async fn metrics<P: Provider>(State(shared): Gw<P>) -> Response {
    let usage = shared.provider.usage().await;
    let mut response = Response::new(Body::from(shared.metrics.render(&usage)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
