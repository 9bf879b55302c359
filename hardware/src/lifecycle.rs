//! A function's hardware through its life: checked on deploy, attached (lines requested, its
//! socket served, the [`Mount`] returned), adopted after a restart, put in its safe state when
//! its replicas stop, detached when it is deleted; and its socket directory on the host.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard, PoisonError};

use tokio::net::UnixListener;
use tracing::{info, warn};

use crate::grants::{self, Direction, Grants, LineGrant};
use crate::{CONTAINER_DIR, Hardware, HardwareError, SOCKET_NAME, Server, broker};

/// Longest Unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What the runtime mounts into a function's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The function's socket directory on the host, `<socket_dir>/<function>`.
    pub host_path: PathBuf,
    /// Where to mount it in the container: `/run/bramble`.
    pub container_path: PathBuf,
    /// The socket on the host (`<host_path>/hw.sock`).
    pub socket: PathBuf,
    /// The mount can (and should) be read-only.
    pub read_only: bool,
}

impl Hardware {
    /// Checks that every granted line exists and that the grants (lines, PWM channels) do
    /// not conflict with those of the other functions: the attached ones and every deployed
    /// one, attached or not (a function never conflicts with its own current grants).
    /// Changes nothing.
    pub fn check(&self, function: &str, grants: &Grants) -> Result<(), HardwareError> {
        validate_function(function)?;
        for line in grants.gpio.keys() {
            if !self.shared.gpio.has_line(line) {
                return Err(HardwareError::UnknownLine(format!(
                    "{}: no GPIO line named {line} on this node ({} backend; `bramble gpio \
                     get` lists the lines)",
                    grants::GPIO_KEY,
                    self.backend()
                )));
            }
        }
        let state = self.shared.state();
        grants::check_conflicts(
            function,
            grants,
            state
                .functions
                .iter()
                .chain(&state.reserved)
                .map(|(f, g)| (f.as_str(), g)),
        )
        .map_err(HardwareError::Conflict)
    }

    /// [`Hardware::attach`] for a function that is deployed whatever happens, after a daemon
    /// restart: its grants are reserved first, and stay reserved if its lines cannot be
    /// requested now, so that no other deploy takes its output in the meantime. A
    /// [`Hardware::detach`] ends the reservation.
    pub async fn adopt(&self, function: &str, grants: Grants) -> Result<Mount, HardwareError> {
        validate_function(function)?;
        let _serial = self.lifecycle.lock().await;
        let attached = self.attach_locked(function, grants.clone()).await;
        if attached.is_err() {
            self.shared
                .state()
                .reserved
                .insert(function.to_owned(), grants);
        }
        attached
    }

    /// Gives `function` its grants: requests its lines (outputs at their `initial` level;
    /// inputs shared with other functions are joined), starts its socket server if it is
    /// not running, and returns what to mount. Called again with the same grants it changes
    /// nothing; with other grants, lines no longer granted (or granted differently) are
    /// released (outputs at their safe level first) and new ones requested, and the server
    /// keeps running. On error, the lines this call requested are released again.
    pub async fn attach(&self, function: &str, grants: Grants) -> Result<Mount, HardwareError> {
        let _serial = self.lifecycle.lock().await;
        self.attach_locked(function, grants).await
    }

    async fn attach_locked(&self, function: &str, grants: Grants) -> Result<Mount, HardwareError> {
        self.check(function, &grants)?;
        let old = self.shared.grants(function);
        let running = self.server_running(function);
        if running && old.as_ref() == Some(&grants) {
            return Ok(self.mount(function));
        }
        let old = old.unwrap_or_default();
        for channel in old.pwm.difference(&grants.pwm) {
            self.shared.disable_pwm(function, *channel);
        }
        for (line, grant) in &old.gpio {
            if grants.gpio.get(line) != Some(grant) {
                self.shared.release(function, line, grant);
            }
        }
        let mut acquired: Vec<(&String, &LineGrant)> = Vec::new();
        for (line, grant) in &grants.gpio {
            if old.gpio.get(line) == Some(grant) {
                continue;
            }
            if let Err(e) = self.shared.acquire(function, line, grant).await {
                for (line, grant) in acquired {
                    self.shared.release(function, line, grant);
                }
                let mut kept = old.clone();
                kept.gpio
                    .retain(|line, grant| grants.gpio.get(line) == Some(grant));
                let mut state = self.shared.state();
                if kept.is_empty() && !running {
                    state.functions.remove(function);
                } else {
                    state.functions.insert(function.to_owned(), kept);
                }
                return Err(e);
            }
            acquired.push((line, grant));
        }
        {
            let mut state = self.shared.state();
            state.functions.insert(function.to_owned(), grants.clone());
            state.reserved.insert(function.to_owned(), grants);
        }
        if !running && let Err(e) = self.start_server(function) {
            self.detach_locked(function);
            return Err(e);
        }
        info!(function, backend = self.backend(), "hardware attached");
        Ok(self.mount(function))
    }

    /// The mount of a function attached with [`Hardware::attach`], `None` otherwise.
    pub fn mount_of(&self, function: &str) -> Option<Mount> {
        let attached = self.servers().contains_key(function);
        attached.then(|| self.mount(function))
    }

    /// Puts the function's outputs at their `safe` level and disables its PWM channels. Its
    /// lines stay requested and its socket stays up (for when its replicas start again).
    /// Call it when the function's replicas stop, crash or are scaled to zero.
    pub fn safe_state(&self, function: &str) {
        let state = self.shared.state();
        let Some(grants) = state.functions.get(function) else {
            return;
        };
        for (line, grant) in &grants.gpio {
            if grant.direction != Direction::Out {
                continue;
            }
            if let Some(held) = state.lines.get(line) {
                held.set_safe(function, line, grant);
            }
        }
        for channel in &grants.pwm {
            self.shared.disable_pwm(function, *channel);
        }
    }

