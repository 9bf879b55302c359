//! The rig of the hardware end-to-end tests and of the GPIO trigger benchmark: a real
//! `bramble up` ([`Node`]) with the fixture function image, and a way to make edges on a
//! GPIO input that works the same on the simulator and on a Raspberry Pi.
//!
//! # Wiring
//!
//! By default the node uses the **simulator** (`hardware.backend = "simulator"`): the input
//! line is `GPIO17`, driven through the admin API (`PUT /system/gpio/GPIO17`, `POST
//! .../toggle`), and the output line is `GPIO27`, read back through the admin API.
//!
//! On a Pi, set [`JUMPER_ENV`] to `OUTPUT:INPUT` (e.g. `BRAMBLE_HW_JUMPER=GPIO27:GPIO17`)
//! with a jumper wire between those two pins. The node then uses the GPIO character device
//! (`hardware.backend = "cdev"`); edges are made by a helper function granted the output
//! (`hw-driver`), and outputs are read back through the input by another (`hw-probe`), both
//! over their broker sockets from the host. See `hardware-tests/README.md`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bramble_testkit::Node;
use bramble_testkit::http::{self, Response};
use serde_json::{Value, json};

/// Errors of the tests.
pub type Error = Box<dyn std::error::Error>;
/// Results of the tests.
pub type Result<T = ()> = std::result::Result<T, Error>;

/// `OUTPUT:INPUT`: run against real pins jumpered together.
pub const JUMPER_ENV: &str = "BRAMBLE_HW_JUMPER";
/// The namespace functions are deployed in.
pub const NS: &str = "openfaas-fn";
/// The fixture image every function runs.
pub const FIXTURE: &str = bramble_testkit::node::FIXTURE_IMAGE;
/// How long a test waits for something a function should see.
pub const WAIT: Duration = Duration::from_secs(30);

const DRIVER: &str = "hw-driver";
const PROBE: &str = "hw-probe";

/// How edges are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wiring {
    /// The simulator: `GPIO17` is the input, `GPIO27` the output.
    Simulator,
    /// Real pins: `output` is jumpered to `input`.
    Jumper { output: String, input: String },
}

impl Wiring {
    /// From [`JUMPER_ENV`]; the simulator when it is unset or empty.
    pub fn from_env() -> std::result::Result<Wiring, String> {
        Wiring::parse(&std::env::var(JUMPER_ENV).unwrap_or_default())
    }

    /// From the text of [`JUMPER_ENV`].
    pub fn parse(value: &str) -> std::result::Result<Wiring, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(Wiring::Simulator);
        }
        match value.split_once(':') {
            Some((output, input)) if !output.is_empty() && !input.is_empty() && output != input => {
                Ok(Wiring::Jumper {
                    output: output.to_owned(),
                    input: input.to_owned(),
                })
            }
            _ => Err(format!(
                "{JUMPER_ENV}={value:?}: write OUTPUT:INPUT, the two line names jumpered \
                 together, e.g. GPIO27:GPIO17"
            )),
        }
    }

    /// The input line.
    pub fn input(&self) -> &str {
        match self {
            Wiring::Simulator => "GPIO17",
            Wiring::Jumper { input, .. } => input,
        }
    }

    /// The output line.
    pub fn output(&self) -> &str {
        match self {
            Wiring::Simulator => "GPIO27",
            Wiring::Jumper { output, .. } => output,
        }
    }

    /// The node configuration for this wiring.
    pub fn config(&self) -> &'static str {
        match self {
            Wiring::Simulator => "hardware.backend = \"simulator\"\n",
            Wiring::Jumper { .. } => "hardware.backend = \"cdev\"\n",
        }
    }

    /// For test output.
    pub fn describe(&self) -> String {
        match self {
            Wiring::Simulator => "simulator (GPIO27 out, GPIO17 in)".to_owned(),
            Wiring::Jumper { output, input } => format!("real pins: {output} jumpered to {input}"),
        }
    }
}

/// The `bramble` binary of this build: `target/<profile>/bramble`, next to the `deps`
/// directory of the running test. `BRAMBLE_TEST_BINARY` replaces it (see [`Node`]).
pub fn bramble_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or("cannot tell the target directory from the test's path")?;
    let binary = profile_dir.join("bramble");
    if binary.is_file() || std::env::var_os(bramble_testkit::node::BINARY_ENV).is_some() {
        Ok(binary)
    } else {
        Err(format!(
            "no bramble binary at {}: build it first (cargo build -p bramble-agent; `cargo \
             nextest run --workspace` and `cargo test --workspace` do) or set {}",
            binary.display(),
            bramble_testkit::node::BINARY_ENV
        )
        .into())
    }
}

