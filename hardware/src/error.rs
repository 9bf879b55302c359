//! The hardware helper's errors, and their kinds.
//!
//! Messages say what went wrong once: an error that has a cause keeps it as its `source`
//! (print the whole chain with `bramble_base::error_chain`). Whoever answers an error maps its
//! [`ErrorKind`] to its own terms: the broker and the admin routes to an HTTP status, the
//! node's provider to a deploy's answer.

use crate::backend::BackendError;
use crate::grants::GrantError;

/// What kind of failure an error of the hardware helper is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong: a bad grant, name, level or body (HTTP 400).
    Invalid,
    /// What it names is not on this node: a line, bus, device, PWM channel or sensor (404;
    /// a deploy that asks for it is a bad request, 400).
    NotFound,
    /// It collides with what is in use: another function's grant, a busy line or device, an
    /// output where an input is needed, real pins where only the simulator can (409).
    Conflict,
    /// The device or the kernel failed: no acknowledge, a CRC error, an I/O error (502; 500
    /// for a deploy).
    Device,
    /// Anything else: the node's own files, no GPIO chip where one is required (500).
    Internal,
}

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
    #[error("{context}")]
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
    /// What kind of failure this is (for a deploy: an unknown line is a bad request).
    pub fn kind(&self) -> ErrorKind {
        match self {
            HardwareError::Grant(_)
            | HardwareError::InvalidFunction(_)
            | HardwareError::Invalid(_) => ErrorKind::Invalid,
            HardwareError::UnknownLine(_) => ErrorKind::NotFound,
            HardwareError::Conflict(_)
            | HardwareError::Busy(_)
            | HardwareError::NotSimulator(_)
            | HardwareError::NotWatchable(_) => ErrorKind::Conflict,
            HardwareError::NoChip(_) | HardwareError::Io { .. } => ErrorKind::Internal,
            HardwareError::Backend(e) => e.kind(),
        }
    }
}
