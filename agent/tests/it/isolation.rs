//! Isolation and access, checked from inside a function: a real `bramble up` on a private
//! containerd with real CNI, the fixture function probing its own surroundings through its
//! routes (`/fetch`, `/connect`, `/ls`, `/stat`, `/read`, `/write`, `/rlimit`, `/unix`).
//!
//! What a function must not do: use the admin API without credentials, reach another
//! function's address, see host devices, hold any capability, write outside `/tmp` with a
//! read-only root, raise its limits, use hardware it was not granted. Secrets are files only
//! its user can read, stored 0600 on the node, and never appear in logs, status output or
//! error messages; neither do the API's credentials.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bramble_testkit::Node;
use bramble_testkit::harness::Suite;
use bramble_testkit::http::Response;
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const FIXTURE: &str = "docker.io/library/fixture:test";

/// The tests of this module, as a part of the `it` binary.
pub(crate) fn suite() -> Suite {
    Suite::new("isolation", crate::NODE)
        .async_trial(
            "functions_reach_the_api_only_with_credentials_and_not_each_other",
            functions_reach_the_api_only_with_credentials_and_not_each_other,
        )
        .async_trial(
            "functions_have_no_capabilities_no_devices_and_a_read_only_root",
            functions_have_no_capabilities_no_devices_and_a_read_only_root,
        )
        .async_trial(
            "functions_cannot_raise_their_limits",
            functions_cannot_raise_their_limits,
        )
        .async_trial(
            "functions_use_only_the_hardware_they_were_granted",
            functions_use_only_the_hardware_they_were_granted,
        )
        .async_trial(
            "secrets_and_credentials_never_leak",
            secrets_and_credentials_never_leak,
        )
}

async fn node(name: &str) -> Result<Node, Box<dyn std::error::Error>> {
    Node::with_fixture(Path::new(env!("CARGO_BIN_EXE_bramble")), name, "").await
}

/// Deploys the fixture as `name` with extra deployment fields and waits until it is ready.
async fn deploy(node: &Node, name: &str, extra: Value) -> TestResult {
    let mut body = json!({"service": name, "image": FIXTURE});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = node
        .api("POST", "/system/functions", body.to_string().as_bytes())
        .await?;
    r.expect(200, &format!("deploy {name}"))?;
    node.wait_available(name, 1).await?;
    Ok(())
}

/// Calls a route of function `name` (through the gateway, as anyone on the LAN can).
async fn probe(node: &Node, name: &str, route: &str) -> Result<Response, std::io::Error> {
    node.call("GET", &format!("/function/{name}{route}"), &[], b"")
        .await
}

/// The text of a probe that must succeed.
async fn probe_ok(node: &Node, name: &str, route: &str) -> Result<String, String> {
    let r = probe(node, name, route).await.map_err(|e| e.to_string())?;
    r.expect(200, &format!("{name}{route}"))?;
    Ok(r.text())
}

/// A function's address and its bridge's (the node as the function sees it), from the
/// runtime's attachment cache.
fn addresses(node: &Node, name: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let dir = node.env.config.run_dir.join("net/cache");
    let prefix = format!("{name}.openfaas-fn-");
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|e| e.to_string())?;
        let cache: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let ip = |field: &str| -> Result<Ipv4Addr, String> {
            cache["attachment"][field]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("no attachment.{field} in {text}"))
        };
        return Ok((ip("ip")?, ip("gateway")?));
    }
    Err(format!("no attachment of {name} in {}", dir.display()))
}