/// A node and a way to make edges.
#[derive(Debug)]
pub struct Rig {
    pub node: Node,
    pub wiring: Wiring,
    driver_deployed: AtomicBool,
    probe_deployed: AtomicBool,
}

impl Rig {
    /// A node named `name` with the fixture image, configured for the wiring in the
    /// environment plus `extra_config` (top-level TOML keys; dotted keys for sections).
    pub async fn start(name: &str, extra_config: &str) -> Result<Rig> {
        let wiring = Wiring::from_env()?;
        let config = format!("{}{extra_config}", wiring.config());
        let node = Node::with_fixture(&bramble_binary()?, name, &config).await?;
        Ok(Rig {
            node,
            wiring,
            driver_deployed: AtomicBool::new(false),
            probe_deployed: AtomicBool::new(false),
        })
    }

    /// Deploys the fixture as `name` and waits until the answer is 200 (not until ready).
    pub async fn deploy(&self, name: &str, annotations: &Value, env: &Value) -> Result {
        let body = json!({
            "service": name, "image": FIXTURE, "annotations": annotations, "envVars": env,
        });
        let r = self
            .node
            .api("POST", "/system/functions", body.to_string().as_bytes())
            .await?;
        expect(&r, 200, &format!("deploying {name}"))
    }

    /// [`Rig::deploy`], then waits for a ready replica.
    pub async fn deploy_ready(&self, name: &str, annotations: &Value, env: &Value) -> Result {
        self.deploy(name, annotations, env).await?;
        self.node.wait_available(name, 1).await?;
        Ok(())
    }

    /// The host side of a function's broker socket.
    pub fn socket(&self, function: &str) -> PathBuf {
        self.node
            .env
            .config
            .run_dir
            .join("hw")
            .join(format!("{function}.{NS}"))
            .join("hw.sock")
    }

