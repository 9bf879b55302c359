//! The typed configuration of the nats-server a board runs, and the configuration file made
//! from it.
//!
//! What the file says, and why:
//! - `server_name` = the board's name (JetStream's peers are named by it).
//! - The client listener is on `127.0.0.1` only: the only client is this board's bramble.
//! - The monitoring listener is on `127.0.0.1` too (`/healthz`, `/jsz`, `/varz`).
//! - Two accounts: `BRAMBLE` (JetStream enabled, this board's client user) and `SYS` (the system
//!   account: peer removal `$JS.API.SERVER.REMOVE` is a system-account API). Client users are
//!   per board and never leave it: a server only knows its own board's users.
//! - `ping_interval: 2s`, `ping_max: 3`: a route into a partition is closed as stale after
//!   about 6 s (the default is 2 minutes × 2). Until then, what this board publishes is
//!   buffered in the dead TCP connection and delivered when the partition heals: a write that
//!   timed out during the first seconds of a partition can still be applied afterwards.
//! - A `cluster` block when the board is part of a cluster: the route listener on the board's
//!   LAN address, routes to the other boards (with the cluster's route user in the URL), route
//!   authorization, and mutual TLS under the cluster CA (`verify: true`: a route must present a
//!   certificate the CA signed). `no_advertise` keeps the other boards' (loopback) client URLs
//!   away from clients. `connect_retries`: a route to a board this server learned of from
//!   another (not in its `routes`) is retried once a second for a minute
//!   ([`DISCOVERED_ROUTE_RETRIES`]).
//! - `jetstream` when the board carries JetStream: store under `<state_dir>/cluster/jetstream`
//!   (nats-server appends `jetstream` to `store_dir`), a small `max_memory_store`, and
//!   `sync_interval` where the server knows it (2.10+; 2.9 refuses the key).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::version::ServerVersion;
use crate::names;

/// The environment variable naming the nats-server binary (tests use it to run against
/// another version); the default is `nats-server` on `PATH`.
pub const BINARY_ENV: &str = "BRAMBLE_NATS_SERVER";

/// The account bramble's data lives in (every server of a cluster defines it).
pub const ACCOUNT: &str = "BRAMBLE";
/// The system account (peer removal and server-wide requests).
pub const SYSTEM_ACCOUNT: &str = "SYS";

/// Default loopback port of the board's own NATS client listener (not NATS's 4222, so a
/// nats-server the user runs for something else does not collide).
pub const DEFAULT_CLIENT_PORT: u16 = 7422;
/// Default loopback port of the monitoring listener.
pub const DEFAULT_MONITOR_PORT: u16 = 7423;
/// Default route port on the board's LAN address.
pub const DEFAULT_ROUTE_PORT: u16 = 7424;
/// Ping interval of the server's connections (routes included).
pub const ROUTE_PING_INTERVAL: Duration = Duration::from_secs(2);
/// Unanswered pings before a connection is closed as stale.
pub const ROUTE_PING_MAX: u32 = 3;
/// How many times (once a second) a server retries a route to a board it learned of from
/// another server. nats-server's default, 0, gives up after one failed attempt, and NATS
/// forwards a message one hop only: two boards without a route between them never hear each
/// other's heartbeats. Boards without JetStream have routes only to the JetStream boards and
/// learn of each other, and only one of a pair tries: one failed attempt (the other board
/// restarting, a TLS handshake slower than its timeout while many boards start at once) left
/// them apart for good (test `partition_members_that_missed_each_other_connect_later`).
pub const DISCOVERED_ROUTE_RETRIES: u32 = 60;
/// Default `GOMEMLIMIT` for the server: 48 MiB (the Go runtime collects harder near it).
pub const DEFAULT_GOMEMLIMIT: u64 = 48 * 1024 * 1024;
/// Default `GOGC` for the server: 50 (Go's default is 100). A board's idle server holds
/// 0.8–1.6 MiB less of its own memory (measured on three JetStream boards: 5.7–7.5 MiB
/// against 6.5–9.1); 25 saved nothing more.
pub const DEFAULT_GOGC: u32 = 50;
/// Default JetStream memory store limit: bramble keeps everything on file storage.
pub const DEFAULT_MAX_MEMORY_STORE: u64 = 8 * 1024 * 1024;

