//! Images from somewhere other than a registry: another board of a cluster that has a copy.
//!
//! [`ImageService::set_source`] gives the service an [`ImageSource`]. [`ImageService::ensure`]
//! asks it for an image that is not present before going to the image's registry (not with the
//! pull policy `Always`, which means the registry's current answer). What a source sends is
//! checked like a registry's answer: every document and blob against its digest, the platform
//! before anything is written, each layer's size bound. [`ImageService::document`] and
//! [`ImageService::blob`] are the other side: what a board sends when asked.

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};

use super::fetch;
use super::oci::Descriptor;
use super::{ImageService, ProgressFn};
use crate::content::{self, sha256_digest};
use crate::error::{Error, Result};

/// What went wrong on a source's side (the network, the other board).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// A blob's bytes as they arrive.
pub type Chunks = BoxStream<'static, std::result::Result<Bytes, SourceError>>;

/// An image's top document (an index or a manifest) as its record names it.
#[derive(Clone, Debug)]
pub struct Document {
    /// Its digest: the image record's target.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Its bytes.
    pub bytes: Bytes,
}

/// An image a source has.
pub struct Found {
    /// Who has it, for messages and logs (`board b1`).
    pub from: String,
    /// Its top document.
    pub top: Document,
    /// Its documents and blobs, from the same place.
    pub blobs: Box<dyn Blobs>,
}

/// Where the documents and blobs of a [`Found`] image come from.
pub trait Blobs: Send + Sync {
    /// The bytes of `digest` (a document or a blob), in chunks as they arrive.
    fn blob<'a>(
        &'a self,
        digest: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Chunks, SourceError>>;
}

/// Somewhere images may be found besides their registries.
pub trait ImageSource: Send + Sync + std::fmt::Debug {
    /// Image `name` (normalised, as [`ImageService::get`] takes it), or `None` when no copy is
    /// there.
    fn find<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Option<Found>, SourceError>>;
}

/// Fetches `found` as image `name` and commits it. Called with the image's lock held.
pub(super) async fn fetch(
    service: &ImageService,
    name: &str,
    found: &Found,
    progress: &ProgressFn<'_>,
) -> Result<()> {
    let top = &found.top;
    check_digest(name, &found.from, &top.digest, &top.bytes)?;
    let from = FromSource { name, found };
    fetch::fetch(
        service,
        name,
        top.bytes.clone(),
        &top.digest,
        &from,
        progress,
    )
    .await
}

/// A found image as a [`fetch::Fetcher`].
struct FromSource<'a> {
    name: &'a str,
    found: &'a Found,
}

impl FromSource<'_> {
    fn error(&self, source: SourceError) -> Error {
        Error::Source {
            image: self.name.to_owned(),
            from: self.found.from.clone(),
            source,
        }
    }

    /// A document, read whole (bounded) and checked against its digest.
    async fn document(&self, descriptor: &Descriptor) -> Result<Bytes> {
        let mut chunks = self
            .found
            .blobs
            .blob(&descriptor.digest)
            .await
            .map_err(|e| self.error(e))?;
        // Read whole, like the image metadata of the content store: bounded the same way.
        let max = usize::try_from(content::MAX_METADATA_BLOB).unwrap_or(usize::MAX);
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.next().await {
            bytes.extend_from_slice(&chunk.map_err(|e| self.error(e))?);
            if bytes.len() > max {
                return Err(Error::InvalidImage {
                    image: self.name.to_owned(),
                    reason: format!(
                        "{} sent more than {max} bytes for document {}",
                        self.found.from, descriptor.digest
                    ),
                });
            }
        }
        check_digest(self.name, &self.found.from, &descriptor.digest, &bytes)?;
        Ok(Bytes::from(bytes))
    }
}

impl fetch::Fetcher for FromSource<'_> {
    async fn manifest(&self, descriptor: &Descriptor) -> Result<Bytes> {
        self.document(descriptor).await
    }

    async fn config(&self, descriptor: &Descriptor) -> Result<Vec<u8>> {
        Ok(self.document(descriptor).await?.to_vec())
    }

    async fn layer(&self, descriptor: &Descriptor) -> Result<Chunks> {
        // Checked against the digest by the content store as it is written.
        self.found
            .blobs
            .blob(&descriptor.digest)
            .await
            .map_err(|e| self.error(e))
    }
}

fn check_digest(name: &str, from: &str, digest: &str, bytes: &[u8]) -> Result<()> {
    let actual = sha256_digest(bytes);
    if actual == digest {
        return Ok(());
    }
    Err(Error::InvalidImage {
        image: name.to_owned(),
        reason: format!("{from} sent {actual} when {digest} was asked"),
    })
}

impl ImageService {
    /// Lets [`ImageService::ensure`] find images that are not present at `source` before
    /// their registry. Only the first call counts.
    pub fn set_source(&self, source: std::sync::Arc<dyn ImageSource>) {
        if self.source.set(source).is_err() {
            tracing::warn!("an image source was set already; keeping the first");
        }
    }

    /// The top document of image `name` (normalised), if present: what another board asks
    /// first.
    pub async fn document(&self, name: &str) -> Result<Option<Document>> {
        let Some(target) = self.target(name).await? else {
            return Ok(None);
        };
        let bytes = content::read_blob(&self.conn, &target.digest).await?;
        Ok(Some(Document {
            digest: target.digest,
            media_type: target.media_type,
            bytes,
        }))
    }

    /// The bytes of blob `digest` in chunks with its size, or `None` when the content store
    /// does not have it.
    pub async fn blob(&self, digest: &str) -> Result<Option<(u64, Chunks)>> {
        content::validate_digest(digest)?;
        let Some(info) = content::info(&self.conn, digest).await? else {
            return Ok(None);
        };
        let chunks = content::read_stream(&self.conn, digest)
            .await?
            .map_err(SourceError::from)
            .boxed();
        Ok(Some((u64::try_from(info.size).unwrap_or(0), chunks)))
    }
}
