//! The server's monitoring listener on loopback: `/healthz`, `/jsz`, `/varz`.

use std::time::Duration;

use serde::Deserialize;

/// What `/healthz` is asked to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthCheck {
    /// The server accepts connections, and JetStream (when configured) is enabled
    /// (`?js-enabled-only=true`). A clustered server passes this before it has a meta leader.
    Server,
    /// The above, and JetStream has a meta leader this server is current with
    /// (`?js-server-only=true`): JetStream requests can be answered.
    MetaLeader,
    /// The above, and every stream and consumer this server holds a replica of is current.
    Full,
}

impl HealthCheck {
    fn query(self) -> &'static str {
        match self {
            HealthCheck::Server => "/healthz?js-enabled-only=true",
            HealthCheck::MetaLeader => "/healthz?js-server-only=true",
            HealthCheck::Full => "/healthz",
        }
    }
}

/// The answer of `/healthz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Healthy.
    Ok,
    /// Not (yet) healthy, with the server's reason.
    Unavailable(String),
}

/// `/jsz`: this server's JetStream view.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct JetStreamInfo {
    /// JetStream is disabled on this server.
    #[serde(default)]
    pub disabled: bool,
    /// The JetStream configuration the server runs with.
    #[serde(default)]
    pub config: JetStreamRunning,
    /// Streams this server holds.
    #[serde(default)]
    pub streams: u64,
    /// Messages in them.
    #[serde(default)]
    pub messages: u64,
    /// The meta group (absent on a standalone server).
    pub meta_cluster: Option<MetaCluster>,
}

/// The JetStream settings a server reports in `/jsz`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct JetStreamRunning {
    /// `max_memory_store` in effect.
    #[serde(default)]
    pub max_memory: i64,
    /// The store directory (`store_dir` + `/jetstream`).
    #[serde(default)]
    pub store_dir: String,
    /// `sync_interval: always` (2.10+).
    #[serde(default)]
    pub sync_always: bool,
    /// The fsync interval in nanoseconds (2.10+; 2.9 does not report it).
    #[serde(default)]
    pub sync_interval: u64,
}

/// The JetStream meta group as one server sees it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct MetaCluster {
    /// The cluster's name.
    #[serde(default)]
    pub name: String,
    /// The meta leader's server name (empty: none known).
    #[serde(default)]
    pub leader: String,
    /// The number of peers the meta group counts (its quorum is `cluster_size / 2 + 1`).
    #[serde(default)]
    pub cluster_size: usize,
    /// The other peers (only the leader lists them).
    #[serde(default)]
    pub replicas: Vec<MetaPeer>,
}

/// A peer of the meta group, as the leader sees it.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct MetaPeer {
    /// Server name.
    pub name: String,
    /// Caught up with the leader.
    #[serde(default)]
    pub current: bool,
    /// Not heard from.
    #[serde(default)]
    pub offline: bool,
}

/// `/varz`: the server's identity and resources.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ServerVarz {
    /// Server name.
    #[serde(default)]
    pub server_name: String,
    /// Version string.
    #[serde(default)]
    pub version: String,
    /// Resident memory in bytes, as the server reports it.
    #[serde(default)]
    pub mem: u64,
    /// Route connections open now.
    #[serde(default)]
    pub routes: u64,
    /// When the configuration was last (re)loaded (RFC 3339).
    #[serde(default)]
    pub config_load_time: String,
}

/// A monitoring request that failed.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// No answer (the server is not listening, or did not answer in time).
    #[error("nats-server monitoring at {url} did not answer")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// An answer that is not what the endpoint documents.
    #[error("nats-server monitoring at {url} answered {status} with an unexpected body")]
    BadAnswer {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The parse error, if any.
        #[source]
        source: Option<serde_json::Error>,
    },
}

/// A client of one server's monitoring listener.
#[derive(Clone, Debug)]
pub struct Monitor {
    base: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct HealthBody {
    #[serde(default)]
    status: String,
    #[serde(default)]
    error: String,
}

impl Monitor {
    /// A client of the monitoring listener at `base` (`http://127.0.0.1:<port>`).
    pub fn new(base: String) -> Monitor {
        bramble_base::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Monitor { base, http }
    }

    /// `/healthz` with the given depth.
    pub async fn health(&self, check: HealthCheck) -> Result<Health, MonitorError> {
        let url = format!("{}{}", self.base, check.query());
        let response =
            self.http
                .get(&url)
                .send()
                .await
                .map_err(|source| MonitorError::Unreachable {
                    url: url.clone(),
                    source,
                })?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| MonitorError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let body: HealthBody =
            serde_json::from_slice(&bytes).map_err(|e| MonitorError::BadAnswer {
                url,
                status,
                source: Some(e),
            })?;
        if status == 200 && body.status == "ok" {
            Ok(Health::Ok)
        } else if body.error.is_empty() {
            Ok(Health::Unavailable(body.status))
        } else {
            Ok(Health::Unavailable(body.error))
        }
    }

    /// Polls `/healthz` every 50 ms until `check` passes; `NotReady` with the server's last
    /// reason after `timeout`.
    pub async fn wait_for(
        &self,
        check: HealthCheck,
        timeout: Duration,
    ) -> Result<(), super::EngineError> {
        let started = std::time::Instant::now();
        loop {
            let last = match self.health(check).await {
                Ok(Health::Ok) => return Ok(()),
                Ok(Health::Unavailable(why)) => why,
                Err(e) => e.to_string(),
            };
            if started.elapsed() > timeout {
                return Err(super::EngineError::NotReady {
                    waited: timeout,
                    log: format!("health: {last}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/jsz`.
    pub async fn jetstream(&self) -> Result<JetStreamInfo, MonitorError> {
        self.get_json("/jsz").await
    }

    /// `/varz`.
    pub async fn varz(&self) -> Result<ServerVarz, MonitorError> {
        self.get_json("/varz").await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, MonitorError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |source| MonitorError::Unreachable {
            url: url.clone(),
            source,
        };
        let response = self.http.get(&url).send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(unreachable)?;
        if status != 200 {
            return Err(MonitorError::BadAnswer {
                url,
                status,
                source: None,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| MonitorError::BadAnswer {
            url,
            status,
            source: Some(e),
        })
    }
}
