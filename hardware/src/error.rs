//! The hardware helper's errors.

use crate::backend::BackendError;
use crate::grants::GrantError;

/// A hardware helper error.
#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    /// A bad annotation.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// The grants collide with another function's.
    #[error("{0}")]
    Conflict(String),
    /// No such line on this node.
    #[error("{0}")]
    UnknownLine(String),
    /// A line is in use (by this node in another way, or by another program).
    #[error("{0}")]
    Busy(String),
    /// Only the simulator can do this.
    #[error("{0}")]
    NotSimulator(String),
    /// The line cannot be watched (not requested as an input).
    #[error("{0}")]
    NotWatchable(String),
    /// A function name that cannot name a socket directory.
    #[error("{0}")]
    InvalidFunction(String),
    /// A bad value.
    #[error("{0}")]
    Invalid(String),
    /// `backend = "cdev"` but no chip with a known label.
    #[error("{0}")]
    NoChip(String),
    /// A file system error (the socket directory).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A backend error.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl HardwareError {
    /// The HTTP status for a deploy refused with this error: 400 for bad grants or a line
    /// the node does not have, 409 for conflicts and busy lines, 500 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            HardwareError::Grant(_)
            | HardwareError::UnknownLine(_)
            | HardwareError::InvalidFunction(_)
            | HardwareError::Invalid(_)
            | HardwareError::Backend(BackendError::UnknownLine(_) | BackendError::Invalid(_)) => {
                400
            }
            HardwareError::Conflict(_)
            | HardwareError::Busy(_)
            | HardwareError::NotSimulator(_)
            | HardwareError::NotWatchable(_)
            | HardwareError::Backend(BackendError::Busy(_) | BackendError::Unsupported(_)) => 409,
            _ => 500,
        }
    }
}
