//! `bramble up`: the node in one process — store, runtime, provider, gateway (with its
//! dashboard, fed by the node's hardware and triggers).

use std::sync::Arc;

use bramble_gateway::Gateway;
use bramble_gateway::types::VersionInfo;
use bramble_gateway::{Credentials, GatewayConfig};
use bramble_hardware::Hardware;
use bramble_runtime::peer::MountNamespace;
use bramble_runtime::{NetworkConfig, RegistryConfig, Runtime, RuntimeConfig};

use crate::config::Config;
use crate::dashboard::NodeView;
use crate::function::Defaults;
use crate::provider::{LocalProvider, ProviderSettings};
use crate::store::Store;
use crate::triggers;

/// Why the node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("opening the state directory")]
    Store(#[from] crate::store::StoreError),
    #[error("preparing the runtime")]
    Runtime(#[from] bramble_runtime::Error),
    #[error("starting the gateway")]
    Gateway(#[from] bramble_gateway::GatewayError),
    #[error(
        "cannot listen on {addr} (is another bramble or faasd running? set listen / BRAMBLE_LISTEN)"
    )]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
    #[error("starting the hardware helper")]
    Hardware(#[from] bramble_hardware::HardwareError),
    /// bramble and containerd are in different mount namespaces: every function start would
    /// fail (see [`bramble_runtime::peer`]).
    #[error("refusing to start: {detail}; fix: {}", MountNamespace::FIX)]
    MountNamespace { detail: String },
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterStartError),
}

/// How the node ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Asked to stop (SIGTERM, SIGINT).
    Stopped,
    /// It formed, joined or left a cluster: run `bramble up` again with the same arguments
    /// (functions kept running and are adopted).
    Restart,
}

/// The runtime configuration a node configuration implies.
pub fn runtime_config(config: &Config) -> RuntimeConfig {
    let mut runtime = RuntimeConfig::new(&config.containerd_socket, &config.run_dir);
    runtime.namespace = config.containerd_namespace.clone();
    runtime.network = NetworkConfig {
        bridge: config.network.bridge.clone(),
        subnet: config.network.subnet.clone(),
        plugin_dirs: config.network.cni_plugin_dirs.clone(),
        state_dir: config.run_dir.join("net"),
        ..NetworkConfig::default()
    };
    runtime.registries = RegistryConfig {
        insecure: config.registry.insecure.clone(),
        credentials_file: Some(config.registry_credentials()),
    };
    runtime.log_buffer_bytes = config.log_buffer.as_usize();
    runtime.max_unpacked = config.max_unpacked.bytes();
    runtime
}

