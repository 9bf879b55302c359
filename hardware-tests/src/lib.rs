//! The rig of the hardware end-to-end tests and of the GPIO trigger benchmark: a real
//! `bramble up` ([`Node`]) with the fixture function image, and a way to make edges on a
//! GPIO input and to see a GPIO output that works the same on the simulator and on a
//! Raspberry Pi.
//!
//! # Wiring
//!
//! The tests see the board as one **output** line jumpered to one **input** line
//! ([`Wiring::Jumper`]): edges are made on the input by setting the output, and the
//! output's level is read through the input. By default the pair is `GPIO27` → `GPIO17` on
//! the simulator, which wires them like a jumper (`hardware.sim_jumpers`); with
//! [`JUMPER_ENV`] set to `OUTPUT:INPUT` (e.g. `BRAMBLE_HW_JUMPER=GPIO27:GPIO17`) the node
//! uses the GPIO character device (`hardware.backend = "cdev"`) and the same code drives two
//! real pins jumpered together. So CI runs the very code that runs on the Pi.
//!
//! [`Rig::start`] deploys two helper functions, whose sockets the rig uses from the host:
//!
//! * `hw-probe`, granted the input as [`INPUT_GRANT`] (`in:pull-up`): the output's level is
//!   read through it. The input's idle level is its pull-up's, [`IDLE`] (1). Functions that
//!   share the input must ask for it with the same bias and debounce (`pull-up`, none).
//! * `hw-driver`, granted the output as `out:initial=1:safe=1`: the input at its idle level
//!   from the start, so deploying the rig makes no edge, and stopping the driver makes none.
//!
//! The output belongs to one function at a time: a test that needs its own function on
//! the output calls [`Rig::take_output`], which deletes the driver (no edge: its safe level
//! is the idle level) and makes the test's function the one [`Rig::drive`] goes through.
//! [`Rig::delete`] of that function leaves the output to nobody: the level of a released
//! output is the kernel's business (Raspberry Pi OS keeps driving it unless `strict_gpiod`
//! is set, upstream kernels make it an input that the input's pull-up raises, and so does
//! the simulator), so tests never read it.
//!
//! [`Wiring::Simulator`] ([`Rig::start_unwired`]) is the simulator without a wire: `GPIO17`
//! is driven and `GPIO27` read through the admin API. Only what cannot work on jumpered pins
//! uses it (the LED example, whose LED would drive its own button), and the benchmark,
//! which makes its edges in the simulator.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
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
/// How the probe (and every function sharing the input with it) asks for the input.
pub const INPUT_GRANT: &str = "in:pull-up";
/// The input's level when nothing pulls it down: its pull-up's.
pub const IDLE: u8 = 1;

/// The helper function the rig drives the output through until a test takes it.
pub const DRIVER: &str = "hw-driver";
/// The helper function the rig reads the input through.
pub const PROBE: &str = "hw-probe";

/// How edges are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wiring {
    /// The simulator without a wire: `GPIO17` is the input, driven through the admin API;
    /// `GPIO27` the output, read through it.
    Simulator,
    /// `output` jumpered to `input`: real pins, or (`simulated`) the simulator's jumper.
    Jumper {
        output: String,
        input: String,
        simulated: bool,
    },
}

impl Wiring {
    /// From [`JUMPER_ENV`]; the simulator's `GPIO27` → `GPIO17` jumper when it is unset or
    /// empty.
    pub fn from_env() -> std::result::Result<Wiring, String> {
        Wiring::parse(&std::env::var(JUMPER_ENV).unwrap_or_default())
    }

