//! Function networking: one network namespace per function container, attached with the
//! standard CNI plugins to a bramble bridge.
//!
//! bramble (not runc) creates each namespace *before* the container exists, pinned as a bind
//! mount at `<state_dir>/netns/<id>` the way `ip netns add` does it, so the function's address is
//! known early and survives task restarts. The container's OCI spec then points its network
//! namespace at that path.
//!
//! Each namespace gets `lo` up (the `loopback` plugin) and one `eth0` from the chain
//! `bridge` (with `host-local` IPAM) → `firewall`. Everything this module writes lives under the
//! volatile `state_dir` (a tmpfs such as `/run/bramble/net`):
//!
//! ```text
//! <state_dir>/netns/<id>         the pinned namespace (nsfs bind mount)
//! <state_dir>/cache/<id>.json    attachment, CNI result and exact netconf used (for DEL)
//! <state_dir>/ipam/<name>/<ip>   host-local leases
//! ```
//!
//! All of it must vanish on reboot together with the namespaces it describes.
//!
//! [`Network::attach`] and [`Network::detach`] are idempotent and run to completion on a
//! spawned task even when the caller's future is dropped, so a cancelled request leaks nothing.
//! Calls for the same id are serialised; calls for different ids run concurrently.

mod cni;
mod config;
mod error;
mod isolate;
mod locks;
mod netns;
mod store;

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use config::NetworkConfig;
pub use error::NetworkError;

use cni::{CniCommand, Invocation, Plugins};
use config::{Subnet, parse_cidr, validate_config, validate_id};
use locks::IdLocks;
use store::CacheEntry;

/// The interface name of a function's network namespace.
const IFNAME: &str = "eth0";

/// How long one plugin call may take before it is killed.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// One function's place on the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The containerd container id it belongs to.
    pub id: String,
    /// The pinned network namespace: give this path to the container's OCI spec.
    pub netns: PathBuf,
    /// The function's address on `eth0`.
    pub ip: Ipv4Addr,
    /// The bridge address (the function's default gateway).
    pub gateway: Ipv4Addr,
    /// Prefix length of the function subnet.
    pub prefix_len: u8,
}

/// An address host-local leased (a file named by the address under the IPAM directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The leased address.
    pub ip: IpAddr,
    /// The container id holding it.
    pub id: String,
}

/// Serialises the first chain ADD in this process: the `firewall` plugin creates its shared
/// iptables chains with a check-then-create race, so until one ADD has succeeded (after which
/// the chains exist) ADDs run one at a time.
static FIRST_ADD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The function network of this node. Cheap to clone; clones share state and locks.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: NetworkConfig,
    subnet: Subnet,
    plugins: Plugins,
    /// `CNI_PATH`: the plugin directories joined by `:`.
    cni_path: String,
    /// `PATH` for plugins (they run `iptables`), with the sbin directories added when missing.
    path_env: String,
    locks: IdLocks,
    /// The CNI version negotiated with the installed plugins (on first use).
    version: tokio::sync::OnceCell<&'static str>,
    /// The netns directory is a shared mount point (done once).
    netns_dir_ready: tokio::sync::OnceCell<()>,
    /// One chain ADD has succeeded, so the plugins' shared iptables chains exist.
    warmed: AtomicBool,
}

impl Network {
    /// Validates `config` and locates the plugin executables (`bridge`, `host-local`,
    /// `loopback`, `firewall`). Touches nothing on the system.
    pub fn new(config: NetworkConfig) -> Result<Network, NetworkError> {
        let subnet = validate_config(&config)?;
        let plugins = Plugins::locate(&config.plugin_dirs)?;
        let cni_path = config
            .plugin_dirs
            .iter()
            .filter_map(|d| d.to_str())
            .collect::<Vec<_>>()
            .join(":");
        let path_env = cni::plugin_path_env(std::env::var("PATH").ok().as_deref());
        Ok(Network {
            inner: Arc::new(Inner {
                config,
                subnet,
                plugins,
                cni_path,
                path_env,
                locks: IdLocks::default(),
                version: tokio::sync::OnceCell::new(),
                netns_dir_ready: tokio::sync::OnceCell::new(),
                warmed: AtomicBool::new(false),
            }),
        })
    }

