//! A private OCI registry (Debian's `docker-registry`, distribution 2.8) on `127.0.0.1`.
//!
//! [`Registry::start`] runs `docker-registry serve` with its own configuration, storage and log
//! in a temporary directory, on a free loopback port, optionally with htpasswd (bcrypt) basic
//! auth. Images are pushed with `skopeo` ([`Registry::push_oci_archive`],
//! [`Registry::push_oci_layout`] for multi-platform images); the registry's access
//! log tells how many requests it served ([`Registry::request_count`]), so tests can check that a
//! pull did (or did not) reach the registry.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::{http, procfs};

/// How long [`Registry::start`] waits for the registry to answer `GET /v2/`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines of the registry's log included in error messages.
const ERROR_LOG_LINES: usize = 30;

/// Query marker of the readiness probes; excluded from [`Registry::request_count`].
const PROBE_MARKER: &str = "bramble-testkit-probe";

/// Path prefix of the log-flush requests of [`Registry::request_count`]; excluded from the count.
const SYNC_PATH: &str = "/bramble-testkit-sync/";

/// How long [`Registry::request_count`] waits for the access-log line of its marker request.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`Registry::start`] picks a new port when another process took the chosen one.
const PORT_ATTEMPTS: usize = 5;

/// A `docker-registry` private to one test, listening on `127.0.0.1`.
#[derive(Debug)]
pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    log: PathBuf,
    authfile: PathBuf,
    credentials: Option<(String, String)>,
    child: Option<Child>,
    syncs: AtomicUsize,
}

/// Why one start attempt failed.
enum Attempt {
    /// Another process bound the port between our probe and the registry's bind.
    PortTaken,
    Failed(io::Error),
}

