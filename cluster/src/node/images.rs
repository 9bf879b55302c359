//! Images between boards: a board that needs an image it lacks fetches it from a board that
//! has it, so `bramble image import` on one board is enough for the whole cluster, with no
//! registry on the LAN.
//!
//! Both sides speak over the board listener (TLS under the cluster's CA; only boards, which
//! show a certificate it signed, are answered):
//!
//! | route | answer |
//! |---|---|
//! | `GET /cluster/images/document?name=NAME` | the image's top document (index or manifest), `Content-Type` its media type, [`DIGEST_HEADER`] its digest; 404 when the board has no such image |
//! | `GET /cluster/images/blob/DIGEST` | the blob's bytes, streamed; 404 when the board does not have it |
//!
//! [`BoardImages`] is the asking side, the runtime's [`ImageSource`]: it asks every board that is
//! not dead at once and fetches from the first that has the image. The runtime checks what
//! arrives against the digests (the top document against the digest the board names, the
//! rest against the manifest's descriptors) and the platform before anything is written.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bramble_runtime::image::{Blobs, Chunks, Document, Found, ImageService, ImageSource};
use futures::future::BoxFuture;
use futures::{StreamExt as _, TryStreamExt as _};
use http::StatusCode;
use serde::Deserialize;

use super::{ClusterNode, NodeError};
use crate::membership::BoardState;

/// Where a board asks for an image's top document.
pub const DOCUMENT_PATH: &str = "/cluster/images/document";
/// Where a board asks for a blob (followed by its digest).
pub const BLOB_PREFIX: &str = "/cluster/images/blob/";
/// The header naming the top document's digest.
pub const DIGEST_HEADER: &str = "x-bramble-digest";

/// How long a board has to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a board has to say whether it has an image.
const FIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest silence while a blob streams.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What the serving side needs: this board's images.
pub trait LocalImages: Send + Sync + 'static {
    /// The board's image service.
    fn image_service(&self) -> &ImageService;
}

/// The routes of the table above, for the board listener.
pub fn router<L: LocalImages>(local: Arc<L>) -> Router {
    Router::new()
        .route(DOCUMENT_PATH, get(document::<L>))
        .route(&format!("{BLOB_PREFIX}{{digest}}"), get(blob::<L>))
        .route_layer(axum::middleware::from_fn(
            bramble_gateway::BoardPeer::only_boards,
        ))
        .with_state(local)
}

#[derive(Deserialize)]
struct DocumentQuery {
    name: String,
}

async fn document<L: LocalImages>(
    State(local): State<Arc<L>>,
    Query(query): Query<DocumentQuery>,
) -> Response {
    match local.image_service().document(&query.name).await {
        Ok(Some(document)) => (
            [
                (http::header::CONTENT_TYPE, document.media_type),
                (
                    http::HeaderName::from_static(DIGEST_HEADER),
                    document.digest,
                ),
            ],
            document.bytes,
        )
            .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!("no image {} on this board\n", query.name),
        )
            .into_response(),
        Err(e) => served_error(&e),
    }
}

async fn blob<L: LocalImages>(State(local): State<Arc<L>>, Path(digest): Path<String>) -> Response {
    match local.image_service().blob(&digest).await {
        Ok(Some((size, chunks))) => (
            [(http::header::CONTENT_LENGTH, size.to_string())],
            Body::from_stream(chunks),
        )
            .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            format!("no blob {digest} on this board\n"),
        )
            .into_response(),
        Err(e) => served_error(&e),
    }
}

fn served_error(e: &bramble_runtime::Error) -> Response {
    let status = match e {
        bramble_runtime::Error::Invalid(_) => StatusCode::BAD_REQUEST,
        _ if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, format!("{}\n", e.chain())).into_response()
}

/// The other boards of the cluster as a source of images (see the module's documentation).
pub struct BoardImages {
    node: Arc<ClusterNode>,
    client: reqwest::Client,
}

impl std::fmt::Debug for BoardImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoardImages")
            .field("board", &self.node.board())
            .finish_non_exhaustive()
    }
}