    /// Gives `id` a network namespace on the bridge, or returns the one it already has.
    ///
    /// Idempotent: a cached attachment whose namespace is still mounted is returned as is
    /// (this is how a restarted daemon adopts existing attachments). Leftovers of an earlier,
    /// broken attachment are cleaned up first. On failure nothing is left behind.
    pub async fn attach(&self, id: &str) -> Result<Attachment, NetworkError> {
        validate_id(id)?;
        let inner = Arc::clone(&self.inner);
        let id = id.to_owned();
        tokio::spawn(async move { inner.attach(&id).await })
            .await
            .map_err(|e| NetworkError::Internal(format!("attach task failed: {e}")))?
    }

    /// Creates `id`'s (empty) network namespace without attaching it, and returns its path;
    /// returns the existing one when it is already there. Cheap (no plugin runs), so a
    /// container can be created against the namespace while [`Network::attach`] runs the CNI
    /// chain concurrently with the task's creation.
    pub async fn prepare(&self, id: &str) -> Result<PathBuf, NetworkError> {
        validate_id(id)?;
        let inner = Arc::clone(&self.inner);
        let id = id.to_owned();
        tokio::spawn(async move { inner.prepare(&id).await })
            .await
            .map_err(|e| NetworkError::Internal(format!("prepare task failed: {e}")))?
    }

    /// Where `id`'s network namespace is (or will be) pinned.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.inner.netns_path(id)
    }

    /// Removes `id`'s attachment: CNI DEL, then the namespace, then the cache entry.
    ///
    /// Idempotent: an unknown id is `Ok`. Works when the namespace is already gone. Leftover
    /// namespace files and IPAM leases of an id without cache entry are cleaned up too. When a
    /// plugin's DEL fails, the cache entry is kept so that a retry can finish the job.
    pub async fn detach(&self, id: &str) -> Result<(), NetworkError> {
        validate_id(id)?;
        let inner = Arc::clone(&self.inner);
        let id = id.to_owned();
        tokio::spawn(async move { inner.detach(&id).await })
            .await
            .map_err(|e| NetworkError::Internal(format!("detach task failed: {e}")))?
    }

    /// The attachments the cache records, sorted by id (for adoption after a daemon restart
    /// and orphan cleanup). Unreadable entries are logged and skipped. Does not check that the
    /// namespaces are still alive; [`Network::attach`] does.
    pub fn attachments(&self) -> Result<Vec<Attachment>, NetworkError> {
        store::list(&self.inner.cache_dir())
    }

    /// Ids with a network namespace file, pinned or not, sorted.
    pub fn namespaces(&self) -> Result<Vec<String>, NetworkError> {
        netns::list(&self.inner.netns_dir())
    }

    /// The addresses host-local has leased, sorted by address, each with the id holding it.
    pub fn leases(&self) -> Result<Vec<Lease>, NetworkError> {
        let lease_dir = self.inner.lease_dir();
        let mut leases: Vec<Lease> = store::all_leases(&lease_dir)
            .map_err(|e| NetworkError::io(format!("read leases in {}", lease_dir.display()), e))?
            .into_iter()
            .map(|(ip, id)| Lease { ip, id })
            .collect();
        leases.sort_by_key(|l| l.ip);
        Ok(leases)
    }

    /// Every id this network holds something for: a namespace file, an IP lease or an
    /// attachment record. A container that no longer exists leaves such ids behind when the
    /// daemon crashed between preparing its namespace and recording the container, or in the
    /// middle of a CNI ADD; [`Network::detach`] releases them. Ids that are not valid
    /// container ids (nothing bramble made) are logged and left alone.
    pub fn holders(&self) -> Result<BTreeSet<String>, NetworkError> {
        let mut ids: BTreeSet<String> = self.namespaces()?.into_iter().collect();
        ids.extend(self.leases()?.into_iter().map(|l| l.id));
        ids.extend(self.attachments()?.into_iter().map(|a| a.id));
        ids.retain(|id| {
            let valid = validate_id(id).is_ok();
            if !valid {
                tracing::warn!(id = %id, dir = %self.inner.config.state_dir.display(), "leaving alone a network namespace or lease that bramble did not make");
            }
            valid
        });
        Ok(ids)
    }

    /// The bridge address: the first host of the subnet, every function's default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.inner.subnet.gateway()
    }
}