impl Registry {
    /// Starts a registry on a free port of `127.0.0.1` and waits until `GET /v2/` answers (200,
    /// or 401 with `credentials`). With `credentials` (`user`, `password`) every request needs
    /// basic auth.
    pub fn start(credentials: Option<(&str, &str)>) -> io::Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("breg-")
            .tempdir_in("/tmp")
            .map_err(|e| procfs::context("creating a temporary directory under /tmp", &e))?;
        let authfile = dir.path().join("empty-auth.json");
        fs::write(&authfile, "{\"auths\":{}}\n")
            .map_err(|e| procfs::context(format!("writing {}", authfile.display()), &e))?;
        let mut registry = Registry {
            log: dir.path().join("registry.log"),
            authfile,
            dir,
            port: 0,
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
            child: None,
            syncs: AtomicUsize::new(0),
        };
        let htpasswd = match credentials {
            Some((user, password)) => Some(registry.write_htpasswd(user, password)?),
            None => None,
        };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            registry.port = http::free_loopback_port()?;
            match registry.try_start(htpasswd.as_deref()) {
                Ok(()) => return Ok(registry),
                Err(Attempt::PortTaken) => last = registry.log_tail(ERROR_LOG_LINES),
                Err(Attempt::Failed(e)) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "docker-registry: ports kept being taken ({PORT_ATTEMPTS} attempts); last log:\n{last}"
            ),
        ))
    }

    fn write_htpasswd(&self, user: &str, password: &str) -> io::Result<PathBuf> {
        let path = self.dir.path().join("htpasswd");
        let binary = crate::harness::find_executable("htpasswd").ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "`htpasswd` not found (apt install apache2-utils)",
            )
        })?;
        // -B bcrypt (the only hash distribution accepts), -b password on the command line,
        // -n print to stdout.
        let output = Command::new(&binary)
            .args(["-B", "-b", "-n", user, password])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| procfs::context(format!("running {}", binary.display()), &e))?;
        if !output.status.success() {
            return Err(io::Error::other(format!(
                "htpasswd -Bbn failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        fs::write(&path, &output.stdout)
            .map_err(|e| procfs::context(format!("writing {}", path.display()), &e))?;
        Ok(path)
    }

    fn config(&self, htpasswd: Option<&Path>) -> String {
        let mut secret = [0u8; 16];
        let random = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut secret));
        let secret: String = match random {
            Ok(()) => secret.iter().map(|b| format!("{b:02x}")).collect(),
            Err(_) => format!("bramble-testkit-{}-{}", std::process::id(), self.port),
        };
        let mut config = format!(
            "# written by bramble-testkit\n\
             version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {addr}\n  secret: {secret}\n",
            data = yaml_string(&self.dir.path().join("data").to_string_lossy()),
            addr = yaml_string(&self.host()),
        );
        if let Some(htpasswd) = htpasswd {
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: bramble-testkit\n    path: {}\n",
                yaml_string(&htpasswd.to_string_lossy())
            ));
        }
        config
    }

    fn try_start(&mut self, htpasswd: Option<&Path>) -> Result<(), Attempt> {
        let config_path = self.dir.path().join("config.yml");
        fs::write(&config_path, self.config(htpasswd)).map_err(|e| {
            Attempt::Failed(procfs::context(
                format!("writing {}", config_path.display()),
                &e,
            ))
        })?;
        let log = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&self.log)
            .map_err(|e| {
                Attempt::Failed(procfs::context(
                    format!("creating {}", self.log.display()),
                    &e,
                ))
            })?;
        let stderr = log
            .try_clone()
            .map_err(|e| Attempt::Failed(procfs::context("duplicating the log file", &e)))?;
        let binary = crate::harness::find_executable("docker-registry")
            .unwrap_or_else(|| PathBuf::from("docker-registry"));
        let started = Instant::now();
        let child = Command::new(&binary)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                Attempt::Failed(procfs::context(
                    format!("spawning {}", binary.display()),
                    &e,
                ))
            })?;
        self.child = Some(child);

        let expected = if htpasswd.is_some() { 401 } else { 200 };
        let listening = format!("listening on {}", self.host());
        let mut last_probe = String::from("no answer yet");
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = fs::read_to_string(&self.log).unwrap_or_default();
                if log.contains("address already in use") {
                    return Err(Attempt::PortTaken);
                }
                return Err(Attempt::Failed(io::Error::other(format!(
                    "docker-registry exited during startup ({status}); log {}:\n{}",
                    self.log.display(),
                    self.log_tail(ERROR_LOG_LINES)
                ))));
            }
            // The log line proves that *our* process bound the port, the probe that it serves.
            if fs::read_to_string(&self.log).is_ok_and(|l| l.contains(&listening)) {
                match http::get_status(self.addr(), &format!("/v2/?{PROBE_MARKER}")) {
                    Ok(status) if status == expected => return Ok(()),
                    Ok(status) => {
                        last_probe = format!("GET /v2/ answered {status}, expected {expected}");
                    }
                    Err(e) => last_probe = format!("GET /v2/: {e}"),
                }
            }
            if started.elapsed() >= READY_TIMEOUT {
                self.stop();
                return Err(Attempt::Failed(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "docker-registry on {} not ready within {}s ({last_probe}); log {}:\n{}",
                        self.host(),
                        READY_TIMEOUT.as_secs(),
                        self.log.display(),
                        self.log_tail(ERROR_LOG_LINES)
                    ),
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `127.0.0.1:PORT`, the registry part of image references.
    pub fn host(&self) -> String {
        self.addr().to_string()
    }

    /// The port the registry listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The credentials the registry requires, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The temporary directory holding config, storage and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's log file (application log and access log).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the registry's log.
    pub fn log_tail(&self, lines: usize) -> String {
        procfs::file_tail(&self.log, lines)
    }

    /// Pushes an OCI archive (a tar of an OCI image layout holding one image) with
    /// `skopeo copy` and returns the pushed reference `127.0.0.1:PORT/<repo_and_tag>`.
    ///
    /// Uses the registry's credentials, if any; credentials of the machine (docker config,
    /// containers auth.json) are ignored.
    pub fn push_oci_archive(&self, archive: &Path, repo_and_tag: &str) -> io::Result<String> {
        self.skopeo_push("oci-archive", archive, repo_and_tag, false)
    }

    /// Pushes the image of an OCI image-layout directory whose `index.json` names one image,
    /// which may itself be an image index: `skopeo copy --all` pushes the index with every
    /// manifest it lists (a multi-platform image, see [`crate::images::multi_platform_layout`]).
    /// Returns the pushed reference `127.0.0.1:PORT/<repo_and_tag>`.
    pub fn push_oci_layout(&self, layout: &Path, repo_and_tag: &str) -> io::Result<String> {
        self.skopeo_push("oci", layout, repo_and_tag, true)
    }

    fn skopeo_push(
        &self,
        transport: &str,
        source: &Path,
        repo_and_tag: &str,
        all: bool,
    ) -> io::Result<String> {
        let source_text = source.to_string_lossy();
        if source_text.contains(':') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("skopeo cannot take an {transport} path containing ':' ({source_text})"),
            ));
        }
        let source = format!("{transport}:{source_text}");
        let reference = format!("{}/{repo_and_tag}", self.host());
        let binary =
            crate::harness::find_executable("skopeo").unwrap_or_else(|| PathBuf::from("skopeo"));
        let mut command = Command::new(&binary);
        // --insecure-policy: do not depend on /etc/containers/policy.json.
        command.args(["--insecure-policy", "copy"]);
        if all {
            command.arg("--all");
        }
        command
            .args(["--dest-tls-verify=false", "--dest-authfile"])
            .arg(&self.authfile);
        if let Some((user, password)) = self.credentials() {
            command
                .arg("--dest-creds")
                .arg(format!("{user}:{password}"));
        }
        command
            .arg(&source)
            .arg(format!("docker://{reference}"))
            .env("PATH", procfs::daemon_path())
            .stdin(Stdio::null());
        let output = command
            .output()
            .map_err(|e| procfs::context(format!("running {}", binary.display()), &e))?;
        if output.status.success() {
            Ok(reference)
        } else {
            Err(io::Error::other(format!(
                "skopeo copy {source} docker://{reference} failed ({}):\n{}\nregistry log:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                self.log_tail(ERROR_LOG_LINES)
            )))
        }
    }

    /// The number of HTTP requests the registry has served so far (any path, any status),
    /// counted from its access log. The testkit's own readiness probes are not counted.
    ///
    /// distribution writes the access-log line of a request right after its handler, which can
    /// be a moment after the client has read the full response. While the registry runs, this
    /// therefore first sends a marker request and waits for its line, so every request that was
    /// answered before the call is counted. When that marker request fails or its line does not
    /// appear within [`FLUSH_TIMEOUT`], the count could be stale: that is an error, not a
    /// number.
    pub fn request_count(&self) -> io::Result<usize> {
        if self.child.is_some() {
            self.flush_access_log()?;
        }
        let log = fs::read_to_string(&self.log)
            .map_err(|e| procfs::context(format!("reading {}", self.log.display()), &e))?;
        Ok(log.lines().filter(|l| is_counted_access_line(l)).count())
    }

    fn flush_access_log(&self) -> io::Result<()> {
        let n = self.syncs.fetch_add(1, Ordering::Relaxed);
        let path = format!("{SYNC_PATH}{}-{n}", std::process::id());
        http::get_status(self.addr(), &path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "counting registry requests: the log-flush request GET {path} to {} failed: {e}; log {}:\n{}",
                    self.host(),
                    self.log.display(),
                    self.log_tail(ERROR_LOG_LINES)
                ),
            )
        })?;
        let needle = format!("\"GET {path} ");
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        loop {
            if fs::read_to_string(&self.log).is_ok_and(|l| l.contains(&needle)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "counting registry requests: the access-log line of GET {path} did not appear within {} ms, so the count could be stale; log {}:\n{}",
                        FLUSH_TIMEOUT.as_millis(),
                        self.log.display(),
                        self.log_tail(ERROR_LOG_LINES)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills the registry (SIGKILL) and waits for it; the port then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        // The TempDir field removes the directory.
    }
}

