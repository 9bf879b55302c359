//! `/system/images`, a bramble extension: deploying with no registry on the LAN.

use axum::body::Body;
use axum::extract::{Query, State};
use futures::StreamExt as _;
use http::{HeaderMap, StatusCode};

use crate::http_util::{ApiError, empty, parse_json, read_body};
use crate::provider::Provider;
use crate::types::ImportedImages;

use super::{ApiResult, Gw, Params, json, provider_error};

pub(super) async fn list_images<P: Provider>(State(shared): Gw<P>) -> ApiResult {
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
pub(super) async fn import_images<P: Provider>(
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

pub(super) async fn remove_image<P: Provider>(
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
