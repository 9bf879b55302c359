//! containerd's content store: writing, reading and labelling blobs.
//!
//! The write protocol has quirks (see `reference/containerd-rust.md` §1.6 item 7): the first
//! message carries the ingest ref; offsets must match the server's; a commit must send
//! `offset = total` (an offset of 0 truncates); an existing blob answers `AlreadyExists`
//! (success for us); and the final commit response arrives twice, so responses are read to
//! the end, never counted.

use std::collections::HashMap;

use bytes::Bytes;
use containerd_client::services::v1::{
    Info, InfoRequest, ReadContentRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use futures::{Stream, StreamExt};
use prost_types::FieldMask;
use sha2::{Digest as _, Sha256};

use crate::client::{Connection, Lease};
use crate::error::{Error, Result};

/// Largest blob read whole into memory (manifests, indexes, configs). Real ones are a few KiB.
pub(crate) const MAX_METADATA_BLOB: i64 = 4 << 20;

/// Size of the chunks sent to `Content.Write`.
const WRITE_CHUNK: usize = 1 << 20;

/// `sha256:<hex>` of some bytes.
pub(crate) fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Checks that a digest string is a well-formed sha256 digest (the only algorithm containerd
/// 1.6 stores by default).
pub(crate) fn validate_digest(digest: &str) -> Result<()> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok(())
        }
        _ => Err(Error::Invalid(format!("invalid content digest {digest:?}"))),
    }
}

/// Information about a blob, or `None` when the store does not have it.
pub(crate) async fn info(conn: &Connection, digest: &str) -> Result<Option<Info>> {
    let mut client = conn.content();
    let request = conn.request(InfoRequest {
        digest: digest.to_owned(),
    });
    match conn.call("Content.Info", client.info(request)).await {
        Ok(reply) => Ok(reply.info),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a whole (small) blob and verifies its digest.
pub(crate) async fn read_blob(conn: &Connection, digest: &str) -> Result<Bytes> {
    validate_digest(digest)?;
    let Some(info) = info(conn, digest).await? else {
        return Err(Error::NotFound {
            kind: "content",
            id: digest.to_owned(),
        });
    };
    if info.size > MAX_METADATA_BLOB {
        return Err(Error::Invalid(format!(
            "content {digest} is {} bytes, more than the {MAX_METADATA_BLOB} allowed for image metadata",
            info.size
        )));
    }
    let mut client = conn.content();
    let request = conn.request(ReadContentRequest {
        digest: digest.to_owned(),
        offset: 0,
        size: 0,
    });
    let mut stream = conn.call("Content.Read", client.read(request)).await?;
    let mut data = Vec::with_capacity(usize::try_from(info.size).unwrap_or(0));
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                data.extend_from_slice(&chunk.data);
                if data.len() as u64 > MAX_METADATA_BLOB as u64 {
                    return Err(Error::Invalid(format!(
                        "content {digest} is larger than it claims"
                    )));
                }
            }
            Ok(None) => break,
            Err(status) => return Err(conn.status_error("Content.Read", &status)),
        }
    }
    let actual = sha256_digest(&data);
    if actual != digest {
        return Err(Error::Invalid(format!(
            "content {digest} is corrupt: its bytes hash to {actual}"
        )));
    }
    Ok(Bytes::from(data))
}

/// The bytes of blob `digest` as containerd sends them, in chunks (not verified here: the
/// reader checks them against the digest, as a board fetching a blob does when it writes it).
pub(crate) async fn read_stream(
    conn: &Connection,
    digest: &str,
) -> Result<impl Stream<Item = Result<Bytes>> + Send + 'static> {
    validate_digest(digest)?;
    let mut client = conn.content();
    let request = conn.request(ReadContentRequest {
        digest: digest.to_owned(),
        offset: 0,
        size: 0,
    });
    let stream = conn.call("Content.Read", client.read(request)).await?;
    let conn = conn.clone();
    Ok(stream.map(move |message| match message {
        Ok(chunk) => Ok(Bytes::from(chunk.data)),
        Err(status) => Err(conn.status_error("Content.Read", &status)),
    }))
}