    /// A request to the broker made from inside function `name`'s container (through the
    /// fixture's `/unix` route, at `/run/bramble/hw.sock`). The answer is the broker's.
    pub async fn from_function(
        &self,
        name: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<Response> {
        let query = format!(
            "socket={}&method={method}&path={}&body={}",
            encode("/run/bramble/hw.sock"),
            encode(path),
            encode(body)
        );
        Ok(self
            .node
            .call("GET", &format!("/function/{name}/unix?{query}"), &[], b"")
            .await?)
    }

    /// Drives the input line to `level` (physical).
    pub async fn drive(&self, level: u8) -> Result {
        let body = json!({ "level": level }).to_string();
        match &self.wiring {
            Wiring::Simulator => {
                let path = format!("/system/gpio/{}", self.wiring.input());
                let r = self.node.api("PUT", &path, body.as_bytes()).await?;
                expect(&r, 200, "driving the simulated input")
            }
            Wiring::Jumper { output, .. } => {
                self.ensure_helper(DRIVER, &format!("{output}:out"), &self.driver_deployed)
                    .await?;
                let r = self
                    .broker(DRIVER, "PUT", &format!("/v1/gpio/{output}"), &body)
                    .await?;
                expect(&r, 200, "driving the output jumpered to the input")
            }
        }
    }

    /// Makes `times` edges on the input, as fast as the wiring allows.
    pub async fn toggle(&self, times: u32) -> Result {
        match &self.wiring {
            Wiring::Simulator => {
                let path = format!("/system/gpio/{}/toggle", self.wiring.input());
                let body = json!({ "times": times }).to_string();
                let r = self.node.api("POST", &path, body.as_bytes()).await?;
                expect(&r, 200, "toggling the simulated input")
            }
            Wiring::Jumper { output, .. } => {
                self.drive(1).await?;
                let r = self
                    .broker(DRIVER, "GET", &format!("/v1/gpio/{output}"), "")
                    .await?;
                let mut level = json_body(&r)?["level"].as_u64().unwrap_or(1) as u8;
                for _ in 0..times {
                    level ^= 1;
                    self.drive(level).await?;
                }
                Ok(())
            }
        }
    }

    /// The physical level of the output line: from the admin API (simulator), or read
    /// through the jumpered input (real pins).
    pub async fn output_level(&self) -> Result<u8> {
        let (r, what) = match &self.wiring {
            Wiring::Simulator => {
                let path = format!("/system/gpio/{}", self.wiring.output());
                (self.node.api("GET", &path, b"").await?, "the output line")
            }
            Wiring::Jumper { input, .. } => {
                self.ensure_helper(PROBE, &format!("{input}:in:pull-up"), &self.probe_deployed)
                    .await?;
                let path = format!("/v1/gpio/{input}");
                (
                    self.broker(PROBE, "GET", &path, "").await?,
                    "the jumpered input",
                )
            }
        };
        expect(&r, 200, &format!("reading {what}"))?;
        let level = json_body(&r)?["level"]
            .as_u64()
            .ok_or_else(|| format!("no level in {}", r.text()))?;
        Ok(u8::try_from(level)?)
    }

    /// Polls [`Rig::output_level`] until it is `want` (at most [`WAIT`]): for outputs a
    /// function sets in reaction to something, which publishes no other signal.
    pub async fn wait_output(&self, want: u8) -> Result {
        let deadline = Instant::now() + WAIT;
        loop {
            let level = self.output_level().await?;
            if level == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} stayed at {level}, not {want}, for {WAIT:?}\n{}",
                    self.wiring.output(),
                    self.node.log_tail(20)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What function `name` recorded (the fixture's `/records`), each with its body parsed
    /// as JSON under `"json"` when it is JSON.
    pub async fn records(&self, name: &str) -> Result<Vec<Value>> {
        let r = self
            .node
            .call("GET", &format!("/function/{name}/records"), &[], b"")
            .await?;
        expect(&r, 200, &format!("reading what {name} recorded"))?;
        let mut records = Vec::new();
        for line in r.text().lines().filter(|l| !l.is_empty()) {
            let mut record: Value = serde_json::from_str(line)?;
            if let Some(body) = record["body"].as_str()
                && let Ok(parsed) = serde_json::from_str::<Value>(body)
            {
                record["json"] = parsed;
            }
            records.push(record);
        }
        Ok(records)
    }

    /// Polls [`Rig::records`] until `done` holds (at most `timeout`).
    pub async fn wait_records(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records(name).await?;
            if done(&records) {
                return Ok(records);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{name} did not receive what was expected within {timeout:?}; it has: \
                     {records:#?}\n{}",
                    self.node.log_tail(30)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A request to a function's broker socket from the host.
    async fn broker(
        &self,
        function: &str,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<Response> {
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("Content-Type", "application/json")]
        };
        Ok(http::request_unix(
            &self.socket(function),
            method,
            path,
            headers,
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .await?)
    }

    /// Deploys a helper function granted `grant` once.
    async fn ensure_helper(&self, name: &str, grant: &str, deployed: &AtomicBool) -> Result {
        if deployed.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.deploy_ready(name, &json!({ "bramble.gpio": grant }), &json!({}))
            .await?;
        deployed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// Edges that the records of a GPIO trigger stand for (the sum of their `count`s).
pub fn edges_counted(records: &[Value]) -> u64 {
    records
        .iter()
        .map(|r| r["json"]["count"].as_u64().unwrap_or(0))
        .sum()
}

/// Fails unless the status is `want`, with the body.
pub fn expect(r: &Response, want: u16, what: &str) -> Result {
    if r.status == want {
        Ok(())
    } else {
        Err(format!("{what}: expected {want}, got {}: {}", r.status, r.text()).into())
    }
}

/// The body as JSON.
pub fn json_body(r: &Response) -> Result<Value> {
    serde_json::from_slice(&r.body).map_err(|e| format!("not JSON ({e}): {}", r.text()).into())
}

/// Percent-encodes a query value.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wiring_is_read_from_the_environment_text() {
        assert_eq!(Wiring::parse(""), Ok(Wiring::Simulator));
        assert_eq!(Wiring::parse(" "), Ok(Wiring::Simulator));
        let jumper = Wiring::parse("GPIO27:GPIO17").unwrap();
        assert_eq!((jumper.output(), jumper.input()), ("GPIO27", "GPIO17"));
        assert!(jumper.config().contains("cdev"));
        for bad in ["GPIO27", "GPIO27:", ":GPIO17", "GPIO17:GPIO17"] {
            let e = Wiring::parse(bad).unwrap_err();
            assert!(e.contains("OUTPUT:INPUT"), "{bad}: {e}");
        }
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("{\"level\":1}"), "%7B%22level%22%3A1%7D");
        assert_eq!(encode("/v1/gpio/GPIO17"), "/v1/gpio/GPIO17");
    }
}
