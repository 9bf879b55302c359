//! Running CNI plugins: locating them, rendering netconf, executing, parsing results.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::{NetworkError, parse_cidr};

/// CNI versions bramble can speak, best first. The result formats of both parse alike.
pub(super) const CNI_VERSIONS: [&str; 2] = ["1.0.0", "0.4.0"];

/// The plugins bramble runs (`host-local` is run by `bridge`, through `CNI_PATH`).
pub(super) const PLUGIN_NAMES: [&str; 4] = ["bridge", "host-local", "loopback", "firewall"];

/// The longest plugin output kept in an error message.
const MAX_OUTPUT_IN_ERROR: usize = 2000;

/// Where each plugin executable is.
#[derive(Clone, Debug)]
pub(super) struct Plugins {
    pub(super) bridge: PathBuf,
    pub(super) host_local: PathBuf,
    pub(super) loopback: PathBuf,
    pub(super) firewall: PathBuf,
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl Plugins {
    /// Finds every plugin in the first directory of `dirs` that has it.
    pub(super) fn locate(dirs: &[PathBuf]) -> Result<Plugins, NetworkError> {
        let find = |name: &str| dirs.iter().map(|d| d.join(name)).find(|p| is_executable(p));
        let found: Vec<Option<PathBuf>> = PLUGIN_NAMES.iter().map(|n| find(n)).collect();
        match found.as_slice() {
            [
                Some(bridge),
                Some(host_local),
                Some(loopback),
                Some(firewall),
            ] => Ok(Plugins {
                bridge: bridge.clone(),
                host_local: host_local.clone(),
                loopback: loopback.clone(),
                firewall: firewall.clone(),
            }),
            _ => Err(NetworkError::MissingPlugins {
                missing: PLUGIN_NAMES
                    .iter()
                    .zip(&found)
                    .filter(|(_, p)| p.is_none())
                    .map(|(n, _)| (*n).to_owned())
                    .collect(),
                searched: dirs.to_vec(),
            }),
        }
    }

    /// The executable of a plugin type, if bramble runs that type.
    pub(super) fn path_of(&self, kind: &str) -> Option<&Path> {
        match kind {
            "bridge" => Some(&self.bridge),
            "host-local" => Some(&self.host_local),
            "loopback" => Some(&self.loopback),
            "firewall" => Some(&self.firewall),
            _ => None,
        }
    }
}

/// `PATH` for plugin processes: the daemon's, plus the usual sbin/bin directories it lacks.
pub(super) fn plugin_path_env(current: Option<&str>) -> String {
    let mut dirs: Vec<&str> = current
        .unwrap_or("")
        .split(':')
        .filter(|d| !d.is_empty())
        .collect();
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs.join(":")
}

/// A CNI operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CniCommand {
    Add,
    Del,
    Version,
}

impl CniCommand {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Version => "VERSION",
        }
    }
}

/// The environment of one plugin call. Empty strings are not passed.
pub(super) struct Invocation<'a> {
    pub(super) command: CniCommand,
    pub(super) container_id: &'a str,
    pub(super) netns: &'a Path,
    pub(super) ifname: &'a str,
    pub(super) cni_path: &'a str,
    pub(super) path_env: &'a str,
    pub(super) timeout: Duration,
}

/// What goes into the chain's network configuration list.
pub(super) struct ChainParams<'a> {
    pub(super) version: &'a str,
    pub(super) name: &'a str,
    pub(super) bridge: &'a str,
    pub(super) subnet: &'a str,
    pub(super) gateway: Ipv4Addr,
    pub(super) ipam_data_dir: &'a str,
}

/// The network configuration list: `bridge` (host-local IPAM) → `firewall`.
pub(super) fn render_conflist(p: &ChainParams<'_>) -> Value {
    json!({
        "cniVersion": p.version,
        "name": p.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": p.bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": p.subnet, "gateway": p.gateway.to_string() }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": p.ipam_data_dir,
                },
            },
            { "type": "firewall", "backend": "iptables" },
        ],
    })
}

/// The one-plugin list that brings `lo` up.
pub(super) fn loopback_conflist(version: &str) -> Value {
    json!({ "cniVersion": version, "name": "cni-loopback", "plugins": [{ "type": "loopback" }] })
}

/// One plugin of a list, ready to run.
pub(super) struct ChainStep<'a> {
    pub(super) kind: &'a str,
    pub(super) path: &'a Path,
    name: &'a str,
    version: &'a str,
    conf: &'a serde_json::Map<String, Value>,
}