/// Writes a blob of known digest and size from a stream of chunks, unless the store already
/// has it. `labels` are set on commit (garbage-collection references, `containerd.io/uncompressed`).
///
/// The stream's bytes are checked against `digest` by containerd at commit; a mismatch fails
/// the write and leaves nothing behind.
pub(crate) async fn write_blob<S, E>(
    conn: &Connection,
    lease: &Lease,
    digest: &str,
    size: i64,
    labels: HashMap<String, String>,
    chunks: S,
) -> Result<()>
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    validate_digest(digest)?;
    if let Some(existing) = info(conn, digest).await? {
        if !labels.is_empty() {
            add_labels(conn, &existing.digest, &labels).await?;
        }
        return Ok(());
    }
    let reference = format!("bramble-{digest}");
    let expected = digest.to_owned();
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
    let (source_error_tx, mut source_error_rx) = tokio::sync::oneshot::channel::<String>();

    // Feed the request stream from the chunk stream; offsets are tracked here.
    let feeder = {
        let reference = reference.clone();
        let expected = expected.clone();
        tokio::spawn(async move {
            let mut offset: i64 = 0;
            let mut chunks = Box::pin(chunks);
            let mut pending: Option<Bytes> = None;
            let mut failure = None;
            loop {
                let next = match pending.take() {
                    Some(rest) => Some(Ok(rest)),
                    None => chunks.next().await,
                };
                match next {
                    Some(Ok(mut chunk)) => {
                        if chunk.len() > WRITE_CHUNK {
                            pending = Some(chunk.split_off(WRITE_CHUNK));
                        }
                        if chunk.is_empty() {
                            continue;
                        }
                        let len = chunk.len() as i64;
                        let message = WriteContentRequest {
                            action: WriteAction::Write as i32,
                            r#ref: reference.clone(),
                            total: size,
                            expected: expected.clone(),
                            offset,
                            data: chunk.to_vec(),
                            labels: HashMap::new(),
                        };
                        offset += len;
                        if tx.send(message).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        failure = Some(e.to_string());
                        break;
                    }
                    None => break,
                }
            }
            if let Some(reason) = failure {
                // Dropping `tx` without a commit ends the call with an error on the server side.
                let _ = source_error_tx.send(reason);
                return;
            }
            let commit = WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref: reference,
                total: size,
                expected,
                offset,
                data: Vec::new(),
                labels,
            };
            let _ = tx.send(commit).await;
        })
    };

    let mut client = conn.content();
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
    let outcome = match client.write(conn.leased_request(requests, lease)).await {
        Ok(response) => {
            let mut responses = response.into_inner();
            loop {
                match responses.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(status),
                }
            }
        }
        Err(status) => Err(status),
    };
    let _ = feeder.await;
    if let Ok(reason) = source_error_rx.try_recv() {
        return Err(Error::Invalid(format!("reading {digest}: {reason}")));
    }
    match outcome {
        Ok(()) => Ok(()),
        Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(status) => Err(conn.status_error("Content.Write", &status)),
    }
}

/// Writes a blob held in memory.
pub(crate) async fn write_bytes(
    conn: &Connection,
    lease: &Lease,
    data: Bytes,
    labels: HashMap<String, String>,
) -> Result<String> {
    let digest = sha256_digest(&data);
    let size = data.len() as i64;
    let chunks = futures::stream::iter([Ok::<_, std::convert::Infallible>(data)]);
    write_blob(conn, lease, &digest, size, labels, chunks).await?;
    Ok(digest)
}

/// Adds (or replaces) labels on an existing blob.
pub(crate) async fn add_labels(
    conn: &Connection,
    digest: &str,
    labels: &HashMap<String, String>,
) -> Result<()> {
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let request = conn.request(UpdateRequest {
        info: Some(Info {
            digest: digest.to_owned(),
            labels: labels.clone(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask { paths }),
    });
    let mut client = conn.content();
    conn.call("Content.Update", client.update(request)).await?;
    Ok(())
}
