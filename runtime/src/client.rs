//! The gRPC connection to containerd.
//!
//! One lazily connected tonic channel over the Unix socket serves every call. tonic reconnects
//! by itself when containerd comes back after a restart; until then each call fails at once
//! with [`Error::Unavailable`]. Unary calls are bounded by a timeout so a stopped (frozen)
//! containerd cannot hang the daemon either; HTTP/2 keep-alive pings detect a dead peer on
//! long-lived streams (events, waits), no more often than containerd's gRPC server allows (see
//! [`KEEPALIVE_INTERVAL`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::error::{Error, Result};

/// The containerd releases bramble works with, for messages. 1.6 (Debian 12, Raspberry Pi OS
/// bookworm) and 1.7 (Debian 13, Raspberry Pi OS trixie) are tested; 2.x serves the same v1
/// API and is accepted, but not tested by bramble's CI. Older releases lack what bramble relies
/// on (the runc v2 shim's options, leases with expiry labels, `Tasks.Metrics` for cgroup v2).
pub const SUPPORTED_CONTAINERD: &str = "1.6, 1.7 or 2.x (tested: 1.6 and 1.7)";

/// Whether bramble works with a containerd release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Supported and covered by bramble's tests (1.6, 1.7).
    Tested,
    /// Supported, not covered by bramble's tests (2.x).
    Untested,
    /// Refused: too old, a future major release, or a version that does not parse.
    Unsupported,
}

/// A containerd release, `major.minor` of its version string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerdVersion {
    pub major: u32,
    pub minor: u32,
}

