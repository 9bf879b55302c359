//! Unpacking an image's layers into snapshots: per layer `Snapshots.Prepare` →
//! `Diff.Apply` → `Snapshots.Commit(chainID)`, the same loop as containerd's Go unpacker, done
//! client-side because containerd 1.6 has no Transfer service.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::services::v1::ApplyRequest;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::types::Descriptor as CtrDescriptor;

use super::oci::{ConfigFile, Manifest, chain_ids};
use super::{Progress, ProgressFn};
use crate::client::{Connection, Lease, random_suffix};
use crate::content;
use crate::error::{Error, Result};

/// How long applying one layer may take (a large layer on an SD card is slow).
const APPLY_TIMEOUT: Duration = Duration::from_secs(600);

/// Does a committed snapshot with this chain id exist?
pub(crate) async fn snapshot_exists(
    conn: &Connection,
    snapshotter: &str,
    key: &str,
) -> Result<bool> {
    let mut client = conn.snapshots();
    let request = conn.request(StatSnapshotRequest {
        snapshotter: snapshotter.to_owned(),
        key: key.to_owned(),
    });
    match conn.call("Snapshots.Stat", client.stat(request)).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Unpacks every layer not yet unpacked and returns the top chain id. Afterwards the config
/// blob references the top snapshot, so the image record keeps the snapshots alive.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn unpack(
    conn: &Connection,
    lease: &Lease,
    snapshotter: &str,
    image: &str,
    manifest: &Manifest,
    config: &ConfigFile,
    config_digest: &str,
    max_unpacked: u64,
    progress: &ProgressFn<'_>,
) -> Result<String> {
    let chain = chain_ids(&config.rootfs.diff_ids);
    let total = manifest.layers.len();
    let mut parent = String::new();
    for (index, (layer, chain_id)) in manifest.layers.iter().zip(&chain).enumerate() {
        if !snapshot_exists(conn, snapshotter, chain_id).await? {
            apply_layer(
                conn,
                lease,
                snapshotter,
                image,
                layer,
                &config.rootfs.diff_ids[index],
                chain_id,
                &parent,
                max_unpacked,
            )
            .await?;
        }
        progress(Progress::Unpacked {
            layer: index + 1,
            of: total,
        });
        parent.clone_from(chain_id);
    }
    let top = chain.last().cloned().ok_or_else(|| Error::InvalidImage {
        image: image.to_owned(),
        reason: "the image has no layers".into(),
    })?;
    let labels: HashMap<String, String> = [(
        format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
        top.clone(),
    )]
    .into_iter()
    .collect();
    content::add_labels(conn, config_digest, &labels).await?;
    Ok(top)
}

#[allow(clippy::too_many_arguments)]
async fn apply_layer(
    conn: &Connection,
    lease: &Lease,
    snapshotter: &str,
    image: &str,
    layer: &super::oci::Descriptor,
    diff_id: &str,
    chain_id: &str,
    parent: &str,
    max_unpacked: u64,
) -> Result<()> {
    let key = format!("extract-{} {chain_id}", random_suffix());
    let mut snapshots = conn.snapshots();
    let labels = [("containerd.io/snapshot.ref".to_owned(), chain_id.to_owned())]
        .into_iter()
        .collect();
    let prepare = PrepareSnapshotRequest {
        snapshotter: snapshotter.to_owned(),
        key: key.clone(),
        parent: parent.to_owned(),
        labels,
    };
    let mounts = conn
        .call(
            "Snapshots.Prepare",
            snapshots.prepare(conn.leased_request(prepare, lease)),
        )
        .await?
        .mounts;

    let result = async {
        let apply = ApplyRequest {
            diff: Some(CtrDescriptor {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
                size: layer.size,
                annotations: HashMap::new(),
            }),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        };
        let mut diff = conn.diff();
        let applied = conn
            .call_within(
                "Diff.Apply",
                APPLY_TIMEOUT,
                diff.apply(conn.leased_request(apply, lease)),
            )
            .await
            .map_err(|e| match e {
                // A layer containerd cannot apply (corrupt content): say which one.
                Error::Containerd { .. } => Error::InvalidImage {
                    image: image.to_owned(),
                    reason: format!("layer {} cannot be unpacked: {}", layer.digest, e.chain()),
                },
                e => e,
            })?;
        let (applied_digest, applied_size) = applied
            .applied
            .map(|d| (d.digest, d.size))
            .unwrap_or_default();
        // Gzip and plain layers were measured on the way in; this catches the rest (zstd).
        if u64::try_from(applied_size).unwrap_or(0) > max_unpacked {
            return Err(Error::InvalidImage {
                image: image.to_owned(),
                reason: super::bound::too_large(&format!("layer {}", layer.digest), max_unpacked),
            });
        }
        if applied_digest != diff_id {
            return Err(Error::InvalidImage {
                image: image.to_owned(),
                reason: format!(
                    "layer {} unpacks to {applied_digest}, but the image config says {diff_id}",
                    layer.digest
                ),
            });
        }
        let commit = CommitSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            name: chain_id.to_owned(),
            key: key.clone(),
            labels: HashMap::new(),
        };
        match conn
            .call(
                "Snapshots.Commit",
                snapshots.commit(conn.leased_request(commit, lease)),
            )
            .await
        {
            // Someone else unpacked the same layer meanwhile: theirs is as good as ours.
            Err(e) if e.is_already_exists() => Err(e),
            other => other.map(|_| ()),
        }
    }
    .await;

    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            remove_quietly(conn, snapshotter, &key).await;
            if e.is_already_exists() {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// Removes a snapshot, ignoring "not found" and logging other failures (cleanup paths).
pub(crate) async fn remove_quietly(conn: &Connection, snapshotter: &str, key: &str) {
    let mut client = conn.snapshots();
    let request = conn.request(RemoveSnapshotRequest {
        snapshotter: snapshotter.to_owned(),
        key: key.to_owned(),
    });
    match conn.call("Snapshots.Remove", client.remove(request)).await {
        Ok(_) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => tracing::warn!(snapshot = key, error = %e.chain(), "could not remove snapshot"),
    }
}