    /// From the text of [`JUMPER_ENV`].
    pub fn parse(value: &str) -> std::result::Result<Wiring, String> {
        let value = value.trim();
        if value.is_empty() {
            return Ok(Wiring::Jumper {
                output: "GPIO27".to_owned(),
                input: "GPIO17".to_owned(),
                simulated: true,
            });
        }
        match value.split_once(':') {
            Some((output, input)) if !output.is_empty() && !input.is_empty() && output != input => {
                Ok(Wiring::Jumper {
                    output: output.to_owned(),
                    input: input.to_owned(),
                    simulated: false,
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

    /// Whether the output drives the input (real or simulated jumper).
    pub fn is_jumper(&self) -> bool {
        matches!(self, Wiring::Jumper { .. })
    }

    /// Whether these are real pins.
    pub fn is_real(&self) -> bool {
        matches!(
            self,
            Wiring::Jumper {
                simulated: false,
                ..
            }
        )
    }

    /// The node configuration for this wiring.
    pub fn config(&self) -> String {
        match self {
            Wiring::Simulator => "hardware.backend = \"simulator\"\n".to_owned(),
            Wiring::Jumper {
                output,
                input,
                simulated: true,
            } => format!(
                "hardware.backend = \"simulator\"\nhardware.sim_jumpers = [[\"{output}\", \"{input}\"]]\n"
            ),
            Wiring::Jumper {
                simulated: false, ..
            } => "hardware.backend = \"cdev\"\n".to_owned(),
        }
    }

    /// For test output.
    pub fn describe(&self) -> String {
        match self {
            Wiring::Simulator => "simulator (GPIO27 out, GPIO17 in)".to_owned(),
            Wiring::Jumper {
                output,
                input,
                simulated: true,
            } => format!("simulator, {output} wired to {input}"),
            Wiring::Jumper {
                output,
                input,
                simulated: false,
            } => format!("real pins: {output} jumpered to {input}"),
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

/// The function the rig drives the output through.
#[derive(Debug, Clone)]
struct Owner {
    function: String,
    active_low: bool,
}

/// A node and a way to make edges.
#[derive(Debug)]
pub struct Rig {
    pub node: Node,
    pub wiring: Wiring,
    /// Who owns the output now (jumper wirings; `None`: nobody, it was deleted).
    owner: Mutex<Option<Owner>>,
}

impl Rig {
    /// A node named `name` with the fixture image, wired as the environment says (see
    /// [`Wiring::from_env`]), plus `extra_config` (top-level TOML keys; dotted keys for
    /// sections). On a jumper, the probe and the driver are deployed and ready.
    pub async fn start(name: &str, extra_config: &str) -> Result<Rig> {
        Rig::start_wired(Wiring::from_env()?, name, extra_config).await
    }

    /// [`Rig::start`] on the simulator without a wire ([`Wiring::Simulator`]).
    pub async fn start_unwired(name: &str, extra_config: &str) -> Result<Rig> {
        Rig::start_wired(Wiring::Simulator, name, extra_config).await
    }

    /// [`Rig::start`] with this wiring.
    pub async fn start_wired(wiring: Wiring, name: &str, extra_config: &str) -> Result<Rig> {
        let config = format!("{}{extra_config}", wiring.config());
        let node = Node::with_fixture(&bramble_binary()?, name, &config).await?;
        let rig = Rig {
            node,
            wiring,
            owner: Mutex::new(None),
        };
        if let Wiring::Jumper { output, input, .. } = &rig.wiring {
            // The probe first: its pull-up gives the input its idle level, which the driver
            // then holds, so that no edge is made.
            rig.deploy_ready(
                PROBE,
                &json!({ "bramble.gpio": format!("{input}:{INPUT_GRANT}") }),
                &json!({}),
            )
            .await?;
            rig.deploy_ready(
                DRIVER,
                &json!({ "bramble.gpio": format!("{output}:out:initial={IDLE}:safe={IDLE}") }),
                &json!({}),
            )
            .await?;
            rig.set_owner(Some(Owner {
                function: DRIVER.to_owned(),
                active_low: false,
            }));
        }
        Ok(rig)
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

    /// Deploys the fixture as `name` with `grant` as its `bramble.gpio` (it must give it
    /// the output line), ready, and drives the wire through it from now on. On a jumper the
    /// driver gives the output up first: it is deleted (its safe level is the idle level,
    /// so the input sees no edge).
    pub async fn take_output(&self, name: &str, grant: &str) -> Result {
        let output = self.wiring.output().to_owned();
        let Some(options) = grant
            .split(',')
            .find_map(|item| item.strip_prefix(&format!("{output}:out")))
        else {
            return Err(format!("{grant:?} does not grant {output} as an output").into());
        };
        if self.wiring.is_jumper() {
            match self.owner() {
                Some(owner) if owner.function == DRIVER => self.delete(DRIVER).await?,
                Some(owner) => {
                    return Err(format!(
                        "{output} belongs to {}: delete it before {name} takes it",
                        owner.function
                    )
                    .into());
                }
                None => {}
            }
        }
        self.deploy_ready(name, &json!({ "bramble.gpio": grant }), &json!({}))
            .await?;
        self.set_owner(Some(Owner {
            function: name.to_owned(),
            active_low: options.split(':').any(|o| o == "active-low"),
        }));
        Ok(())
    }

    /// Deletes function `name`; if it owned the output, nobody does now.
    pub async fn delete(&self, name: &str) -> Result {
        let body = json!({ "functionName": name }).to_string();
        let r = self
            .node
            .api("DELETE", "/system/functions", body.as_bytes())
            .await?;
        expect(&r, 200, &format!("deleting {name}"))?;
        if self.owner().is_some_and(|o| o.function == name) {
            self.set_owner(None);
        }
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

    /// Drives the input line to `level` (physical): through the admin API (simulator), or
    /// by setting the output through the function that owns it (jumper).
    pub async fn drive(&self, level: u8) -> Result {
        let body = json!({ "level": level }).to_string();
        match &self.wiring {
            Wiring::Simulator => {
                let path = format!("/system/gpio/{}", self.wiring.input());
                let r = self.node.api("PUT", &path, body.as_bytes()).await?;
                expect(&r, 200, "driving the simulated input")
            }
            Wiring::Jumper { output, .. } => {
                let owner = self.owner().ok_or_else(|| {
                    format!("nobody owns {output} (its function was deleted): cannot drive it")
                })?;
                let logical = level ^ u8::from(owner.active_low);
                let body = json!({ "level": logical }).to_string();
                let r = self
                    .broker(&owner.function, "PUT", &format!("/v1/gpio/{output}"), &body)
                    .await?;
                expect(
                    &r,
                    200,
                    &format!(
                        "{} driving the output jumpered to the input",
                        owner.function
                    ),
                )
            }
        }
    }

    /// Makes exactly `times` edges on the input, from the level it is at, as fast as the
    /// wiring allows.
    pub async fn toggle(&self, times: u32) -> Result {
        match &self.wiring {
            Wiring::Simulator => {
                let path = format!("/system/gpio/{}/toggle", self.wiring.input());
                let body = json!({ "times": times }).to_string();
                let r = self.node.api("POST", &path, body.as_bytes()).await?;
                expect(&r, 200, "toggling the simulated input")
            }
            Wiring::Jumper { .. } => {
                let mut level = self.output_level().await?;
                for _ in 0..times {
                    level ^= 1;
                    self.drive(level).await?;
                }
                Ok(())
            }
        }
    }

    /// The physical level of the output line: from the admin API (simulator), or read
    /// through the jumpered input by the probe (jumper).
    pub async fn output_level(&self) -> Result<u8> {
        let (r, what) = match &self.wiring {
            Wiring::Simulator => {
                let path = format!("/system/gpio/{}", self.wiring.output());
                (self.node.api("GET", &path, b"").await?, "the output line")
            }
            Wiring::Jumper { input, .. } => {
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

    /// A request to a function's broker socket from the host (as root: the socket
    /// directory is root-only). The node binds the socket when it attaches the function,
    /// which after a restart is a moment after its API answers: a socket that refuses
    /// connections is tried again for up to [`WAIT`].
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
        let socket = self.socket(function);
        let deadline = Instant::now() + WAIT;
        loop {
            let answer = http::request_unix(
                &socket,
                method,
                path,
                headers,
                body.as_bytes(),
                Duration::from_secs(10),
            )
            .await;
            match answer {
                Ok(r) => return Ok(r),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                    ) && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(format!("{method} {path} on {}: {e}", socket.display()).into());
                }
            }
        }
    }

    fn owner(&self) -> Option<Owner> {
        self.owner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_owner(&self, owner: Option<Owner>) {
        *self.owner.lock().unwrap_or_else(PoisonError::into_inner) = owner;
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
        // Unset: the simulator's jumper, with the same lines as the documented Pi wiring.
        for unset in ["", " "] {
            let w = Wiring::parse(unset).unwrap();
            assert!(w.is_jumper() && !w.is_real(), "{w:?}");
            assert_eq!((w.output(), w.input()), ("GPIO27", "GPIO17"));
            assert!(w.config().contains("hardware.backend = \"simulator\"\n"));
            assert!(
                w.config()
                    .contains("hardware.sim_jumpers = [[\"GPIO27\", \"GPIO17\"]]\n")
            );
        }
        let jumper = Wiring::parse("GPIO22:GPIO23").unwrap();
        assert_eq!((jumper.output(), jumper.input()), ("GPIO22", "GPIO23"));
        assert!(jumper.is_real());
        assert_eq!(jumper.config(), "hardware.backend = \"cdev\"\n");
        assert!(!Wiring::Simulator.is_jumper());
        assert!(!Wiring::Simulator.config().contains("sim_jumpers"));
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