impl ChainStep<'_> {
    /// The plugin's stdin: its own config plus the list's `name` and `cniVersion` and, when
    /// given, `prevResult` (as libcni builds it).
    pub(super) fn stdin(&self, prev_result: Option<&Value>) -> Result<Vec<u8>, NetworkError> {
        let mut conf = self.conf.clone();
        conf.insert("name".to_owned(), Value::from(self.name));
        conf.insert("cniVersion".to_owned(), Value::from(self.version));
        if let Some(prev) = prev_result {
            conf.insert("prevResult".to_owned(), prev.clone());
        }
        serde_json::to_vec(&Value::Object(conf))
            .map_err(|e| NetworkError::Internal(format!("could not serialise netconf: {e}")))
    }
}

/// Checks a network configuration list and pairs each plugin with its executable.
pub(super) fn chain_steps<'a>(
    conflist: &'a Value,
    plugins: &'a Plugins,
) -> Result<Vec<ChainStep<'a>>, NetworkError> {
    let bad = |reason: String| NetworkError::BadNetconf { reason };
    let name = conflist
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no name".to_owned()))?;
    let version = conflist
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no cniVersion".to_owned()))?;
    let list = conflist
        .get("plugins")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no plugins list".to_owned()))?;
    list.iter()
        .map(|plugin| {
            let conf = plugin
                .as_object()
                .ok_or_else(|| bad("a plugin is not an object".to_owned()))?;
            let kind = conf
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("a plugin has no type".to_owned()))?;
            let path = plugins
                .path_of(kind)
                .ok_or_else(|| bad(format!("plugin type {kind:?} is not one bramble runs")))?;
            Ok(ChainStep {
                kind,
                path,
                name,
                version,
                conf,
            })
        })
        .collect()
}

/// A CNI error as plugins print it on stdout.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub(super) struct CniErrorJson {
    pub(super) code: u32,
    #[serde(default)]
    pub(super) msg: String,
    #[serde(default)]
    pub(super) details: String,
}

pub(super) fn parse_error(stdout: &[u8]) -> Option<CniErrorJson> {
    serde_json::from_slice(stdout).ok()
}

