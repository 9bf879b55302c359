//! The errors of KV operations, and how async-nats errors map to them.

use std::time::Duration;

use super::DEFAULT_TIMEOUT;
use crate::jserr::{self, Cause};

/// A KV error.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// A compare-and-set lost: the key exists (`expected: None`, a create) or its revision is
    /// no longer `expected`.
    #[error("{bucket}/{key}: another write came first ({})", match expected { None => "the key already exists".to_owned(), Some(r) => format!("revision {r} is no longer the latest") })]
    Conflict {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The revision the write expected (`None` for a create).
        expected: Option<u64>,
    },
    /// No JetStream server answered for the bucket: the cluster has no quorum (or the bucket's
    /// stream has no leader). Nothing was written.
    #[error(
        "bucket {bucket}: the cluster has no quorum (no JetStream leader answered); nothing was written"
    )]
    NoQuorum {
        /// The bucket.
        bucket: String,
    },
    /// No answer in time; a write may or may not have been stored.
    #[error(
        "bucket {bucket}: no answer within {waited:?} (the cluster may have lost quorum; a write may or may not have been stored)"
    )]
    Timeout {
        /// The bucket.
        bucket: String,
        /// How long it waited.
        waited: Duration,
    },
    /// A watch's first snapshot held fewer keys than the stream counts (a consumer started
    /// right after a replica change; see [`super::Bucket::keys`]): start the watch again.
    #[error("bucket {bucket}: the watch's snapshot held {seen} keys, the stream has {expected}")]
    Incomplete {
        /// The bucket.
        bucket: String,
        /// Keys delivered.
        seen: u64,
        /// Keys the stream counted.
        expected: u64,
    },
    /// The bucket does not exist.
    #[error("bucket {bucket} does not exist")]
    NoBucket {
        /// The bucket.
        bucket: String,
    },
    /// A key or bucket name KV does not allow.
    #[error(
        "{what} {name:?} is not valid: KV names are 1-255 characters of A-Z a-z 0-9 - _ = / and inner dots"
    )]
    InvalidName {
        /// "key" or "bucket".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// Any other failure of the NATS request.
    #[error("bucket {bucket}: {op} failed")]
    Nats {
        /// The bucket.
        bucket: String,
        /// The operation.
        op: &'static str,
        /// Why.
        #[source]
        source: async_nats::Error,
    },
}

impl KvError {
    /// True when the failure means the cluster cannot currently commit writes (no quorum, or no
    /// answer): what a caller turns into "503: the cluster has no quorum".
    pub fn is_unavailable(&self) -> bool {
        matches!(self, KvError::NoQuorum { .. } | KvError::Timeout { .. })
    }

    /// True for a lost compare-and-set.
    pub fn is_conflict(&self) -> bool {
        matches!(self, KvError::Conflict { .. })
    }
}

/// Maps a failed request: no quorum, timeout, or the error itself.
pub(super) fn classify<E>(bucket: &str, op: &'static str, e: E) -> KvError
where
    E: std::error::Error + Send + Sync + 'static,
{
    match jserr::cause(&e) {
        Cause::TimedOut => KvError::Timeout {
            bucket: bucket.to_owned(),
            waited: DEFAULT_TIMEOUT,
        },
        cause if jserr::is_unavailable(cause) => KvError::NoQuorum {
            bucket: bucket.to_owned(),
        },
        _ => nats(bucket, op, e),
    }
}

pub(super) fn nats<E>(bucket: &str, op: &'static str, e: E) -> KvError
where
    E: std::error::Error + Send + Sync + 'static,
{
    KvError::Nats {
        bucket: bucket.to_owned(),
        op,
        source: Box::new(e),
    }
}