async fn functions_reach_the_api_only_with_credentials_and_not_each_other() -> TestResult {
    let mut node = node("iso-net").await?;
    // As on a LAN: the gateway listens on every address, the bridge's included.
    node.listen_everywhere()?;
    deploy(&node, "a", json!({})).await?;
    deploy(&node, "b", json!({})).await?;
    let (a_ip, bridge) = addresses(&node, "a")?;
    let (b_ip, _) = addresses(&node, "b")?;
    let gateway = SocketAddr::from((bridge, node.addr().port()));

    // The node's API is reachable from a function, but /system/* needs the credentials.
    for route in [
        "/system/functions",
        "/system/secrets",
        "/system/info",
        "/system/logs?name=b",
        "/system/function/b",
    ] {
        let line = probe_ok(
            &node,
            "a",
            &format!(
                "/fetch?addr={gateway}&path={}",
                route.replace('?', "%3F").replace('=', "%3D")
            ),
        )
        .await?;
        assert_eq!(
            line.split(' ').nth(1),
            Some("401"),
            "{route} from inside a function: {line}"
        );
    }
    // What is meant to be open stays open: another function, through the gateway.
    let line = probe_ok(
        &node,
        "a",
        &format!("/fetch?addr={gateway}&path=/function/b"),
    )
    .await?;
    assert_eq!(
        line.split(' ').nth(1),
        Some("200"),
        "/function/b from a: {line}"
    );

    // Not directly: b's address is unreachable from a, while the node reaches both.
    let r = probe(
        &node,
        "a",
        &format!("/connect?addr={b_ip}:8080&timeout_ms=1500"),
    )
    .await?;
    r.expect(502, "a connecting to b's address")?;
    let r = probe(
        &node,
        "b",
        &format!("/connect?addr={a_ip}:8080&timeout_ms=1500"),
    )
    .await?;
    r.expect(502, "b connecting to a's address")?;
    for ip in [a_ip, b_ip] {
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect((ip, 8080)),
        )
        .await
        .map_err(|_| format!("the node cannot reach {ip}"))??;
    }
    // A function still reaches itself and its own loopback.
    let r = probe(&node, "a", &format!("/connect?addr={a_ip}:8080")).await?;
    r.expect(200, "a connecting to itself")?;
    Ok(())
}

/// Capability sets, all of which must be empty.
const CAP_FIELDS: [&str; 5] = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];

/// What `/dev` may hold: the OCI runtime spec's default devices and runc's usual links.
const DEV_ALLOWED: &[&str] = &[
    "console", "core", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm", "stderr",
    "stdin", "stdout", "tty", "urandom", "zero",
];

async fn functions_have_no_capabilities_no_devices_and_a_read_only_root() -> TestResult {
    let node = node("iso-caps").await?;
    deploy(&node, "ro", json!({"readOnlyRootFilesystem": true})).await?;

    let status = probe_ok(&node, "ro", "/read?path=/proc/self/status").await?;
    for field in CAP_FIELDS {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(str::trim)
            .ok_or_else(|| format!("no {field} in /proc/self/status:\n{status}"))?;
        assert_eq!(value, "0000000000000000", "{field} of a function");
    }
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"])),
        "no_new_privs is not set:\n{status}"
    );

    // Devices: only the harmless default set, no block device, nothing of the host's.
    let dev = probe_ok(&node, "ro", "/ls?path=/dev").await?;
    for line in dev.lines() {
        let (name, kind) = line.split_once(' ').unwrap_or((line, ""));
        assert!(
            DEV_ALLOWED.contains(&name),
            "/dev/{name} ({kind}) is visible in a function:\n{dev}"
        );
        assert_ne!(kind, "block", "{line}");
    }
    for host_device in [
        "/dev/kmsg",
        "/dev/mem",
        "/dev/gpiomem",
        "/dev/gpiochip0",
        "/dev/sda",
    ] {
        let r = probe(&node, "ro", &format!("/stat?path={host_device}")).await?;
        r.expect(404, host_device)?;
    }

    // Read-only root: nothing written outside /tmp.
    for path in [
        "/evil",
        "/etc/passwd",
        "/var/openfaas/secrets/x",
        "/proc/sys/kernel/hostname",
        "/sys/kernel/uevent_helper",
    ] {
        let r = probe(&node, "ro", &format!("/write?path={path}")).await?;
        r.expect(500, &format!("writing {path}"))?;
    }
    let r = probe(&node, "ro", "/write?path=/tmp/ok").await?;
    r.expect(200, "writing /tmp/ok")?;
    assert_eq!(
        probe_ok(&node, "ro", "/read?path=/tmp/ok").await?,
        "fixture\n"
    );
    Ok(())
}