/// True for a line of the combined access log (`host ident user [date] "request" ...`) that is
/// not one of the testkit's own requests.
fn is_counted_access_line(line: &str) -> bool {
    let is_access =
        !line.starts_with("time=") && line.split(' ').nth(3).is_some_and(|t| t.starts_with('['));
    is_access && !line.contains(PROBE_MARKER) && !line.contains(SYNC_PATH)
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn yaml_string(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// Writes `dir/config.json`, a docker client config (`{"auths": {host: {"auth": ...}}}`) with
/// the credentials for `registry_host`, readable only by its owner (mode 0600). Returns its
/// path. Tools that read docker configs (skopeo `--authfile`, `DOCKER_CONFIG`) accept it.
pub fn write_docker_config(
    dir: &Path,
    registry_host: &str,
    user: &str,
    password: &str,
) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = serde_json::json!({ "auths": { registry_host: { "auth": auth } } });
    let path = dir.join("config.json");
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| procfs::context(format!("creating {}", path.display()), &e))?;
    // `mode` applies only when the file is created.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| procfs::context(format!("chmod 0600 {}", path.display()), &e))?;
    file.write_all(format!("{config:#}\n").as_bytes())
        .map_err(|e| procfs::context(format!("writing {}", path.display()), &e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_access_log_lines() {
        assert!(is_counted_access_line(
            r#"127.0.0.1 - - [25/Nov/2026:10:09:58 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1""#
        ));
        assert!(!is_counted_access_line(
            r#"127.0.0.1 - - [25/Nov/2026:10:09:58 +0000] "GET /v2/?bramble-testkit-probe HTTP/1.1" 200 2 "" "x""#
        ));
        assert!(!is_counted_access_line(
            r#"127.0.0.1 - - [25/Nov/2026:10:09:58 +0000] "GET /bramble-testkit-sync/1-0 HTTP/1.1" 404 2 "" "x""#
        ));
        assert!(!is_counted_access_line(
            r#"time="2026-11-25T10:09:58Z" level=info msg="response completed" http.request.uri=/v2/"#
        ));
    }

    /// A `Registry` whose process runs but does not serve: its port refuses connections.
    fn unreachable_registry() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("registry.log");
        // Served requests before the flush: a stale count would be 1.
        fs::write(
            &log,
            "127.0.0.1 - - [25/Nov/2026:10:09:58 +0000] \"GET /v2/ HTTP/1.1\" 200 2 \"\" \"x\"\n",
        )
        .unwrap();
        let child = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Registry {
            authfile: dir.path().join("empty-auth.json"),
            log,
            dir,
            port: http::free_loopback_port().unwrap(),
            credentials: None,
            child: Some(child),
            syncs: AtomicUsize::new(0),
        }
    }

    #[test]
    fn request_count_is_an_error_when_the_flush_fails() {
        let registry = unreachable_registry();
        let err = registry.request_count().unwrap_err().to_string();
        assert!(
            err.contains("log-flush request") && err.contains(&registry.host()),
            "{err}"
        );
    }

    #[test]
    fn request_count_of_a_stopped_registry_reads_the_log() {
        let mut registry = unreachable_registry();
        registry.stop();
        assert_eq!(registry.request_count().unwrap(), 1);
    }

    #[test]
    fn docker_config_is_private_and_encodes_credentials() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = write_docker_config(dir.path(), "127.0.0.1:5000", "user", "pass").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let value: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(value["auths"]["127.0.0.1:5000"]["auth"], "dXNlcjpwYXNz");
    }
}