/// A user and its password (generated, alphanumeric). `Debug` hides the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Everything the nats-server of one board is started with.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The nats-server executable (a bare name is looked up on `PATH`).
    pub binary: PathBuf,
    /// The board's name: the server's `server_name`.
    pub board: String,
    /// bramble's state directory; the engine keeps its files under `<state_dir>/cluster/`.
    pub state_dir: PathBuf,
    /// Loopback port of the client listener.
    pub client_port: u16,
    /// Loopback port of the monitoring listener.
    pub monitor_port: u16,
    /// This board's client user (account `BRAMBLE`).
    pub client: Credentials,
    /// This board's system-account user (account `SYS`).
    pub system: Credentials,
    /// The cluster block: `None` for a standalone server.
    pub cluster: Option<RouteConfig>,
    /// Leaf-node connections (`None`: none; bramble's shelves are one full mesh).
    pub leaf: Option<LeafConfig>,
    /// JetStream on this board: `None` when the board does not carry JetStream.
    pub jetstream: Option<JetStreamConfig>,
    /// `GOMEMLIMIT` in bytes.
    pub gomemlimit: u64,
    /// `GOGC`: how much the server's heap grows, in percent, before it collects.
    pub gogc: u32,
    /// How long to wait for the server to become ready after a start.
    pub ready_timeout: Duration,
    /// Restart backoff after the server dies: first delay, doubled up to `max`.
    pub restart: Backoff,
}

/// The routes of a clustered server.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// The cluster's name (also the NATS cluster name).
    pub name: String,
    /// The route listener: the board's LAN address and the route port.
    pub listen: SocketAddr,
    /// Route listeners to connect to. For a JetStream board: every JetStream board of the
    /// cluster, this one included — nats-server skips the route to itself but counts it, and
    /// a server without JetStream state expects max(2, routes) meta peers at bootstrap, so the
    /// list must be exactly the JetStream boards (routes to absent or non-JetStream boards
    /// keep the meta group from electing a leader; a shorter list lets two boards form a
    /// group of 2 that a third joins later, which on 2.10.27 sometimes never happened within
    /// a minute). For a board without JetStream: the JetStream boards.
    pub routes: Vec<SocketAddr>,
    /// The cluster-wide route user.
    pub credentials: Credentials,
    /// Mutual TLS for routes under the cluster CA.
    pub tls: RouteTls,
}

/// Leaf-node connections, the shape NATS offers beyond one LAN's full mesh: members connect
/// to a hub (the JetStream boards) over one link each instead of routing to every board, and
/// messages cross a link only where someone listens. Not configured by bramble yet; the
/// fleet benchmark measures it beside the full mesh.
#[derive(Clone, Debug)]
pub enum LeafConfig {
    /// Accepts leaf connections on `listen` (the board's LAN address), bound to the `BRAMBLE`
    /// account.
    Hub {
        /// The leaf listener.
        listen: SocketAddr,
        /// The user leaves connect as.
        credentials: Credentials,
        /// Mutual TLS under the cluster CA.
        tls: RouteTls,
    },
    /// Connects to one of `hubs` (the `BRAMBLE` account across the link).
    Member {
        /// Leaf listeners of the hub's boards.
        hubs: Vec<SocketAddr>,
        /// The user to connect as.
        credentials: Credentials,
        /// Mutual TLS under the cluster CA.
        tls: RouteTls,
    },
}

impl LeafConfig {
    fn credentials(&self) -> &Credentials {
        match self {
            LeafConfig::Hub { credentials, .. } | LeafConfig::Member { credentials, .. } => {
                credentials
            }
        }
    }

    fn tls(&self) -> &RouteTls {
        match self {
            LeafConfig::Hub { tls, .. } | LeafConfig::Member { tls, .. } => tls,
        }
    }
}