fn truncated(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(MAX_OUTPUT_IN_ERROR) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Runs one plugin: environment per the CNI spec, `stdin` on standard input, killed after
/// `inv.timeout`. Returns the parsed stdout for ADD and VERSION, `None` for DEL.
pub(super) async fn exec(
    path: &Path,
    kind: &str,
    inv: &Invocation<'_>,
    stdin: &[u8],
) -> Result<Option<Value>, NetworkError> {
    let command = inv.command.as_str();
    let mut cmd = tokio::process::Command::new(path);
    cmd.env("CNI_COMMAND", command)
        .env("PATH", inv.path_env)
        .env_remove("CNI_ARGS")
        .env_remove("CNI_CONTAINERID")
        .env_remove("CNI_NETNS")
        .env_remove("CNI_IFNAME")
        .env_remove("CNI_PATH");
    for (key, value) in [
        ("CNI_CONTAINERID", inv.container_id),
        ("CNI_IFNAME", inv.ifname),
        ("CNI_PATH", inv.cni_path),
    ] {
        if !value.is_empty() {
            cmd.env(key, value);
        }
    }
    if !inv.netns.as_os_str().is_empty() {
        cmd.env("CNI_NETNS", inv.netns);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);

    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| NetworkError::PluginExec {
        path: path.to_path_buf(),
        source,
    })?;
    let input = child.stdin.take();
    let run = async move {
        let write = async move {
            match input {
                Some(mut pipe) => pipe.write_all(stdin).await, // dropped (closed) on return
                None => Ok(()),
            }
        };
        tokio::join!(write, child.wait_with_output())
    };
    // On timeout `run` is dropped with the child in it: kill_on_drop kills the plugin.
    let (written, output) =
        tokio::time::timeout(inv.timeout, run)
            .await
            .map_err(|_| NetworkError::PluginTimeout {
                plugin: kind.to_owned(),
                command: command.to_owned(),
                timeout: inv.timeout,
            })?;
    let output = output.map_err(|source| NetworkError::PluginExec {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::debug!(
        plugin = kind,
        command,
        container = inv.container_id,
        elapsed_ms = started.elapsed().as_millis() as u64,
        status = %output.status,
        "CNI plugin ran"
    );
    if !output.stderr.is_empty() {
        tracing::debug!(
            plugin = kind,
            command,
            "plugin stderr: {}",
            truncated(&output.stderr)
        );
    }
    if !output.status.success() {
        return Err(match parse_error(&output.stdout) {
            Some(e) => NetworkError::Plugin {
                plugin: kind.to_owned(),
                command: command.to_owned(),
                code: e.code,
                msg: e.msg,
                details: e.details,
            },
            None => {
                let mut all = output.stdout.clone();
                all.extend_from_slice(&output.stderr);
                NetworkError::PluginExit {
                    plugin: kind.to_owned(),
                    command: command.to_owned(),
                    status: output.status.to_string(),
                    output: truncated(&all),
                }
            }
        });
    }
    // A plugin that succeeded without reading its config is broken — except for VERSION,
    // which plugins may answer without reading stdin (the write then races their exit).
    match written {
        Err(e)
            if e.kind() == std::io::ErrorKind::BrokenPipe && inv.command == CniCommand::Version => {
        }
        other => other.map_err(|source| NetworkError::PluginExec {
            path: path.to_path_buf(),
            source,
        })?,
    }
    if inv.command == CniCommand::Del || output.stdout.trim_ascii().is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&output.stdout)
        .map(Some)
        .map_err(|source| NetworkError::PluginOutput {
            plugin: kind.to_owned(),
            command: command.to_owned(),
            source,
        })
}

#[derive(Deserialize)]
struct VersionInfo {
    #[serde(rename = "supportedVersions", default)]
    supported_versions: Vec<String>,
}

/// Asks every plugin which CNI versions it supports and picks the best one of
/// [`CNI_VERSIONS`] they all support.
pub(super) async fn negotiate_version(
    plugins: &Plugins,
    path_env: &str,
    timeout: Duration,
) -> Result<&'static str, NetworkError> {
    let stdin = serde_json::to_vec(&json!({ "cniVersion": CNI_VERSIONS[0] }))
        .map_err(|e| NetworkError::Internal(format!("could not serialise VERSION request: {e}")))?;
    let mut reports = Vec::new();
    for kind in PLUGIN_NAMES {
        let Some(path) = plugins.path_of(kind) else {
            continue;
        };
        let inv = Invocation {
            command: CniCommand::Version,
            container_id: "",
            netns: Path::new(""),
            ifname: "",
            cni_path: "",
            path_env,
            timeout,
        };
        let out = exec(path, kind, &inv, &stdin).await?;
        let info: VersionInfo = match out {
            Some(v) => {
                VersionInfo::deserialize(&v).map_err(|source| NetworkError::PluginOutput {
                    plugin: kind.to_owned(),
                    command: "VERSION".to_owned(),
                    source,
                })?
            }
            None => VersionInfo {
                supported_versions: Vec::new(),
            },
        };
        reports.push((kind, info.supported_versions));
    }
    pick_version(&reports)
}

fn pick_version(reports: &[(&str, Vec<String>)]) -> Result<&'static str, NetworkError> {
    CNI_VERSIONS
        .iter()
        .copied()
        .find(|v| {
            reports
                .iter()
                .all(|(_, supported)| supported.iter().any(|s| s == v))
        })
        .ok_or_else(|| NetworkError::UnsupportedPlugins {
            wanted: CNI_VERSIONS.join(", "),
            found: reports
                .iter()
                .map(|(kind, supported)| format!("{kind} supports [{}]", supported.join(", ")))
                .collect::<Vec<_>>()
                .join("; "),
        })
}