    /// Takes the function's hardware away: safe state, lines released, socket server
    /// stopped (open connections and watch streams end), socket and its directory removed.
    /// Does nothing for a function that is not attached.
    pub async fn detach(&self, function: &str) {
        let _serial = self.lifecycle.lock().await;
        self.detach_locked(function);
    }

    /// `detach` for every function, when the daemon stops, except that the socket
    /// directories stay: containers that keep running hold them mounted, and the next start
    /// binds its sockets in them again.
    pub async fn shutdown(&self) {
        let _serial = self.lifecycle.lock().await;
        let mut functions: BTreeSet<String> = {
            let state = self.shared.state();
            state
                .functions
                .keys()
                .chain(state.reserved.keys())
                .cloned()
                .collect()
        };
        functions.extend(self.servers().keys().cloned());
        for function in functions {
            self.release_locked(&function, false);
        }
    }

    fn detach_locked(&self, function: &str) {
        self.release_locked(function, true);
    }

    fn release_locked(&self, function: &str, remove_dir: bool) {
        self.safe_state(function);
        let grants = {
            let mut state = self.shared.state();
            state.reserved.remove(function);
            state.functions.remove(function)
        };
        if let Some(grants) = grants {
            for (line, grant) in &grants.gpio {
                self.shared.release(function, line, grant);
            }
        }
        let server = self.servers().remove(function);
        if let Some(server) = server {
            server.task.abort();
            if let Err(e) = std::fs::remove_file(&server.socket)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(function, "cannot remove {}: {e}", server.socket.display());
            }
            if remove_dir {
                // Fails (and stays) if someone put other files there.
                let _ = std::fs::remove_dir(&server.dir);
            }
            info!(function, "hardware detached");
        }
    }

    pub(crate) fn servers(&self) -> MutexGuard<'_, HashMap<String, Server>> {
        self.servers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn server_running(&self, function: &str) -> bool {
        self.servers()
            .get(function)
            .is_some_and(|s| !s.task.is_finished())
    }

    fn mount(&self, function: &str) -> Mount {
        let host_path = self.socket_dir.join(function);
        Mount {
            socket: host_path.join(SOCKET_NAME),
            host_path,
            container_path: PathBuf::from(CONTAINER_DIR),
            read_only: true,
        }
    }

    /// Binds `<socket_dir>/<function>/hw.sock` (replacing a stale socket) and serves it.
    fn start_server(&self, function: &str) -> Result<(), HardwareError> {
        let Mount {
            host_path: dir,
            socket,
            ..
        } = self.mount(function);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(HardwareError::Invalid(format!(
                "the socket path {} is longer than a Unix socket path may be ({MAX_SOCKET_PATH} \
                 bytes): use a shorter socket_dir or function name",
                socket.display()
            )));
        }
        prepare_dir(&self.socket_dir, &dir)?;
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(format!("removing {}", socket.display()), e)),
        }
        let listener = UnixListener::bind(&socket)
            .map_err(|e| io_error(format!("binding {}", socket.display()), e))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| io_error(format!("chmod {}", socket.display()), e))?;
        let router = broker::router(Arc::clone(&self.shared), function);
        let task = tokio::spawn(broker::serve(listener, router));
        let previous = self
            .servers()
            .insert(function.to_owned(), Server { task, dir, socket });
        if let Some(previous) = previous {
            previous.task.abort();
        }
        Ok(())
    }
}

fn io_error(context: String, source: std::io::Error) -> HardwareError {
    HardwareError::Io { context, source }
}

/// Creates the socket directory, root-only (0700: no other user of the host reaches a
/// function's socket), and the function's directory in it (0755: it is the root of the
/// mount in the container, where a non-root user must be able to reach the socket).
fn prepare_dir(socket_dir: &Path, dir: &Path) -> Result<(), HardwareError> {
    std::fs::create_dir_all(socket_dir)
        .map_err(|e| io_error(format!("creating {}", socket_dir.display()), e))?;
    let meta = std::fs::metadata(socket_dir)
        .map_err(|e| io_error(format!("inspecting {}", socket_dir.display()), e))?;
    if meta.permissions().mode() & 0o1000 != 0 {
        return Err(HardwareError::Invalid(format!(
            "hardware.socket_dir {} is a shared directory (sticky bit, like /tmp): bramble \
             makes its socket directory root-only, so name a directory of its own",
            socket_dir.display()
        )));
    }
    // Also when an older version made it 0755.
    std::fs::set_permissions(socket_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io_error(format!("chmod {}", socket_dir.display()), e))?;
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(HardwareError::Invalid(format!(
                "{} exists and is not a directory",
                dir.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(dir)
            .map_err(|e| io_error(format!("creating {}", dir.display()), e))?,
        Err(e) => return Err(io_error(format!("inspecting {}", dir.display()), e)),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io_error(format!("chmod {}", dir.display()), e))
}

/// A function name that is safe as a directory name.
fn validate_function(function: &str) -> Result<(), HardwareError> {
    let ok = !function.is_empty()
        && function.len() <= 63
        && !function.starts_with('.')
        && function
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(HardwareError::InvalidFunction(format!(
            "function name {function:?} cannot name a hardware socket (letters, digits, '-', \
             '_', '.', at most 63)"
        )))
    }
}
