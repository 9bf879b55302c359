//! The runtime's error type.
//!
//! Messages follow the source-chain convention: a variant's message says what failed at this
//! level and does not repeat its `#[source]`. Print the whole chain (anyhow's `{:#}`, or
//! [`Error::chain`]) to show a user everything.

use std::path::PathBuf;

use crate::image::platform::Platform;

/// Result alias of the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// containerd does not answer: its socket is missing or refuses connections, or a call
    /// timed out. Calls fail with this at once instead of hanging; the connection comes back by
    /// itself when containerd does.
    #[error("containerd unavailable at {}: {reason}", socket.display())]
    Unavailable { socket: PathBuf, reason: String },

    /// containerd answers, but it is a release bramble does not work with (see
    /// [`crate::client::SUPPORTED_CONTAINERD`]).
    #[error(
        "containerd {version} at {} is not supported: bramble works with containerd {}",
        socket.display(),
        crate::client::SUPPORTED_CONTAINERD
    )]
    UnsupportedContainerd { socket: PathBuf, version: String },

    /// containerd answered a call with an error.
    #[error("containerd {call}: {message} ({code:?})")]
    Containerd {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },

    /// A container, task, image or snapshot that does not exist.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },

    /// A container whose runtime files (on tmpfs) are gone, typically after a reboot: it
    /// cannot start and must be deleted and created again.
    #[error(
        "container {id} was created before its runtime files were lost (a reboot?); delete and create it again"
    )]
    Stale { id: String },

    /// Something that should be new already exists.
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: &'static str, id: String },

    /// A caller passed something invalid (an id, a limit, a path).
    #[error("{0}")]
    Invalid(String),

    /// The image was built for platforms this machine cannot run.
    #[error(
        "image {image} is built for {}, but this machine is {host} (running it would fail with `exec format error`)",
        list_platforms(available)
    )]
    PlatformMismatch {
        image: String,
        available: Vec<Platform>,
        host: Platform,
    },

    /// The image is not in containerd and the pull policy forbids fetching it.
    #[error("image {image} is not present and the pull policy is Never")]
    ImageNotPresent { image: String },

    /// Talking to a registry failed.
    #[error("pulling {image} from {registry}")]
    Registry {
        image: String,
        registry: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Fetching an image from a source other than its registry (another board) failed.
    #[error("fetching {image} from {from}")]
    Source {
        image: String,
        from: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An image archive (OCI layout or `docker save` tarball) is unusable.
    #[error("image archive {}: {reason}", path.display())]
    Archive { path: PathBuf, reason: String },

    /// Image content (manifest, index, config) is not what the OCI spec says it should be.
    #[error("image {image}: {reason}")]
    InvalidImage { image: String, reason: String },

    /// An image reference does not parse.
    #[error(transparent)]
    Reference(#[from] crate::image::reference::ReferenceError),

    /// A platform string does not parse.
    #[error(transparent)]
    Platform(#[from] crate::image::platform::PlatformError),

    /// Building an image failed.
    #[error(transparent)]
    Build(#[from] crate::image::build::BuildError),

    /// Attaching or detaching a function's network failed.
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),

    /// A local file operation failed.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True when containerd could not be reached at all.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// True for "does not exist", whether containerd or bramble said it.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::NotFound { .. }
                | Error::Containerd {
                    code: tonic::Code::NotFound,
                    ..
                }
        )
    }

    /// True for "already exists", whether containerd or bramble said it.
    pub fn is_already_exists(&self) -> bool {
        matches!(
            self,
            Error::AlreadyExists { .. }
                | Error::Containerd {
                    code: tonic::Code::AlreadyExists,
                    ..
                }
        )
    }

    /// This error and all its sources, joined with `: `.
    pub fn chain(&self) -> String {
        bramble_base::error_chain(self)
    }
}

fn list_platforms(platforms: &[Platform]) -> String {
    match platforms {
        [] => "no platform at all".to_owned(),
        [one] => one.to_string(),
        many => many
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_mismatch_names_both_sides() {
        let e = Error::PlatformMismatch {
            image: "docker.io/library/x:1".into(),
            available: vec![Platform::parse("linux/amd64").unwrap()],
            host: Platform::parse("linux/arm64").unwrap(),
        };
        let text = e.to_string();
        assert!(text.contains("linux/amd64"), "{text}");
        assert!(text.contains("linux/arm64"), "{text}");
        assert!(text.contains("exec format error"), "{text}");
    }

    #[test]
    fn chain_joins_sources() {
        let e = Error::io(
            "reading /x",
            std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        );
        assert_eq!(e.chain(), "reading /x: gone");
    }
}