/// PEM files of route TLS.
#[derive(Clone, Debug)]
pub struct RouteTls {
    /// The cluster CA certificate.
    pub ca_file: PathBuf,
    /// This board's certificate (signed by the cluster CA, the board's addresses as SANs).
    pub cert_file: PathBuf,
    /// This board's private key.
    pub key_file: PathBuf,
}

/// JetStream on a board.
#[derive(Clone, Debug)]
pub struct JetStreamConfig {
    /// `max_memory_store` in bytes.
    pub max_memory_store: u64,
    /// `max_file_store` in bytes (`None`: the server's default, a share of the free disk).
    pub max_file_store: Option<u64>,
    /// How often JetStream fsyncs.
    pub sync: SyncPolicy,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            max_memory_store: DEFAULT_MAX_MEMORY_STORE,
            max_file_store: None,
            sync: SyncPolicy::Always,
        }
    }
}

/// When JetStream writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// The server's default: every 2 minutes (the only choice on 2.9).
    ServerDefault,
    /// fsync every write before it is acknowledged (`sync_interval: always`, 2.10+).
    Always,
    /// fsync on a timer (`sync_interval: <d>`, 2.10+).
    Every(Duration),
}

/// A doubling delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(10),
        }
    }
}

impl EngineConfig {
    /// A standalone, JetStream-carrying configuration with the defaults; callers fill in the
    /// cluster block and credentials.
    pub fn new(board: &str, state_dir: &Path, client: Credentials, system: Credentials) -> Self {
        EngineConfig {
            binary: std::env::var_os(BINARY_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("nats-server")),
            board: board.to_owned(),
            state_dir: state_dir.to_path_buf(),
            client_port: DEFAULT_CLIENT_PORT,
            monitor_port: DEFAULT_MONITOR_PORT,
            client,
            system,
            cluster: None,
            leaf: None,
            jetstream: Some(JetStreamConfig::default()),
            gomemlimit: DEFAULT_GOMEMLIMIT,
            gogc: DEFAULT_GOGC,
            ready_timeout: Duration::from_secs(20),
            restart: Backoff::default(),
        }
    }

    /// `<state_dir>/cluster`: the engine's directory (and JetStream's `store_dir`).
    pub fn cluster_dir(&self) -> PathBuf {
        self.state_dir.join("cluster")
    }

    /// The generated configuration file.
    pub fn config_file(&self) -> PathBuf {
        self.cluster_dir().join("nats-server.conf")
    }

    /// JetStream's data: `<state_dir>/cluster/jetstream`.
    pub fn jetstream_dir(&self) -> PathBuf {
        self.cluster_dir().join("jetstream")
    }

    /// The pid file the server writes (to find a server a crashed bramble left behind).
    pub fn pid_file(&self) -> PathBuf {
        self.cluster_dir().join("nats-server.pid")
    }