impl Inner {
    fn netns_dir(&self) -> PathBuf {
        self.config.state_dir.join("netns")
    }

    fn netns_path(&self, id: &str) -> PathBuf {
        self.netns_dir().join(id)
    }

    fn cache_dir(&self) -> PathBuf {
        self.config.state_dir.join("cache")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.config.state_dir.join("ipam")
    }

    /// host-local's lease directory for this network.
    fn lease_dir(&self) -> PathBuf {
        self.ipam_dir().join(&self.config.name)
    }

    fn invocation<'a>(
        &'a self,
        command: CniCommand,
        id: &'a str,
        netns: &'a Path,
        ifname: &'a str,
    ) -> Invocation<'a> {
        Invocation {
            command,
            container_id: id,
            netns,
            ifname,
            cni_path: &self.cni_path,
            path_env: &self.path_env,
            timeout: PLUGIN_TIMEOUT,
        }
    }

    async fn cni_version(&self) -> Result<&'static str, NetworkError> {
        self.version
            .get_or_try_init(|| {
                cni::negotiate_version(&self.plugins, &self.path_env, PLUGIN_TIMEOUT)
            })
            .await
            .copied()
    }

    async fn ensure_netns_dir(&self) -> Result<(), NetworkError> {
        let dir = self.netns_dir();
        self.netns_dir_ready
            .get_or_try_init(
                || async move { blocking(move || netns::ensure_shared_dir(&dir)).await? },
            )
            .await
            .copied()
    }

    fn conflist(&self, version: &str) -> Result<Value, NetworkError> {
        let ipam_dir = self.ipam_dir();
        let ipam_dir = ipam_dir
            .to_str()
            .ok_or_else(|| NetworkError::Internal("state_dir is not UTF-8".to_owned()))?;
        Ok(cni::render_conflist(&cni::ChainParams {
            version,
            name: &self.config.name,
            bridge: &self.config.bridge,
            subnet: &self.subnet.to_string(),
            gateway: self.subnet.gateway(),
            ipam_data_dir: ipam_dir,
        }))
    }

    async fn read_cache(&self, id: &str) -> Result<Option<CacheEntry>, NetworkError> {
        let dir = self.cache_dir();
        let id = id.to_owned();
        blocking(move || match store::read(&dir, &id) {
            Ok(entry) => Ok(entry),
            Err(store::ReadError::Io(e)) => Err(e),
            Err(store::ReadError::Corrupt(reason)) => {
                tracing::warn!(id = %id, "ignoring unreadable network cache entry: {reason}");
                Ok(None)
            }
        })
        .await?
    }

    async fn prepare(&self, id: &str) -> Result<PathBuf, NetworkError> {
        let _guard = self.locks.lock(id).await;
        let netns = self.netns_path(id);
        let live_path = netns.clone();
        if blocking(move || netns::is_live(&live_path)).await? {
            return Ok(netns);
        }
        let cached = self.read_cache(id).await?;
        self.teardown(id, cached, false).await?;
        self.ensure_netns_dir().await?;
        netns::create(&netns).await?;
        tracing::debug!(id, netns = %netns.display(), "network namespace prepared");
        Ok(netns)
    }

    async fn attach(&self, id: &str) -> Result<Attachment, NetworkError> {
        let _guard = self.locks.lock(id).await;
        let netns = self.netns_path(id);
        let cached = self.read_cache(id).await?;
        let live_path = netns.clone();
        let live = blocking(move || netns::is_live(&live_path)).await?;
        if let Some(entry) = &cached
            && live
            && entry.attachment.netns == netns
        {
            if !self.subnet.contains(entry.attachment.ip) {
                tracing::warn!(
                    id,
                    ip = %entry.attachment.ip,
                    subnet = %self.subnet,
                    "keeping an existing attachment outside the configured subnet (config changed?)"
                );
            }
            // Attached by an earlier bramble, maybe one that did not isolate functions yet.
            if let Err(e) = self.isolate(&entry.result).await {
                tracing::warn!(id, "{e}");
            }
            return Ok(entry.attachment.clone());
        }
        let version = self.cni_version().await?;
        let conflist = self.conflist(version)?;
        if live && cached.is_none() {
            // Prepared by `prepare` (a container may already use it): keep the namespace, but
            // free what a crashed earlier attach may have left on it.
            self.release_stale_leases(id, version, &netns).await?;
        } else {
            // Anything left from an earlier attachment (daemon crash, namespace unmounted by
            // someone else) would hold the id's lease: clean it up, best effort.
            self.teardown(id, cached, false).await?;
            self.ensure_netns_dir().await?;
            netns::create(&netns).await?;
            tracing::debug!(id, netns = %netns.display(), "network namespace created");
        }

        let mut progress = Progress::default();
        match self
            .setup(id, &netns, version, &conflist, &mut progress)
            .await
        {
            Ok(attachment) => Ok(attachment),
            Err(error) => {
                tracing::warn!(id, "attach failed, rolling back: {error}");
                self.rollback(id, &netns, &conflist, &progress).await;
                Err(error)
            }
        }
    }

    /// Loopback, the chain, the cache entry. Records in `progress` what needs undoing.
    async fn setup(
        &self,
        id: &str,
        netns: &Path,
        version: &str,
        conflist: &Value,
        progress: &mut Progress,
    ) -> Result<Attachment, NetworkError> {
        let lo = cni::loopback_conflist(version);
        for step in cni::chain_steps(&lo, &self.plugins)? {
            let conf = step.stdin(None)?;
            cni::exec(
                step.path,
                step.kind,
                &self.invocation(CniCommand::Add, id, netns, "lo"),
                &conf,
            )
            .await?;
        }

        let steps = cni::chain_steps(conflist, &self.plugins)?;
        let mut result: Option<Value> = None;
        {
            let _first = if self.warmed.load(Ordering::Acquire) {
                None
            } else {
                let first = FIRST_ADD.lock().await;
                // Whoever held it may have warmed the plugins up meanwhile.
                if self.warmed.load(Ordering::Acquire) {
                    None
                } else {
                    Some(first)
                }
            };
            for step in &steps {
                progress.attempted += 1;
                let conf = step.stdin(result.as_ref())?;
                let out = cni::exec(
                    step.path,
                    step.kind,
                    &self.invocation(CniCommand::Add, id, netns, IFNAME),
                    &conf,
                )
                .await?;
                let out = out.ok_or_else(|| NetworkError::BadResult {
                    reason: format!("plugin {} printed nothing on ADD", step.kind),
                })?;
                progress.result = Some(out.clone());
                result = Some(out);
            }
            self.warmed.store(true, Ordering::Release);
        }
        let result = result.ok_or_else(|| NetworkError::BadResult {
            reason: "the plugin chain is empty".to_owned(),
        })?;
        let primary = cni::primary_ipv4(&result, IFNAME)?;
        self.isolate(&result).await?;
        let attachment = Attachment {
            id: id.to_owned(),
            netns: netns.to_path_buf(),
            ip: primary.ip,
            gateway: primary.gateway.unwrap_or_else(|| self.subnet.gateway()),
            prefix_len: primary.prefix_len,
        };
        let entry = CacheEntry::new(attachment.clone(), IFNAME, conflist.clone(), result);
        let dir = self.cache_dir();
        blocking(move || store::write(&dir, &entry)).await??;
        Ok(attachment)
    }

    /// Isolates the function's bridge port (the host side of its veth, named in the CNI
    /// result), so that functions cannot reach each other except through the gateway.
    async fn isolate(&self, result: &Value) -> Result<(), NetworkError> {
        let ports = cni::host_ports(result, &self.config.bridge)?;
        if ports.is_empty() {
            return Err(NetworkError::BadResult {
                reason: "names no host-side interface to isolate".to_owned(),
            });
        }
        blocking(move || ports.iter().try_for_each(|p| isolate::isolate_port(p))).await?
    }

    /// Undoes a failed attach: DEL for the chain (errors logged), namespace, leases, cache.
    async fn rollback(&self, id: &str, netns: &Path, conflist: &Value, progress: &Progress) {
        if progress.attempted > 0
            && let Err(e) = self
                .del_chain(id, netns, conflist, progress.result.as_ref(), false)
                .await
        {
            tracing::warn!(id, "rollback: CNI DEL failed: {e}");
        }
        if let Err(e) = self.remove_local_state(id).await {
            tracing::warn!(id, "rollback: {e}");
        }
    }

    async fn detach(&self, id: &str) -> Result<(), NetworkError> {
        let _guard = self.locks.lock(id).await;
        let cached = self.read_cache(id).await?;
        self.teardown(id, cached, true).await
    }

    /// Removes whatever exists for `id`. With `strict`, a failing DEL of a cached attachment
    /// is returned and the cache entry kept; otherwise it is logged and cleanup goes on.
    async fn teardown(
        &self,
        id: &str,
        cached: Option<CacheEntry>,
        strict: bool,
    ) -> Result<(), NetworkError> {
        let netns = self.netns_path(id);
        let (live, exists, leases) = {
            let path = netns.clone();
            let lease_dir = self.lease_dir();
            let id = id.to_owned();
            blocking(move || {
                let live = netns::is_live(&path);
                let exists = path.symlink_metadata().is_ok();
                // A namespace file that is no longer a mount makes plugins' DEL fail ("not a
                // network namespace"), while a missing path is tolerated: remove it first.
                if exists && !live {
                    netns::remove(&path)?;
                }
                let leases = store::leases_of(&lease_dir, &id).map_err(|e| {
                    NetworkError::io(format!("read leases in {}", lease_dir.display()), e)
                })?;
                Ok::<_, NetworkError>((live, exists, leases))
            })
            .await??
        };

        match &cached {
            Some(entry) => {
                let r = self
                    .del_chain(id, &netns, &entry.netconf, Some(&entry.result), strict)
                    .await;
                match r {
                    Err(e) if strict => return Err(e),
                    Err(e) => tracing::warn!(id, "CNI DEL of a stale attachment failed: {e}"),
                    Ok(()) => {}
                }
            }
            None if live || exists || !leases.is_empty() => {
                // No record of what was added (crash between ADD and cache write): DEL with the
                // current netconf and a prevResult rebuilt from the leases, so that `firewall`
                // finds its per-address rules.
                let del = async {
                    let version = self.cni_version().await?;
                    let conflist = self.conflist(version)?;
                    let prev = self.result_from_leases(version, &netns, &leases);
                    self.del_chain(id, &netns, &conflist, prev.as_ref(), false)
                        .await
                };
                if let Err(e) = del.await {
                    tracing::warn!(id, "CNI DEL without cache entry failed: {e}");
                }
            }
            None => {}
        }
        self.remove_local_state(id).await
    }

    /// DEL (best effort) and lease release for leases `id` holds without a cache entry.
    async fn release_stale_leases(
        &self,
        id: &str,
        version: &str,
        netns: &Path,
    ) -> Result<(), NetworkError> {
        let lease_dir = self.lease_dir();
        let owner = id.to_owned();
        let leases = blocking(move || {
            store::leases_of(&lease_dir, &owner)
                .map_err(|e| NetworkError::io(format!("read leases in {}", lease_dir.display()), e))
        })
        .await??;
        if leases.is_empty() {
            return Ok(());
        }
        let conflist = self.conflist(version)?;
        let prev = self.result_from_leases(version, netns, &leases);
        if let Err(e) = self
            .del_chain(id, netns, &conflist, prev.as_ref(), false)
            .await
        {
            tracing::warn!(id, "CNI DEL of a stale lease failed: {e}");
        }
        let lease_dir = self.lease_dir();
        let owner = id.to_owned();
        blocking(move || {
            store::release_leases(&lease_dir, &owner)
                .map(|_| ())
                .map_err(|e| {
                    NetworkError::io(format!("release leases in {}", lease_dir.display()), e)
                })
        })
        .await?
    }

    /// A CNI result listing the addresses host-local leased to a container.
    fn result_from_leases(&self, version: &str, netns: &Path, leases: &[PathBuf]) -> Option<Value> {
        let ips: Vec<Value> = leases
            .iter()
            .filter_map(|lease| lease.file_name()?.to_str()?.parse::<Ipv4Addr>().ok())
            .map(|ip| {
                let mut entry = serde_json::Map::new();
                entry.insert("interface".to_owned(), Value::from(0));
                entry.insert(
                    "address".to_owned(),
                    Value::from(format!("{ip}/{}", self.subnet.prefix_len)),
                );
                entry.insert(
                    "gateway".to_owned(),
                    Value::from(self.subnet.gateway().to_string()),
                );
                if version.starts_with("0.") {
                    entry.insert("version".to_owned(), Value::from("4")); // required before 1.0.0
                }
                Value::Object(entry)
            })
            .collect();
        (!ips.is_empty()).then(|| {
            serde_json::json!({
                "cniVersion": version,
                "interfaces": [{ "name": IFNAME, "sandbox": netns.to_string_lossy() }],
                "ips": ips,
            })
        })
    }

    /// Unmounts and removes the namespace file, frees leftover leases naming `id`, removes the
    /// cache entry.
    async fn remove_local_state(&self, id: &str) -> Result<(), NetworkError> {
        let netns = self.netns_path(id);
        let lease_dir = self.lease_dir();
        let cache_dir = self.cache_dir();
        let id = id.to_owned();
        blocking(move || {
            netns::remove(&netns)?;
            let freed = store::release_leases(&lease_dir, &id).map_err(|e| {
                NetworkError::io(format!("release leases in {}", lease_dir.display()), e)
            })?;
            if !freed.is_empty() {
                tracing::debug!(id = %id, ?freed, "released leftover IPAM leases");
            }
            store::remove(&cache_dir, &id)
        })
        .await?
    }

    /// DEL for the chain in reverse order, each plugin given `prev_result`. With `stop_on_error`
    /// the first failure is returned at once; otherwise every plugin is tried and the first
    /// failure returned at the end.
    async fn del_chain(
        &self,
        id: &str,
        netns: &Path,
        conflist: &Value,
        prev_result: Option<&Value>,
        stop_on_error: bool,
    ) -> Result<(), NetworkError> {
        let steps = cni::chain_steps(conflist, &self.plugins)?;
        let mut first_error = None;
        for step in steps.iter().rev() {
            let r = async {
                let conf = step.stdin(prev_result)?;
                cni::exec(
                    step.path,
                    step.kind,
                    &self.invocation(CniCommand::Del, id, netns, IFNAME),
                    &conf,
                )
                .await
            }
            .await;
            if let Err(e) = r {
                if stop_on_error {
                    return Err(e);
                }
                tracing::debug!(id, plugin = step.kind, "DEL failed: {e}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// How far a failed attach got.
#[derive(Default)]
struct Progress {
    /// Chain plugins whose ADD was started.
    attempted: usize,
    /// The last successful result.
    result: Option<Value>,
}

/// Runs blocking file-system work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetworkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetworkError::Internal(format!("blocking task failed: {e}")))
}

#[cfg(test)]
mod tests;
