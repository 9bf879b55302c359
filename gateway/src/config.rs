//! The gateway's configuration.

use std::path::PathBuf;
use std::time::Duration;

use crate::types::VersionInfo;

/// The HTTP Basic credentials that guard `/system/*`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never reaches a log line.
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How the async queue retries a call whose function is not available, and its callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait before the second attempt; doubled after each failed attempt.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// Attempts at most (the first one included).
    pub max_attempts: u32,
    /// No new attempt starts later than this after the call was accepted.
    pub max_age: Duration,
    /// Attempts at most to deliver a callback.
    pub callback_attempts: u32,
    /// How long one callback delivery may take.
    pub callback_timeout: Duration,
    /// For how long after its acceptance a call whose function this board does not know is
    /// retried rather than answered 404: the board that accepted it knew the function, and in
    /// a cluster the board running it may learn of a fresh deploy a moment later.
    pub unknown_function_grace: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_attempts: 10,
            max_age: Duration::from_secs(3600),
            callback_attempts: 3,
            callback_timeout: Duration::from_secs(30),
            unknown_function_grace: Duration::from_secs(10),
        }
    }
}

/// Everything the gateway needs to know; [`Default`] gives bramble's defaults with empty
/// credentials, which [`crate::Gateway::new`] refuses: the agent fills them in.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub credentials: Credentials,
    /// The namespace of requests that name none (`openfaas-fn`).
    pub default_namespace: String,
    /// Largest JSON body of a `/system/*` request (1 MiB); larger ones get 413.
    pub max_api_body: usize,
    /// Largest body `/async-function` accepts (8 MiB); it is stored on disk. Larger ones get 413.
    /// Also the largest function response an async callback carries.
    pub max_async_body: usize,
    /// How long a request waits for a cold or starting function (60 s).
    pub ready_wait: Duration,
    /// The durable async queue's directory (on the state directory).
    pub queue_dir: PathBuf,
    /// Where uploaded image archives are spooled while they are imported.
    pub upload_dir: PathBuf,
    /// Largest image archive `POST /system/images` accepts (4 GiB); larger ones get 413.
    pub max_upload: u64,
    /// Async calls executed at once (4).
    pub async_workers: usize,
    /// Retries of async calls and their callbacks.
    pub async_retry: RetryPolicy,
    /// How long [`crate::Gateway::serve`] lets in-flight requests finish after shutdown (30 s).
    pub drain_timeout: Duration,
    /// The gateway's own version, for `/system/info`.
    pub version: VersionInfo,
    /// PEM certificates trusted for `https://` callback URLs besides the system's CA
    /// certificates (which `SSL_CERT_FILE` or `SSL_CERT_DIR` replace, as with OpenSSL), for
    /// receivers with a private CA. `None` (the default): the system's only.
    pub callback_ca_file: Option<PathBuf>,
    /// How long a client may take to send a request head (from the connection's start, or
    /// the end of its previous response): a slow or idle client is disconnected after it, so
    /// it cannot hold a connection forever (30 s).
    pub header_read_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            credentials: Credentials::default(),
            default_namespace: "openfaas-fn".to_owned(),
            max_api_body: 1 << 20,
            max_async_body: 8 << 20,
            ready_wait: Duration::from_secs(60),
            queue_dir: PathBuf::from("/var/lib/bramble/queue"),
            upload_dir: PathBuf::from("/var/lib/bramble/uploads"),
            max_upload: 4 << 30,
            async_workers: 4,
            async_retry: RetryPolicy::default(),
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            callback_ca_file: None,
            version: VersionInfo {
                commit_message: String::new(),
                sha: String::new(),
                release: env!("CARGO_PKG_VERSION").to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_password() {
        let c = Credentials {
            user: "admin".into(),
            password: "hunter2".into(),
        };
        let shown = format!(
            "{c:?} {:?}",
            GatewayConfig {
                credentials: c.clone(),
                ..Default::default()
            }
        );
        assert!(
            shown.contains("admin") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