    /// `nats://127.0.0.1:<client_port>`.
    pub fn client_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:<monitor_port>`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// Whether JetStream fsyncs a write before acknowledging it with this configuration on
    /// `version`. When false (2.9, or a policy other than `Always`), whoever accepts work must
    /// keep its own fsynced copy until the work is done.
    pub fn fsync_before_ack(&self, version: ServerVersion) -> bool {
        self.jetstream
            .as_ref()
            .is_some_and(|js| js.sync == SyncPolicy::Always && version.capabilities().sync_interval)
    }

    /// The configuration file's text for a server of `version`.
    ///
    /// Checks names, paths and credentials first: nothing that could break out of a string of
    /// the file is written.
    pub fn render(&self, version: ServerVersion) -> Result<String, ConfigError> {
        self.check()?;
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line("# Generated by bramble: edits are overwritten.".into());
        line(format!("server_name: {}", quote(&self.board)));
        line(format!("listen: \"127.0.0.1:{}\"", self.client_port));
        line(format!("http: \"127.0.0.1:{}\"", self.monitor_port));
        line(format!("pid_file: {}", quote_path(&self.pid_file())));
        line("logtime: false".into());
        // Routes use these too (2.9 has no cluster-level ping settings): a route into a
        // partition is found stale and closed in ~6 s instead of ~4 minutes, so what the board
        // published into it meanwhile is dropped rather than delivered after the heal.
        line(format!(
            "ping_interval: \"{}s\"",
            ROUTE_PING_INTERVAL.as_secs()
        ));
        line(format!("ping_max: {ROUTE_PING_MAX}"));
        line(String::new());
        line("accounts {".into());
        line(format!(
            "  {SYSTEM_ACCOUNT}: {{ users: [ {} ] }}",
            user_entry(&self.system)
        ));
        line(format!(
            "  {ACCOUNT}: {{ jetstream: enabled, users: [ {} ] }}",
            user_entry(&self.client)
        ));
        line("}".into());
        line(format!("system_account: {SYSTEM_ACCOUNT}"));
        if let Some(js) = &self.jetstream {
            line(String::new());
            line("jetstream {".into());
            line(format!("  store_dir: {}", quote_path(&self.cluster_dir())));
            line(format!("  max_memory_store: {}", js.max_memory_store));
            if let Some(max) = js.max_file_store {
                line(format!("  max_file_store: {max}"));
            }
            if version.capabilities().sync_interval {
                match js.sync {
                    SyncPolicy::ServerDefault => {}
                    SyncPolicy::Always => line("  sync_interval: always".into()),
                    SyncPolicy::Every(d) => {
                        line(format!("  sync_interval: \"{}ms\"", d.as_millis().max(1)));
                    }
                }
            }
            line("}".into());
        }
        if let Some(cluster) = &self.cluster {
            line(String::new());
            line("cluster {".into());
            line(format!("  name: {}", quote(&cluster.name)));
            line(format!("  listen: \"{}\"", cluster.listen));
            line("  no_advertise: true".into());
            line(format!("  connect_retries: {DISCOVERED_ROUTE_RETRIES}"));
            line(format!(
                "  authorization {{ user: {}, password: {}, timeout: 2 }}",
                quote(&cluster.credentials.user),
                quote(&cluster.credentials.password)
            ));
            line(tls_block(&cluster.tls, "  ", true));
            let mut routes = String::from("  routes: [");
            for (i, route) in cluster.routes.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(
                    routes,
                    "{sep}\n    \"nats-route://{}:{}@{}\"",
                    cluster.credentials.user, cluster.credentials.password, route
                );
            }
            routes.push_str("\n  ]");
            line(routes);
            line("}".into());
        }
        if let Some(leaf) = &self.leaf {
            // Without a JetStream domain, nats-server denies JetStream's API and KV subjects
            // on a leaf link unless the account's default domain is the empty one, on both
            // ends: a member then uses the hub's JetStream as a member of the mesh does.
            line(String::new());
            line(format!("default_js_domain: {{ {ACCOUNT}: \"\" }}"));
            line(String::new());
            line("leafnodes {".into());
            match leaf {
                LeafConfig::Hub {
                    listen,
                    credentials,
                    tls,
                } => {
                    line(format!("  listen: \"{listen}\""));
                    line("  no_advertise: true".into());
                    line(format!(
                        "  authorization {{ user: {}, password: {}, account: {ACCOUNT}, timeout: 2 }}",
                        quote(&credentials.user),
                        quote(&credentials.password)
                    ));
                    line(tls_block(tls, "  ", true));
                }
                LeafConfig::Member {
                    hubs,
                    credentials,
                    tls,
                } => {
                    let urls: Vec<String> = hubs
                        .iter()
                        .map(|hub| {
                            format!(
                                "\"nats-leaf://{}:{}@{hub}\"",
                                credentials.user, credentials.password
                            )
                        })
                        .collect();
                    line("  remotes: [".into());
                    line(format!("    {{ urls: [ {} ]", urls.join(", ")));
                    line(format!("      account: {ACCOUNT}"));
                    line(tls_block(tls, "      ", false));
                    line("    }".into());
                    line("  ]".into());
                }
            }
            line("}".into());
        }
        Ok(out)
    }

    /// Everything `render` relies on.
    fn check(&self) -> Result<(), ConfigError> {
        names::validate("board", &self.board)?;
        for creds in [&self.client, &self.system] {
            check_credentials(creds)?;
        }
        if self.client.user == self.system.user {
            return Err(ConfigError::Invalid(
                "the client user and the system user must differ".into(),
            ));
        }
        check_path(&self.state_dir)?;
        if self.client_port == 0 || self.monitor_port == 0 {
            return Err(ConfigError::Invalid(
                "client and monitoring ports must be set (not 0)".into(),
            ));
        }
        if self.client_port == self.monitor_port {
            return Err(ConfigError::Invalid(format!(
                "client and monitoring ports are both {}",
                self.client_port
            )));
        }
        if let Some(cluster) = &self.cluster {
            names::validate("cluster", &cluster.name)?;
            check_credentials(&cluster.credentials)?;
            if cluster.listen.port() == 0 {
                return Err(ConfigError::Invalid(
                    "the route port must be set (not 0)".into(),
                ));
            }
            if cluster.listen.ip().is_unspecified() {
                return Err(ConfigError::Invalid(
                    "the route listener needs the board's own LAN address, not 0.0.0.0".into(),
                ));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(twice) = cluster.routes.iter().find(|r| !seen.insert(**r)) {
                // Every route counts toward the meta group's expected size at bootstrap.
                return Err(ConfigError::Invalid(format!(
                    "the route {twice} is listed twice"
                )));
            }
            for path in [
                &cluster.tls.ca_file,
                &cluster.tls.cert_file,
                &cluster.tls.key_file,
            ] {
                check_path(path)?;
            }
        }
        if let Some(leaf) = &self.leaf {
            check_credentials(leaf.credentials())?;
            match leaf {
                LeafConfig::Hub { listen, .. } => {
                    if listen.port() == 0 || listen.ip().is_unspecified() {
                        return Err(ConfigError::Invalid(
                            "the leaf listener needs the board's own LAN address and a port".into(),
                        ));
                    }
                }
                LeafConfig::Member { hubs, .. } => {
                    if hubs.is_empty() {
                        return Err(ConfigError::Invalid(
                            "a leaf member needs at least one hub".into(),
                        ));
                    }
                }
            }
            let tls = leaf.tls();
            for path in [&tls.ca_file, &tls.cert_file, &tls.key_file] {
                check_path(path)?;
            }
        }
        Ok(())
    }
}

/// A `tls { … }` block of `tls`'s files at `indent` (`verify`: require the peer's certificate,
/// on the accepting side).
fn tls_block(tls: &RouteTls, indent: &str, verify: bool) -> String {
    let mut block = format!("{indent}tls {{\n");
    let _ = writeln!(block, "{indent}  ca_file: {}", quote_path(&tls.ca_file));
    let _ = writeln!(block, "{indent}  cert_file: {}", quote_path(&tls.cert_file));
    let _ = writeln!(block, "{indent}  key_file: {}", quote_path(&tls.key_file));
    if verify {
        let _ = writeln!(block, "{indent}  verify: true");
    }
    let _ = writeln!(block, "{indent}  timeout: 3");
    let _ = write!(block, "{indent}}}");
    block
}

/// A configuration bramble will not write.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A board or cluster name that is not allowed.
    #[error(transparent)]
    Name(#[from] names::NameError),
    /// A path that cannot be written into the file.
    #[error(
        "path {0:?} cannot be used in the nats-server configuration (it must be absolute UTF-8 without quotes, backslashes or control characters)"
    )]
    Path(PathBuf),
    /// A user or password that cannot be used.
    #[error("NATS user {user:?}: {reason}")]
    Credentials {
        /// The user.
        user: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Anything else.
    #[error("invalid engine configuration: {0}")]
    Invalid(String),
}

fn check_credentials(creds: &Credentials) -> Result<(), ConfigError> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !ok(&creds.user) {
        return Err(ConfigError::Credentials {
            user: creds.user.chars().take(40).collect(),
            reason: "user names are 1-128 characters of A-Z, a-z, 0-9, '-' and '_'",
        });
    }
    if !ok(&creds.password) || creds.password.len() < 16 {
        return Err(ConfigError::Credentials {
            user: creds.user.clone(),
            reason: "passwords are 16-128 characters of A-Z, a-z, 0-9, '-' and '_'",
        });
    }
    Ok(())
}

fn check_path(path: &Path) -> Result<(), ConfigError> {
    let ok = path.is_absolute()
        && path
            .to_str()
            .is_some_and(|s| !s.chars().any(|c| c == '"' || c == '\\' || c.is_control()));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Path(path.to_path_buf()))
    }
}

/// A double-quoted string (callers have checked there is nothing to escape).
fn quote(text: &str) -> String {
    format!("\"{text}\"")
}

fn quote_path(path: &Path) -> String {
    quote(&path.to_string_lossy())
}

fn user_entry(creds: &Credentials) -> String {
    format!(
        "{{ user: {}, password: {} }}",
        quote(&creds.user),
        quote(&creds.password)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: &str) -> Credentials {
        Credentials {
            user: user.into(),
            password: "0123456789abcdefXYZ".into(),
        }
    }

    fn config() -> EngineConfig {
        let mut c = EngineConfig::new(
            "pi1",
            Path::new("/var/lib/bramble"),
            creds("pi1"),
            creds("sys-pi1"),
        );
        c.cluster = Some(RouteConfig {
            name: "shelf".into(),
            listen: "10.0.0.1:7424".parse().unwrap(),
            routes: vec![
                "10.0.0.2:7424".parse().unwrap(),
                "10.0.0.3:7424".parse().unwrap(),
            ],
            credentials: creds("route"),
            tls: RouteTls {
                ca_file: "/var/lib/bramble/cluster/tls/ca.pem".into(),
                cert_file: "/var/lib/bramble/cluster/tls/board.pem".into(),
                key_file: "/var/lib/bramble/cluster/tls/board.key".into(),
            },
        });
        c
    }

    const V29: ServerVersion = ServerVersion {
        major: 2,
        minor: 9,
        patch: 10,
    };
    const V210: ServerVersion = ServerVersion {
        major: 2,
        minor: 10,
        patch: 27,
    };

    #[test]
    fn clustered_jetstream_board_on_2_10() {
        let text = config().render(V210).unwrap();
        let expected = include_str!("testdata/clustered-2.10.conf");
        assert_eq!(text, expected, "golden file differs:\n{text}");
    }

    #[test]
    fn sync_interval_is_never_written_for_2_9() {
        let text = config().render(V29).unwrap();
        assert!(!text.contains("sync_interval"), "{text}");
        assert!(text.contains("store_dir: \"/var/lib/bramble/cluster\""));
        assert!(!config().fsync_before_ack(V29));
        assert!(config().fsync_before_ack(V210));
        let mut every = config();
        every.jetstream = Some(JetStreamConfig {
            sync: SyncPolicy::Every(Duration::from_millis(500)),
            ..JetStreamConfig::default()
        });
        assert!(
            every
                .render(V210)
                .unwrap()
                .contains("sync_interval: \"500ms\"")
        );
        assert!(!every.fsync_before_ack(V210));
    }

    #[test]
    fn listeners_are_loopback_and_routes_carry_credentials_and_tls() {
        let text = config().render(V29).unwrap();
        assert!(text.contains("listen: \"127.0.0.1:7422\""));
        assert!(text.contains("http: \"127.0.0.1:7423\""));
        assert!(text.contains("listen: \"10.0.0.1:7424\""));
        assert!(text.contains("\"nats-route://route:0123456789abcdefXYZ@10.0.0.2:7424\""));
        assert!(text.contains("verify: true"));
        assert!(text.contains("system_account: SYS"));
        assert!(text.contains("BRAMBLE: { jetstream: enabled, users: [ { user: \"pi1\""));
    }

    #[test]
    fn standalone_without_jetstream_has_neither_block() {
        let mut c = config();
        c.cluster = None;
        c.jetstream = None;
        let text = c.render(V210).unwrap();
        assert!(!text.contains("cluster {"));
        assert!(!text.contains("jetstream {"));
    }

    #[test]
    fn refuses_what_cannot_be_written_safely() {
        let mut c = config();
        c.board = "pi\"1".into();
        assert!(matches!(c.render(V29), Err(ConfigError::Name(_))));

        let mut c = config();
        c.state_dir = "relative/dir".into();
        assert!(matches!(c.render(V29), Err(ConfigError::Path(_))));

        let mut c = config();
        c.client.password = "short".into();
        assert!(matches!(
            c.render(V29),
            Err(ConfigError::Credentials { .. })
        ));

        let mut c = config();
        c.client.password = "0123456789abcdef\"}".into();
        assert!(matches!(
            c.render(V29),
            Err(ConfigError::Credentials { .. })
        ));

        let mut c = config();
        if let Some(cl) = c.cluster.as_mut() {
            cl.listen = "0.0.0.0:7424".parse().unwrap();
        }
        assert!(matches!(c.render(V29), Err(ConfigError::Invalid(_))));

        let mut c = config();
        if let Some(cl) = c.cluster.as_mut() {
            cl.routes.push(cl.routes[0]);
        }
        assert!(matches!(c.render(V29), Err(ConfigError::Invalid(_))));
        // A route to the board itself is allowed (and counted: see `RouteConfig::routes`).
        let mut c = config();
        if let Some(cl) = c.cluster.as_mut() {
            cl.routes.push(cl.listen);
        }
        assert!(c.render(V29).is_ok());

        let mut c = config();
        c.monitor_port = c.client_port;
        assert!(matches!(c.render(V29), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn leaf_hub_and_member_bind_the_account_with_credentials_and_tls() {
        let creds = Credentials {
            user: "leaf".into(),
            password: "fedcba9876543210XYZ".into(),
        };
        let tls = config().cluster.map(|c| c.tls).unwrap();
        let mut hub = config();
        hub.leaf = Some(LeafConfig::Hub {
            listen: "10.0.0.1:7425".parse().unwrap(),
            credentials: creds.clone(),
            tls: tls.clone(),
        });
        let text = hub.render(V29).unwrap();
        let leaf = &text[text.find("leafnodes {").unwrap()..];
        assert!(leaf.contains("listen: \"10.0.0.1:7425\""), "{leaf}");
        assert!(
            leaf.contains(
                "authorization { user: \"leaf\", password: \"fedcba9876543210XYZ\", account: BRAMBLE"
            ),
            "{leaf}"
        );
        assert!(leaf.contains("verify: true"), "{leaf}");

        let mut member = config();
        member.cluster = None;
        member.jetstream = None;
        member.leaf = Some(LeafConfig::Member {
            hubs: vec![
                "10.0.0.1:7425".parse().unwrap(),
                "10.0.0.2:7425".parse().unwrap(),
            ],
            credentials: creds.clone(),
            tls: tls.clone(),
        });
        let text = member.render(V210).unwrap();
        let leaf = &text[text.find("leafnodes {").unwrap()..];
        assert!(
            leaf.contains("\"nats-leaf://leaf:fedcba9876543210XYZ@10.0.0.2:7425\""),
            "{leaf}"
        );
        assert!(leaf.contains("account: BRAMBLE"), "{leaf}");
        assert!(leaf.contains("cert_file: "), "{leaf}");

        member.leaf = Some(LeafConfig::Member {
            hubs: Vec::new(),
            credentials: creds,
            tls,
        });
        assert!(matches!(member.render(V29), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn debug_hides_passwords() {
        let text = format!("{:?}", config());
        assert!(!text.contains("0123456789abcdef"), "{text}");
    }
}