/// The parts of a CNI result (0.4.0 or 1.0.0) bramble uses.
#[derive(Debug, Deserialize)]
pub(super) struct CniResult {
    #[serde(default)]
    pub(super) interfaces: Vec<Interface>,
    #[serde(default)]
    pub(super) ips: Vec<IpConfig>,
    #[serde(default)]
    pub(super) routes: Vec<Route>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Interface {
    pub(super) name: String,
    #[serde(default)]
    pub(super) sandbox: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct IpConfig {
    #[serde(default)]
    pub(super) interface: Option<usize>,
    pub(super) address: String,
    #[serde(default)]
    pub(super) gateway: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Route {
    pub(super) dst: String,
    #[serde(default)]
    pub(super) gw: Option<String>,
}

/// The address bramble reports for an attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Primary {
    pub(super) ip: Ipv4Addr,
    pub(super) prefix_len: u8,
    pub(super) gateway: Option<Ipv4Addr>,
}

/// The IPv4 address of `ifname` inside the sandbox (or, failing that, the first IPv4 address),
/// with its gateway (the IP's own, or the default route's).
/// The host-side interfaces of a result: those outside the sandbox, other than the bridge.
pub(super) fn host_ports(result: &Value, bridge: &str) -> Result<Vec<String>, NetworkError> {
    let parsed = CniResult::deserialize(result).map_err(|e| NetworkError::BadResult {
        reason: format!("does not parse: {e}"),
    })?;
    Ok(parsed
        .interfaces
        .into_iter()
        .filter(|i| i.sandbox.is_empty() && i.name != bridge)
        .map(|i| i.name)
        .collect())
}

pub(super) fn primary_ipv4(result: &Value, ifname: &str) -> Result<Primary, NetworkError> {
    let bad = |reason: String| NetworkError::BadResult { reason };
    let parsed = CniResult::deserialize(result).map_err(|e| bad(format!("does not parse: {e}")))?;
    let sandbox_index = parsed
        .interfaces
        .iter()
        .position(|i| i.name == ifname && !i.sandbox.is_empty());
    let v4: Vec<(&IpConfig, Ipv4Addr, u8)> = parsed
        .ips
        .iter()
        .filter_map(|c| parse_cidr(&c.address).map(|(ip, len)| (c, ip, len)))
        .collect();
    let chosen = v4
        .iter()
        .find(|(c, _, _)| sandbox_index.is_some() && c.interface == sandbox_index)
        .or_else(|| v4.first())
        .ok_or_else(|| {
            bad(format!(
                "no IPv4 address for {ifname} in {} ip entries",
                parsed.ips.len()
            ))
        })?;
    let (config, ip, prefix_len) = *chosen;
    let parse_gw = |text: &str| text.parse::<Ipv4Addr>().ok();
    let gateway = config.gateway.as_deref().and_then(parse_gw).or_else(|| {
        parsed
            .routes
            .iter()
            .filter(|r| r.dst == "0.0.0.0/0")
            .find_map(|r| r.gw.as_deref().and_then(parse_gw))
    });
    Ok(Primary {
        ip,
        prefix_len,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ChainParams<'static> {
        ChainParams {
            version: "1.0.0",
            name: "bramble",
            bridge: "bramble0",
            subnet: "10.72.0.0/16",
            gateway: Ipv4Addr::new(10, 72, 0, 1),
            ipam_data_dir: "/run/bramble/net/ipam",
        }
    }

    fn fake_plugins() -> Plugins {
        Plugins {
            bridge: "/p/bridge".into(),
            host_local: "/p/host-local".into(),
            loopback: "/p/loopback".into(),
            firewall: "/p/firewall".into(),
        }
    }

    #[test]
    fn conflist_golden() {
        let golden: Value = serde_json::from_str(
            r#"{
              "cniVersion": "1.0.0",
              "name": "bramble",
              "plugins": [
                {
                  "type": "bridge",
                  "bridge": "bramble0",
                  "isGateway": true,
                  "ipMasq": true,
                  "hairpinMode": true,
                  "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.72.0.0/16", "gateway": "10.72.0.1"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": "/run/bramble/net/ipam"
                  }
                },
                {"type": "firewall", "backend": "iptables"}
              ]
            }"#,
        )
        .unwrap();
        assert_eq!(render_conflist(&params()), golden);
    }

    #[test]
    fn plugin_stdin_injects_name_version_and_prev_result() {
        let conflist = render_conflist(&params());
        let plugins = fake_plugins();
        let steps = chain_steps(&conflist, &plugins).unwrap();
        assert_eq!(
            steps.iter().map(|s| s.kind).collect::<Vec<_>>(),
            ["bridge", "firewall"]
        );
        assert_eq!(steps[0].path, Path::new("/p/bridge"));

        let first: Value = serde_json::from_slice(&steps[0].stdin(None).unwrap()).unwrap();
        assert_eq!(first["name"], "bramble");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert_eq!(first["type"], "bridge");
        assert!(first.get("prevResult").is_none());

        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.72.0.2/16"}]});
        let second: Value = serde_json::from_slice(&steps[1].stdin(Some(&prev)).unwrap()).unwrap();
        assert_eq!(
            second,
            json!({
                "type": "firewall",
                "backend": "iptables",
                "name": "bramble",
                "cniVersion": "1.0.0",
                "prevResult": prev,
            })
        );
    }

    #[test]
    fn loopback_list_runs_the_loopback_plugin() {
        let list = loopback_conflist("1.0.0");
        let plugins = fake_plugins();
        let steps = chain_steps(&list, &plugins).unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].path, Path::new("/p/loopback"));
    }

    #[test]
    fn chain_steps_rejects_unusable_lists() {
        let plugins = fake_plugins();
        for bad in [
            json!({}),
            json!({"name": "x", "cniVersion": "1.0.0"}),
            json!({"name": "x", "cniVersion": "1.0.0", "plugins": [{"type": "portmap"}]}),
            json!({"name": "x", "cniVersion": "1.0.0", "plugins": [42]}),
            json!({"name": "x", "plugins": []}),
        ] {
            assert!(
                matches!(
                    chain_steps(&bad, &plugins),
                    Err(NetworkError::BadNetconf { .. })
                ),
                "{bad}"
            );
        }
    }

    const RESULT_1_0_0: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "bramble0", "mac": "aa:bb:cc:dd:ee:01"},
            {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:02"},
            {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/bramble/net/netns/fn1"}
        ],
        "ips": [
            {"interface": 2, "address": "10.72.0.7/16", "gateway": "10.72.0.1"},
            {"interface": 2, "address": "fd00::7/64", "gateway": "fd00::1"}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    }"#;

    #[test]
    fn parses_1_0_0_result() {
        let result: Value = serde_json::from_str(RESULT_1_0_0).unwrap();
        let parsed = CniResult::deserialize(&result).unwrap();
        assert_eq!(parsed.interfaces.len(), 3);
        assert_eq!(parsed.interfaces[2].sandbox, "/run/bramble/net/netns/fn1");
        assert_eq!(parsed.ips.len(), 2);
        assert_eq!(parsed.routes[0].dst, "0.0.0.0/0");
        assert_eq!(
            primary_ipv4(&result, "eth0").unwrap(),
            Primary {
                ip: Ipv4Addr::new(10, 72, 0, 7),
                prefix_len: 16,
                gateway: Some(Ipv4Addr::new(10, 72, 0, 1))
            }
        );
    }

    #[test]
    fn parses_0_4_0_result_and_route_gateway() {
        let result = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"version": "4", "interface": 0, "address": "192.168.5.9/24"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "192.168.5.1"}]
        });
        assert_eq!(
            primary_ipv4(&result, "eth0").unwrap(),
            Primary {
                ip: Ipv4Addr::new(192, 168, 5, 9),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(192, 168, 5, 1))
            }
        );
    }

    #[test]
    fn result_without_ipv4_is_an_error() {
        for result in [
            json!({"cniVersion": "1.0.0", "ips": [{"address": "fd00::2/64"}]}),
            json!({"cniVersion": "1.0.0"}),
            json!({"ips": "nope"}),
            json!([1, 2]),
        ] {
            assert!(
                matches!(
                    primary_ipv4(&result, "eth0"),
                    Err(NetworkError::BadResult { .. })
                ),
                "{result}"
            );
        }
    }

    #[test]
    fn parses_error_json() {
        let e = parse_error(br#"{"cniVersion":"1.0.0","code":11,"msg":"failed to allocate","details":"range full"}"#)
            .unwrap();
        assert_eq!(
            e,
            CniErrorJson {
                code: 11,
                msg: "failed to allocate".into(),
                details: "range full".into()
            }
        );
        let e = parse_error(br#"{"code":7,"msg":"bad"}"#).unwrap();
        assert_eq!(e.details, "");
        assert!(parse_error(b"panic: runtime error").is_none());
        assert!(parse_error(b"").is_none());
    }

    #[test]
    fn plugin_error_message() {
        let e = NetworkError::Plugin {
            plugin: "bridge".into(),
            command: "ADD".into(),
            code: 11,
            msg: "failed to allocate".into(),
            details: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "CNI plugin bridge ADD failed (code 11): failed to allocate"
        );
    }

    #[test]
    fn picks_highest_common_version() {
        let all = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let reports = vec![
            ("bridge", all(&["0.3.1", "0.4.0", "1.0.0"])),
            ("firewall", all(&["0.4.0", "1.0.0"])),
        ];
        assert_eq!(pick_version(&reports).unwrap(), "1.0.0");
        let old = vec![
            ("bridge", all(&["0.3.1", "0.4.0"])),
            ("firewall", all(&["0.4.0", "1.0.0"])),
        ];
        assert_eq!(pick_version(&old).unwrap(), "0.4.0");
        let none = vec![("bridge", all(&["0.3.1"]))];
        let e = pick_version(&none).unwrap_err();
        assert!(e.to_string().contains("bridge supports [0.3.1]"), "{e}");
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn inv(command: CniCommand, timeout: Duration) -> Invocation<'static> {
        Invocation {
            command,
            container_id: "c1",
            netns: Path::new("/nonexistent/netns"),
            ifname: "eth0",
            cni_path: "/nonexistent",
            path_env: "/usr/bin:/bin",
            timeout,
        }
    }

    #[tokio::test]
    async fn exec_passes_env_and_stdin_and_parses_stdout() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(
            dir.path(),
            "echo",
            r#"in=$(cat)
printf '{"cmd":"%s","id":"%s","netns":"%s","if":"%s","path":"%s","args":"%s","in":%s}' \
  "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_PATH" "${CNI_ARGS:-unset}" "$in""#,
        );
        let out = exec(
            &path,
            "echo",
            &inv(CniCommand::Add, Duration::from_secs(10)),
            br#"{"a":1}"#,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            out,
            json!({"cmd": "ADD", "id": "c1", "netns": "/nonexistent/netns", "if": "eth0",
                   "path": "/nonexistent", "args": "unset", "in": {"a": 1}})
        );
        // DEL output is not parsed.
        assert!(
            exec(
                &path,
                "echo",
                &inv(CniCommand::Del, Duration::from_secs(10)),
                b"{}"
            )
            .await
            .unwrap()
            .is_none()
        );
    }

    #[tokio::test]
    async fn exec_reports_cni_errors_crashes_and_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let failing = script(
            dir.path(),
            "failing",
            r#"cat >/dev/null; printf '{"cniVersion":"1.0.0","code":11,"msg":"no addresses","details":"range full"}'; exit 1"#,
        );
        let e = exec(
            &failing,
            "bridge",
            &inv(CniCommand::Add, Duration::from_secs(10)),
            b"{}",
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "CNI plugin bridge ADD failed (code 11): no addresses (range full)"
        );

        let crashing = script(dir.path(), "crashing", "echo 'panic: boom' >&2; exit 2");
        let e = exec(
            &crashing,
            "bridge",
            &inv(CniCommand::Add, Duration::from_secs(10)),
            b"{}",
        )
        .await
        .unwrap_err();
        assert!(matches!(e, NetworkError::PluginExit { .. }), "{e:?}");
        assert!(e.to_string().contains("panic: boom"), "{e}");

        let garbage = script(dir.path(), "garbage", "cat >/dev/null; echo not-json");
        let e = exec(
            &garbage,
            "bridge",
            &inv(CniCommand::Add, Duration::from_secs(10)),
            b"{}",
        )
        .await
        .unwrap_err();
        assert!(matches!(e, NetworkError::PluginOutput { .. }), "{e:?}");

        let slow = script(dir.path(), "slow", "exec sleep 30");
        let started = Instant::now();
        let e = exec(
            &slow,
            "bridge",
            &inv(CniCommand::Add, Duration::from_millis(200)),
            b"{}",
        )
        .await
        .unwrap_err();
        assert!(matches!(e, NetworkError::PluginTimeout { .. }), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(10));

        let e = exec(
            &dir.path().join("missing"),
            "bridge",
            &inv(CniCommand::Add, Duration::from_secs(1)),
            b"{}",
        )
        .await
        .unwrap_err();
        assert!(matches!(e, NetworkError::PluginExec { .. }), "{e:?}");
    }

    #[test]
    fn locate_reports_missing_plugins_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "bridge", "exit 0");
        script(dir.path(), "loopback", "exit 0");
        std::fs::write(dir.path().join("firewall"), "not executable").unwrap();
        let dirs = vec![dir.path().to_path_buf(), PathBuf::from("/nonexistent/cni")];
        let e = Plugins::locate(&dirs).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("CNI plugins host-local, firewall not found in "),
            "{text}"
        );
        assert!(text.contains("/nonexistent/cni"), "{text}");
        assert!(
            text.contains("apt install containernetworking-plugins"),
            "{text}"
        );

        script(dir.path(), "host-local", "exit 0");
        script(dir.path(), "firewall", "exit 0");
        let found = Plugins::locate(&dirs).unwrap();
        assert_eq!(found.firewall, dir.path().join("firewall"));
    }
}