/// Runs the node until `shutdown` completes (SIGTERM/SIGINT in `bramble up`).
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Exit, DaemonError> {
    config.validate()?;
    refuse_another_mount_namespace(&config).await?;
    let store = Arc::new(Store::open(&config.state_dir, &config.default_namespace)?);
    let (credentials, generated) = store.api_credentials()?;
    let runtime = Runtime::new(runtime_config(&config))?;
    // A containerd that answers must be a release bramble supports; one that does not answer
    // yet is waited for as before (the health check reports it meanwhile).
    match runtime.version().await {
        Ok(version) => tracing::info!(%version, "containerd"),
        Err(e @ bramble_runtime::Error::UnsupportedContainerd { .. }) => return Err(e.into()),
        Err(e) => tracing::warn!(error = %e.chain(), "containerd not reachable yet"),
    }
    let defaults = Defaults {
        memory_bytes: config.defaults.memory.bytes(),
        cpu_millis: config.defaults.cpu.millicores(),
        pids: config.defaults.pids,
        timeout: config.function_timeout,
    };
    let defaults_for_cluster = defaults.clone();
    let settings = ProviderSettings {
        default_namespace: config.default_namespace.clone(),
        pull_policy: config.pull_policy,
        defaults,
        ready_timeout: config.ready_timeout,
        stop_grace: config.stop_grace,
        memory_budget: config.memory_budget_bytes(),
        image_gc_after: config.image_gc_after.after(),
    };
    let mut hardware_config = config.hardware.clone();
    if hardware_config.socket_dir.is_none() {
        hardware_config.socket_dir = Some(config.run_dir.join("hw"));
    }
    let hardware = Hardware::new(hardware_config)?;
    let provider =
        LocalProvider::start(runtime, Arc::clone(&store), Arc::clone(&hardware), settings);
    let stopper = Arc::clone(&provider);
    let gateway_config = GatewayConfig {
        credentials: Credentials {
            user: credentials.user.clone(),
            password: credentials.password.clone(),
        },
        default_namespace: config.default_namespace.clone(),
        max_api_body: config.max_api_body.as_usize(),
        max_async_body: config.async_queue.max_body.as_usize(),
        ready_wait: config.ready_timeout,
        queue_dir: config.state_dir.join("queue"),
        upload_dir: config.state_dir.join("uploads"),
        max_upload: config.max_upload.bytes(),
        async_workers: config.async_queue.workers,
        version: VersionInfo {
            commit_message: String::new(),
            sha: option_env!("BRAMBLE_GIT_SHA").unwrap_or("unknown").into(),
            release: env!("CARGO_PKG_VERSION").into(),
        },
        ..GatewayConfig::default()
    };
    let node_provider = Arc::new(crate::cluster::NodeProvider::new(
        Arc::clone(&provider),
        Arc::new(crate::cluster::Checks {
            defaults: defaults_for_cluster.clone(),
            ready_wait: config.ready_timeout,
        }),
    ));
    let gateway = Gateway::new(Arc::clone(&node_provider), gateway_config)?;
    gateway.add_admin_routes(bramble_hardware::admin::router(Arc::clone(&hardware)));
    let deliveries = Arc::new(triggers::Deliveries::default());
    gateway.set_node_feed(Arc::new(NodeView {
        hardware: Arc::clone(&hardware),
        deliveries: Arc::clone(&deliveries),
        store: Arc::clone(&store),
    }));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(config.listen);
    let cluster = crate::cluster::ClusterSide::start(crate::cluster::Context {
        config: &config,
        store: Arc::clone(&store),
        credentials: &credentials,
        gateway: &gateway,
        provider: Arc::clone(&node_provider),
        api: addr,
        hardware: Arc::clone(&hardware),
        defaults: defaults_for_cluster,
    })
    .await?;
    // After the cluster side: in a cluster, pending async calls go to the cluster's queue,
    // and a schedule fires on one board.
    gateway.start_workers();
    let triggers = {
        let ctx = triggers::Context {
            dir: config.state_dir.join("triggers"),
            store: Arc::clone(&store),
            hardware: Arc::clone(&hardware),
            gateway: Arc::clone(&gateway),
            deliveries,
            schedules: node_provider.schedules(),
            board: cluster.board_name(&config),
            cluster: node_provider.annotations(),
        };
        let provider = Arc::clone(&provider);
        tokio::spawn(async move {
            // The GPIO lines of the functions are requested during adoption.
            while !provider
                .wait_started(std::time::Duration::from_secs(60))
                .await
            {}
            triggers::run(ctx).await;
        })
    };
    let secrets = config.state_dir.join("secrets");
    println!(
        "bramble {} listening on http://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    println!(
        "API credentials: {} and {} (readable by root)",
        secrets.join("basic-auth-user").display(),
        secrets.join("basic-auth-password").display()
    );
    if let Some(notice) = credentials_notice(
        generated,
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
        &credentials,
        &secrets.join("basic-auth-password"),
    ) {
        println!("{notice}");
    }
    tracing::info!(%addr, state_dir = %config.state_dir.display(), "node started");
    let probe_addr = probe_addr(addr);
    // Ready for systemd (Type=notify) once the gateway answers a request, not merely listens;
    // then the watchdog pings while it keeps answering.
    let liveness = tokio::spawn(async move {
        while !gateway_answers(probe_addr).await {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        crate::systemd::notify("READY=1");
        crate::systemd::watchdog(move || gateway_answers(probe_addr)).await;
    });
    let restart = cluster.restart_requested();
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {
                crate::systemd::notify("STOPPING=1");
            }
            () = restart => {
                crate::systemd::notify("RELOADING=1");
            }
        }
    };
    let served = gateway.serve(listener, shutdown).await;
    liveness.abort();
    triggers.abort();
    let must_restart = cluster.must_restart();
    cluster.stop().await;
    served.map_err(DaemonError::Serve)?;
    if must_restart {
        tracing::info!("stopped accepting requests; restarting (functions keep running)");
        hardware.shutdown().await;
        return Ok(Exit::Restart);
    }
    if config.stop_functions_on_shutdown {
        tracing::info!("stopped accepting requests; stopping every function");
        stopper.stop_all().await;
    } else {
        tracing::info!("stopped accepting requests; functions keep running");
    }
    hardware.shutdown().await;
    Ok(Exit::Stopped)
}