async fn functions_cannot_raise_their_limits() -> TestResult {
    let node = node("iso-limits").await?;
    deploy(
        &node,
        "lim",
        json!({"limits": {"memory": "64Mi", "cpu": "500m"}}),
    )
    .await?;

    // Resource limits: raising the hard limit needs CAP_SYS_RESOURCE.
    let r = probe(
        &node,
        "lim",
        "/rlimit?resource=nofile&soft=1024&hard=1048576",
    )
    .await?;
    r.expect(500, "raising RLIMIT_NOFILE")?;
    assert!(r.text().contains("Operation not permitted"), "{}", r.text());
    let r = probe(&node, "lim", "/rlimit?resource=nofile&soft=512&hard=1024").await?;
    r.expect(200, "lowering RLIMIT_NOFILE")?;

    // cgroup limits: the cgroup files are read-only (v1 and v2 paths; one of them exists).
    let mut tried = Vec::new();
    for (path, data) in [
        ("/sys/fs/cgroup/memory.max", "max"),
        ("/sys/fs/cgroup/pids.max", "max"),
        ("/sys/fs/cgroup/cpu.max", "max"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "-1"),
        ("/sys/fs/cgroup/pids/pids.max", "max"),
        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1"),
    ] {
        let exists = probe(&node, "lim", &format!("/stat?path={path}")).await?;
        if exists.status != 200 {
            continue;
        }
        let r = probe(&node, "lim", &format!("/write?path={path}&data={data}")).await?;
        r.expect(500, &format!("writing {data} to {path}"))?;
        tried.push(path);
    }
    assert!(
        !tried.is_empty(),
        "no cgroup limit file is visible to check"
    );

    // And the limit holds: the memory limit is what was asked.
    let status = node.status("lim").await?.ok_or("lim vanished")?;
    assert_eq!(status["limits"]["memory"], "64Mi", "{status}");
    Ok(())
}

async fn functions_use_only_the_hardware_they_were_granted() -> TestResult {
    let node = node("iso-hw").await?;
    deploy(
        &node,
        "hw",
        json!({"annotations": {"bramble.gpio": "GPIO17:in"}}),
    )
    .await?;
    deploy(&node, "plain", json!({})).await?;
    let socket = "/run/bramble/hw.sock";

    let r = probe(
        &node,
        "hw",
        &format!("/unix?socket={socket}&path=/v1/gpio/GPIO17"),
    )
    .await?;
    r.expect(200, "reading a granted line")?;
    for (method, path, body) in [
        ("GET", "/v1/gpio/GPIO27", ""),
        ("PUT", "/v1/gpio/GPIO17", "%7B%22level%22%3A1%7D"),
        ("POST", "/v1/i2c/1/0x76", "%7B%22read%22%3A1%7D"),
    ] {
        let r = probe(
            &node,
            "hw",
            &format!("/unix?socket={socket}&method={method}&path={path}&body={body}"),
        )
        .await?;
        r.expect(403, &format!("{method} {path} without a grant"))?;
    }
    // A function without grants has no socket at all.
    let r = probe(&node, "plain", &format!("/stat?path={socket}")).await?;
    r.expect(404, "the hardware socket of a function without grants")?;
    Ok(())
}