impl BoardImages {
    /// Asks the boards `node` knows, showing this board's certificate.
    pub fn new(node: Arc<ClusterNode>) -> Result<BoardImages, NodeError> {
        let files = node.files();
        let tls = super::tls::client_config(&files.cluster, &files.board)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .map_err(NodeError::Client)?;
        Ok(BoardImages { node, client })
    }

    /// The board listeners of the boards that are not dead, this one aside.
    fn boards(&self) -> Vec<(String, SocketAddr)> {
        let me = self.node.board();
        self.node
            .view()
            .boards
            .iter()
            .filter(|(name, b)| **name != me && b.state != BoardState::Dead)
            .filter_map(|(name, b)| {
                let info = b.info.as_ref()?;
                (info.board_port != 0)
                    .then(|| (name.clone(), SocketAddr::new(info.address, info.board_port)))
            })
            .collect()
    }

    /// Asks `board` for image `name`'s top document.
    async fn ask(&self, board: &str, base: &str, name: &str) -> Result<Option<Document>, String> {
        let asked = self
            .client
            .get(format!("{base}{DOCUMENT_PATH}"))
            .query(&[("name", name)])
            .timeout(FIND_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("board {board}: {}", bramble_base::error_chain(&e)))?;
        match asked.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            status => {
                let text = asked.text().await.unwrap_or_default();
                return Err(format!("board {board} answered {status}: {}", text.trim()));
            }
        }
        let header = |name: &str| {
            asked
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (Some(digest), Some(media_type)) = (
            header(DIGEST_HEADER),
            header(http::header::CONTENT_TYPE.as_str()),
        ) else {
            return Err(format!(
                "board {board} sent a document without its digest or media type"
            ));
        };
        let bytes = asked
            .bytes()
            .await
            .map_err(|e| format!("board {board}: {}", bramble_base::error_chain(&e)))?;
        Ok(Some(Document {
            digest,
            media_type,
            bytes,
        }))
    }
}

impl ImageSource for BoardImages {
    fn find<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Found>, bramble_runtime::image::SourceError>> {
        Box::pin(async move {
            let mut asking: futures::stream::FuturesUnordered<_> = self
                .boards()
                .into_iter()
                .map(|(board, addr)| async move {
                    let base = format!("https://{addr}");
                    let answer = self.ask(&board, &base, name).await;
                    (board, base, answer)
                })
                .collect();
            let mut failures = Vec::new();
            while let Some((board, base, answer)) = asking.next().await {
                match answer {
                    Ok(Some(top)) => {
                        return Ok(Some(Found {
                            from: format!("board {board}"),
                            top,
                            blobs: Box::new(BoardBlobs {
                                client: self.client.clone(),
                                board,
                                base,
                            }),
                        }));
                    }
                    Ok(None) => {}
                    Err(failure) => failures.push(failure),
                }
            }
            if failures.is_empty() {
                Ok(None)
            } else {
                Err(format!(
                    "no board that answered has it, and some did not: {}",
                    failures.join("; ")
                )
                .into())
            }
        })
    }
}

/// The blobs of an image found on `board`.
struct BoardBlobs {
    client: reqwest::Client,
    board: String,
    /// `https://ADDRESS:PORT` of its board listener.
    base: String,
}

impl Blobs for BoardBlobs {
    fn blob<'a>(
        &'a self,
        digest: &'a str,
    ) -> BoxFuture<'a, Result<Chunks, bramble_runtime::image::SourceError>> {
        Box::pin(async move {
            let response = self
                .client
                .get(format!("{}{BLOB_PREFIX}{digest}", self.base))
                .send()
                .await?;
            if !response.status().is_success() {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                return Err(format!(
                    "board {} answered {status} for {digest}: {}",
                    self.board,
                    text.trim()
                )
                .into());
            }
            Ok(response
                .bytes_stream()
                .map_err(bramble_runtime::image::SourceError::from)
                .boxed())
        })
    }
}