impl ContainerdVersion {
    /// `major.minor` of a version string as containerd reports it: `1.6.20~ds1` (Debian),
    /// `1.7.24~ds1`, `v2.1.0`, `1.7.0+unknown`.
    pub fn parse(version: &str) -> Option<ContainerdVersion> {
        let mut parts = version.trim().trim_start_matches('v').split('.');
        let number = |s: &str| -> Option<u32> {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        Some(ContainerdVersion {
            major: number(parts.next()?)?,
            minor: number(parts.next()?)?,
        })
    }

    /// Whether bramble works with this release.
    pub fn support(self) -> Support {
        match (self.major, self.minor) {
            (1, 6 | 7) => Support::Tested,
            (2, _) => Support::Untested,
            _ => Support::Unsupported,
        }
    }
}

/// How long the connection may be silent before a keep-alive ping. containerd's gRPC server
/// (grpc-go) enforces its default policy: pings less than 5 minutes apart, or any ping while no
/// call is open, count as strikes, and the third strike closes the connection with GOAWAY
/// "too_many_pings" — failing every call and stream on it. Seen against trixie's containerd
/// 1.7.24 when a 10 s interval met a pull slow enough to leave 30 s without an answer; a
/// dead containerd closes its Unix socket anyway, so pings only matter for a frozen one.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5 * 60 + 10);

/// Header that selects the containerd namespace of a call.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// Header that attaches a call's resources to a lease (protection from GC while importing).
const LEASE_HEADER: &str = "containerd-lease";

/// A connection to one containerd namespace.
#[derive(Clone, Debug)]
pub struct Connection {
    channel: Channel,
    socket: PathBuf,
    namespace: String,
    namespace_header: MetadataValue<tonic::metadata::Ascii>,
    call_timeout: Duration,
}

impl Connection {
    /// Prepares a connection to the containerd socket at `socket`, scoped to `namespace`.
    ///
    /// Nothing is dialled yet: the first call connects. This lets the daemon start (and report
    /// "containerd unavailable") while containerd is still starting.
    pub fn new(socket: &Path, namespace: &str, call_timeout: Duration) -> Result<Self> {
        validate_namespace(namespace)?;
        let namespace_header = MetadataValue::try_from(namespace).map_err(|_| {
            Error::Invalid(format!(
                "containerd namespace {namespace:?} is not valid ASCII"
            ))
        })?;
        // The URI is a placeholder: the connector below dials the Unix socket.
        let endpoint = Endpoint::from_static("http://[::]:50051")
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(Duration::from_secs(10))
            // Never while no call is open: grpc-go's default refuses those pings.
            .keep_alive_while_idle(false);
        let path = socket.to_path_buf();
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }));
        Ok(Self {
            channel,
            socket: socket.to_path_buf(),
            namespace: namespace.to_owned(),
            namespace_header,
            call_timeout,
        })
    }

    /// The containerd namespace of this connection.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The socket this connection dials.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A request carrying the namespace header.
    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(NAMESPACE_HEADER, self.namespace_header.clone());
        request
    }

    /// A request carrying the namespace header and a lease.
    pub(crate) fn leased_request<T>(&self, message: T, lease: &Lease) -> Request<T> {
        let mut request = self.request(message);
        request
            .metadata_mut()
            .insert(LEASE_HEADER, lease.header.clone());
        request
    }

    pub(crate) fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    pub(crate) fn content(&self) -> ContentClient<Channel> {
        // Layers can be large; the default 4 MiB decode limit only matters for reads, which
        // ask for bounded chunks anyway.
        ContentClient::new(self.channel.clone())
    }
    pub(crate) fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub(crate) fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }
    pub(crate) fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub(crate) fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    pub(crate) fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub(crate) fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    pub(crate) fn version_client(&self) -> VersionClient<Channel> {
        VersionClient::new(self.channel.clone())
    }

    /// Runs one unary call with the call timeout and maps its error.
    pub(crate) async fn call<T, F>(&self, name: &'static str, call: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        self.call_within(name, self.call_timeout, call).await
    }

    /// Like [`Connection::call`] with an explicit timeout, for calls that legitimately take long
    /// (applying a large layer, waiting for a task to exit).
    pub(crate) async fn call_within<T, F>(
        &self,
        name: &'static str,
        timeout: Duration,
        call: F,
    ) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.status_error(name, &status)),
            Err(_) => Err(Error::Unavailable {
                socket: self.socket.clone(),
                reason: format!("{name} got no answer within {timeout:?}"),
            }),
        }
    }

    /// Maps a gRPC status to the runtime's error.
    pub(crate) fn status_error(&self, call: &'static str, status: &Status) -> Error {
        if is_connection_failure(status) {
            Error::Unavailable {
                socket: self.socket.clone(),
                reason: connection_reason(status),
            }
        } else {
            Error::Containerd {
                call,
                code: status.code(),
                message: status.message().to_owned(),
            }
        }
    }

    /// containerd's version string (for example `1.6.20~ds1`), refused with
    /// [`Error::UnsupportedContainerd`] when bramble does not support that release (see
    /// [`SUPPORTED_CONTAINERD`]). Cheap; used as a health probe.
    pub async fn version(&self) -> Result<String> {
        let version = self.server_version().await?;
        match ContainerdVersion::parse(&version).map(ContainerdVersion::support) {
            Some(Support::Tested | Support::Untested) => Ok(version),
            Some(Support::Unsupported) | None => Err(Error::UnsupportedContainerd {
                socket: self.socket.clone(),
                version,
            }),
        }
    }

    /// containerd's version string as it reports it, supported or not (for `bramble doctor`).
    pub async fn server_version(&self) -> Result<String> {
        let mut client = self.version_client();
        let reply = self
            .call("Version", client.version(Request::new(())))
            .await?;
        Ok(reply.version)
    }

    /// Creates a lease that protects everything written under it from garbage collection
    /// until it is deleted or expires.
    pub(crate) async fn create_lease(&self, purpose: &str, expire: Duration) -> Result<Lease> {
        use containerd_client::services::v1::CreateRequest;
        let id = format!("bramble-{purpose}-{}", random_suffix());
        let expiry = std::time::SystemTime::now() + expire;
        let expiry = humantime::format_rfc3339_seconds(expiry).to_string();
        let labels = [("containerd.io/gc.expire".to_owned(), expiry)]
            .into_iter()
            .collect();
        let mut client = self.leases();
        self.call(
            "Leases.Create",
            client.create(self.request(CreateRequest {
                id: id.clone(),
                labels,
            })),
        )
        .await?;
        let header = MetadataValue::try_from(id.as_str())
            .map_err(|_| Error::Invalid(format!("lease id {id:?} is not ASCII")))?;
        Ok(Lease { id, header })
    }

    /// Deletes a lease; its resources become collectable unless something else references them.
    pub(crate) async fn delete_lease(&self, lease: Lease) -> Result<()> {
        use containerd_client::services::v1::DeleteRequest;
        let mut client = self.leases();
        let request = self.request(DeleteRequest {
            id: lease.id.clone(),
            sync: false,
        });
        match self.call("Leases.Delete", client.delete(request)).await {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// A containerd lease held while content is written.
#[derive(Debug)]
pub(crate) struct Lease {
    id: String,
    header: MetadataValue<tonic::metadata::Ascii>,
}

/// containerd namespaces follow its identifier rules: `[a-zA-Z0-9]` at both ends, `._-` inside.
fn validate_namespace(namespace: &str) -> Result<()> {
    crate::validate_id(namespace)
        .map_err(|reason| Error::Invalid(format!("containerd namespace {reason}")))
}

/// True when the status means the daemon could not be reached, not that it refused the call.
fn is_connection_failure(status: &Status) -> bool {
    match status.code() {
        // bramble never cancels a call itself (timeouts drop the future), so Cancelled means
        // the connection died under the call.
        Code::Unavailable | Code::Cancelled => true,
        // A call cut off by a dying connection surfaces as Unknown with a transport error.
        Code::Unknown => {
            let message = status.message().to_ascii_lowercase();
            [
                "transport error",
                "connection",
                "broken pipe",
                "h2 protocol error",
                "service was not ready",
            ]
            .iter()
            .any(|needle| message.contains(needle))
        }
        _ => false,
    }
}

fn connection_reason(status: &Status) -> String {
    // tonic nests the io error (for example "No such file or directory") as the source.
    let mut reason = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !reason.contains(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        source = cause.source();
    }
    if reason.is_empty() {
        "connection failed".to_owned()
    } else {
        reason
    }
}

/// A short random hex string for unique, collision-free resource names.
pub(crate) fn random_suffix() -> String {
    let value: u64 = rand::random();
    format!("{value:016x}")
}

/// Bare containerd calls over bramble's own connection, for the cold-start benchmark's
/// baseline (what any client must do to start a container, and nothing else). Not an API:
/// only built with the `bench` feature, which the benchmark enables.
#[cfg(feature = "bench")]
pub mod bare {
    pub use super::Connection;
    use super::{Channel, ContainersClient, Request, SnapshotsClient, TasksClient};

    /// A request carrying the connection's namespace header.
    pub fn request<T>(conn: &Connection, message: T) -> Request<T> {
        conn.request(message)
    }

    pub fn containers(conn: &Connection) -> ContainersClient<Channel> {
        conn.containers()
    }

    pub fn snapshots(conn: &Connection) -> SnapshotsClient<Channel> {
        conn.snapshots()
    }

    pub fn tasks(conn: &Connection) -> TasksClient<Channel> {
        conn.tasks()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn connection_failures_are_recognised() {
        assert!(is_connection_failure(&Status::unavailable("dial")));
        assert!(is_connection_failure(&Status::unknown("transport error")));
        assert!(is_connection_failure(&Status::cancelled(
            "operation was canceled"
        )));
        assert!(!is_connection_failure(&Status::not_found("container x")));
        assert!(!is_connection_failure(&Status::unknown("something else")));
    }

    #[tokio::test]
    async fn a_missing_socket_fails_fast_with_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("none.sock");
        let conn = Connection::new(&socket, "bramble-test", Duration::from_secs(5)).unwrap();
        let started = std::time::Instant::now();
        let err = conn.version().await.unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        assert!(err.to_string().contains("containerd unavailable"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn containerd_releases_are_classified() {
        let support = |v: &str| ContainerdVersion::parse(v).map(ContainerdVersion::support);
        assert_eq!(support("1.6.20~ds1"), Some(Support::Tested));
        assert_eq!(support("1.7.24~ds1"), Some(Support::Tested));
        assert_eq!(support("v1.7.0-beta.1"), Some(Support::Tested));
        assert_eq!(support("v2.1.0"), Some(Support::Untested));
        assert_eq!(support("1.5.9"), Some(Support::Unsupported));
        assert_eq!(support("3.0.0"), Some(Support::Unsupported));
        assert_eq!(support("0.2"), Some(Support::Unsupported));
        assert_eq!(support("2"), None);
        assert_eq!(support("garbage"), None);
        assert_eq!(
            ContainerdVersion::parse("1.7.0+unknown"),
            Some(ContainerdVersion { major: 1, minor: 7 })
        );
        let e = Error::UnsupportedContainerd {
            socket: "/run/containerd/containerd.sock".into(),
            version: "1.5.9".into(),
        };
        assert_eq!(
            e.to_string(),
            "containerd 1.5.9 at /run/containerd/containerd.sock is not supported: bramble works with containerd 1.6, 1.7 or 2.x (tested: 1.6 and 1.7)"
        );
    }

    #[test]
    fn namespaces_are_validated() {
        assert!(Connection::new(Path::new("/x"), "bad ns", Duration::from_secs(1)).is_err());
        assert!(Connection::new(Path::new("/x"), "", Duration::from_secs(1)).is_err());
    }
}