/// Refuses to start when containerd runs in another mount namespace: runc could not see the
/// network namespaces bramble pins, and every function would crash-loop with runc's "can't get
/// final child's PID from pipe: EOF". Where it cannot be told (containerd not up yet), starts.
async fn refuse_another_mount_namespace(config: &Config) -> Result<(), DaemonError> {
    let socket = config.containerd_socket.clone();
    let found = tokio::task::spawn_blocking(move || {
        bramble_runtime::peer::containerd_mount_namespace(&socket)
    })
    .await
    .unwrap_or_else(|e| MountNamespace::Unknown(e.to_string()));
    match found {
        MountNamespace::Apart { .. } => Err(DaemonError::MountNamespace {
            detail: found.describe(),
        }),
        MountNamespace::Shared { .. } => Ok(()),
        MountNamespace::Unknown(reason) => {
            tracing::warn!(%reason, "cannot tell whether containerd shares bramble's mount namespace");
            Ok(())
        }
    }
}

/// What `bramble up` says about credentials it has just generated (`None` when it found
/// them): the password itself only on an interactive first start (stdout a terminal), once;
/// otherwise, where stdout is a log (journald, a file), only the file to read it from.
pub fn credentials_notice(
    generated: bool,
    interactive: bool,
    credentials: &crate::store::ApiCredentials,
    password_file: &std::path::Path,
) -> Option<String> {
    if !generated {
        return None;
    }
    Some(if interactive {
        format!(
            "generated new API credentials (shown once; kept in {}): user {}, password {}",
            password_file.display(),
            credentials.user,
            credentials.password
        )
    } else {
        format!(
            "generated new API credentials for user {}: read the password from {}",
            credentials.user,
            password_file.display()
        )
    })
}

/// Where the node reaches its own gateway: the listening address, or loopback when it listens
/// on every address.
fn probe_addr(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// The watchdog's liveness check: the gateway accepts and answers a request (its own `/`).
async fn gateway_answers(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: watchdog\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), check)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ApiCredentials;
    use std::path::Path;

    #[test]
    fn a_generated_password_is_shown_only_on_a_terminal() {
        let credentials = ApiCredentials {
            user: "admin".into(),
            password: "pw-0123456789".into(),
        };
        let file = Path::new("/var/lib/bramble/secrets/basic-auth-password");
        // A first start in a terminal: the password, once, with where it is kept.
        let shown = credentials_notice(true, true, &credentials, file).unwrap();
        assert!(
            shown.contains("pw-0123456789")
                && shown.contains("shown once")
                && shown.contains(&file.display().to_string()),
            "{shown}"
        );
        // Under systemd (journald) or redirected to a file: the file, never the password.
        let logged = credentials_notice(true, false, &credentials, file).unwrap();
        assert!(!logged.contains("pw-0123456789"), "{logged}");
        assert!(
            logged.contains("admin") && logged.contains(&file.display().to_string()),
            "{logged}"
        );
        // Credentials found from an earlier start: nothing more to say, terminal or not.
        assert_eq!(credentials_notice(false, true, &credentials, file), None);
        assert_eq!(credentials_notice(false, false, &credentials, file), None);
    }

    #[test]
    fn the_node_probes_itself_where_it_listens() {
        let addr = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert_eq!(probe_addr(addr("0.0.0.0:8080")), addr("127.0.0.1:8080"));
        assert_eq!(probe_addr(addr("[::]:8080")), addr("[::1]:8080"));
        assert_eq!(
            probe_addr(addr("192.168.1.5:8080")),
            addr("192.168.1.5:8080")
        );
        assert_eq!(probe_addr(addr("127.0.0.1:9")), addr("127.0.0.1:9"));
    }
}