async fn secrets_and_credentials_never_leak() -> TestResult {
    let node = node("iso-secrets").await?;
    let value = format!("s3cret-{}", std::process::id());
    let r = node
        .api(
            "POST",
            "/system/secrets",
            json!({"name": "api-key", "value": value})
                .to_string()
                .as_bytes(),
        )
        .await?;
    r.expect(200, "creating the secret")?;
    deploy(&node, "sec", json!({"secrets": ["api-key"]})).await?;

    // Inside: only the function's user can read it, and nobody can write it.
    let id = probe_ok(&node, "sec", "/id").await?;
    let uid = id
        .strip_prefix("uid=")
        .and_then(|s| s.split(' ').next())
        .ok_or(format!("/id: {id}"))?;
    let stat = probe_ok(&node, "sec", "/stat?path=/var/openfaas/secrets/api-key").await?;
    assert!(
        stat.starts_with(&format!("mode=400 uid={uid} ")),
        "the secret file inside: {stat}"
    );
    assert_eq!(
        probe_ok(&node, "sec", "/read?path=/var/openfaas/secrets/api-key").await?,
        value
    );
    let r = probe(&node, "sec", "/write?path=/var/openfaas/secrets/api-key").await?;
    r.expect(500, "overwriting the secret from inside")?;

    // On the node: 0600 files in 0700 directories.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o7777);
    let stored = node
        .state_dir()
        .join("function-secrets/openfaas-fn/api-key");
    assert_eq!(mode(&stored)?, 0o600, "{}", stored.display());
    for dir in [
        "function-secrets",
        "function-secrets/openfaas-fn",
        "secrets",
    ] {
        assert_eq!(mode(&node.state_dir().join(dir))?, 0o700, "{dir}");
    }
    for file in ["basic-auth-user", "basic-auth-password"] {
        assert_eq!(
            mode(&node.state_dir().join("secrets").join(file))?,
            0o600,
            "{file}"
        );
    }

    // Everything an operator or a caller can see, after using, updating and misusing it.
    let mut seen = Vec::new();
    let updated = format!("{value}-2");
    for (method, path, body) in [
        (
            "PUT",
            "/system/secrets",
            json!({"name": "api-key", "value": updated}),
        ),
        (
            "POST",
            "/system/secrets",
            json!({"name": "api-key", "value": value}),
        ),
        (
            "POST",
            "/system/secrets",
            json!({"name": "bad/name", "value": value}),
        ),
        (
            "POST",
            "/system/secrets",
            json!({"name": "x", "value": value, "rawValue": value}),
        ),
        (
            "PUT",
            "/system/secrets",
            json!({"name": "missing", "value": value}),
        ),
        (
            "POST",
            "/system/secrets",
            json!({"name": "", "value": value}),
        ),
        (
            "POST",
            "/system/secrets",
            json!({"name": "y", "namespace": "nope", "value": value}),
        ),
        (
            "POST",
            "/system/secrets",
            json!({"name": ["api-key"], "value": value}),
        ),
        (
            "POST",
            "/system/functions",
            json!({"service": "sec2", "image": FIXTURE, "secrets": ["missing"]}),
        ),
        ("GET", "/system/secrets", json!(null)),
        ("GET", "/system/function/sec", json!(null)),
        ("GET", "/system/functions", json!(null)),
        ("GET", "/system/logs?name=sec&tail=100", json!(null)),
    ] {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let r = node.api(method, path, body.as_bytes()).await?;
        seen.push(format!("{method} {path} -> {} {}", r.status, r.text()));
    }
    // A caller who sends the wrong credentials: the attempt is not logged either.
    let wrong = "Basic YWRtaW46bm90LXRoZS1wYXNzd29yZA=="; // admin:not-the-password
    let r = node
        .call("GET", "/system/secrets", &[("Authorization", wrong)], b"")
        .await?;
    r.expect(401, "wrong credentials")?;
    // The function itself printing its environment does not contain it either (secrets are
    // files, never environment variables).
    let env = probe_ok(&node, "sec", "/env").await?;
    seen.push(format!("/env of the function: {env}"));
    let (_, password) = node.credentials()?;
    let log = std::fs::read_to_string(node.env.containerd.dir().join("bramble.log"))?;
    for (what, text) in seen
        .iter()
        .map(|s| ("API answer", s.as_str()))
        .chain([("node log", log.as_str())])
    {
        for needle in [
            value.as_str(),
            updated.as_str(),
            password.as_str(),
            "not-the-password",
        ] {
            assert!(
                !text.contains(needle),
                "{what} contains a secret ({needle}): {text}"
            );
        }
    }
    // The status names the secret, never its value.
    let status = node.status("sec").await?.ok_or("sec vanished")?;
    assert_eq!(status["secrets"], json!(["api-key"]), "{status}");
    Ok(())
}
