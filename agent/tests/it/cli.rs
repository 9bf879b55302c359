//! End-to-end tests of the operator CLI: the real `bramble` binary, run as a user runs it,
//! against a real node (`bramble up` on a private containerd, real CNI in a private network
//! namespace, the fixture function image).

use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bramble_testkit::Node;
use bramble_testkit::harness::Suite;
use serde_json::Value;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const FIXTURE: &str = "docker.io/library/fixture:test";
const BRAMBLE: &str = env!("CARGO_BIN_EXE_bramble");

/// The tests of this module, as a part of the `it` binary.
pub(crate) fn suite() -> Suite {
    Suite::new("cli", crate::NODE)
        .async_trial(
            "functions_from_a_stack_file_end_to_end",
            functions_from_a_stack_file_end_to_end,
        )
        .async_trial(
            "secrets_are_created_listed_and_removed_never_printed",
            secrets_are_created_listed_and_removed_never_printed,
        )
        .async_trial(
            "errors_are_one_line_and_exit_1",
            errors_are_one_line_and_exit_1,
        )
        .async_trial(
            "an_image_built_and_imported_by_the_cli_serves_and_write_commands_speak_json",
            an_image_built_and_imported_by_the_cli_serves_and_write_commands_speak_json,
        )
        .async_trial(
            "gpio_set_get_and_watch_on_a_simulator_node",
            gpio_set_get_and_watch_on_a_simulator_node,
        )
}

async fn node(name: &str) -> Result<Node, Box<dyn std::error::Error>> {
    Node::with_fixture(Path::new(BRAMBLE), name, "").await
}

/// `bramble ARGS` with the node's credentials in the environment (and nothing else that
/// could point it elsewhere).
fn command(node: &Node, args: &[&str]) -> Command {
    let (user, password) = node.credentials().expect("credentials");
    let mut c = Command::new(BRAMBLE);
    c.args(args)
        .env_remove("BRAMBLE_URL")
        .env_remove("OPENFAAS_URL")
        .env("BRAMBLE_STATE_DIR", "/nonexistent")
        .env("BRAMBLE_USER", user)
        .env("BRAMBLE_PASSWORD", password)
        .env("BRAMBLE_LOG", "warn");
    c
}

/// Runs `bramble ARGS --gateway NODE` with `stdin` as its input.
fn bramble_in(node: &Node, args: &[&str], stdin: &[u8]) -> Output {
    let gateway = format!("http://{}", node.addr());
    let mut c = command(node, args);
    c.args(["--gateway", &gateway]);
    run(c, stdin)
}

fn bramble(node: &Node, args: &[&str]) -> Output {
    bramble_in(node, args, b"")
}

fn run(mut c: Command, stdin: &[u8]) -> Output {
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bramble");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("bramble output")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Succeeds, or fails the test with everything bramble said.
fn ok(o: Output, what: &str) -> Result<String, String> {
    if o.status.success() {
        Ok(String::from_utf8(o.stdout)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    } else {
        Err(format!(
            "{what}: {}\nstdout: {}\nstderr: {}",
            o.status,
            stdout(&o),
            stderr(&o)
        ))
    }
}

/// Fails with exit status 1 and one line on stderr containing `needle`.
fn fails(o: &Output, needle: &str, what: &str) -> Result<String, String> {
    let err = stderr(o);
    if o.status.code() != Some(1) {
        return Err(format!(
            "{what}: expected exit 1, got {}\nstdout: {}\nstderr: {err}",
            o.status,
            stdout(o)
        ));
    }
    if !err.contains(needle) || err.trim_end().lines().count() != 1 || !err.starts_with("bramble: ")
    {
        return Err(format!(
            "{what}: expected one error line containing {needle:?}, got:\n{err}"
        ));
    }
    Ok(err)
}

/// Polls `check` on `bramble ARGS` output until it holds.
fn wait_for(
    node: &Node,
    args: &[&str],
    what: &str,
    check: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = bramble(node, args);
        let out = stdout(&o);
        if o.status.success() && check(&out) {
            return Ok(out);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what}: never happened; last `bramble {}`: {out}{}\n{}",
                args.join(" "),
                stderr(&o),
                node.log_tail(30)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of `Key:` in `bramble describe`'s text.
fn field<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

fn status_of(node: &Node, name: &str) -> Result<Value, Box<dyn std::error::Error>> {
    let out = ok(
        bramble(node, &["describe", name, "--json"]),
        "describe --json",
    )?;
    Ok(serde_json::from_str(&out)?)
}

async fn functions_from_a_stack_file_end_to_end() -> TestResult {
    let node = node("cli-functions").await?;
    let dir = tempfile::tempdir()?;

    // The secret the stack file names exists first (a deployment naming a missing one fails).
    ok(
        bramble(
            &node,
            &["secret", "create", "api-key", "--from-literal", "s3cret"],
        ),
        "secret create",
    )?;

    // A faas-cli stack file: template keys, substitution with and without defaults, an
    // environment file, a secret, limits. Its gateway is used: no --gateway below.
    std::fs::write(
        dir.path().join("common.yml"),
        "environment:\n  FROM_FILE: file\n  OVERRIDDEN: by-file\n",
    )?;
    let stack = format!(
        r#"version: 1.0
provider:
  name: openfaas
  gateway: http://{addr}
configuration:
  templates:
    - name: golang-middleware
functions:
  greeter:
    lang: golang-middleware
    handler: ./greeter
    image: ${{IMAGE:-{FIXTURE}}}
    environment:
      BODY: ${{GREETING}}
      OVERRIDDEN: inline
    environment_file:
      - common.yml
    secrets:
      - api-key
    labels:
      app: greeter
    limits:
      memory: 64Mi
      cpu: 500m
"#,
        addr = node.addr()
    );
    let stack_file = dir.path().join("stack.yml");
    std::fs::write(&stack_file, &stack)?;
    let mut deploy = command(&node, &["deploy", "-f", stack_file.to_str().unwrap()]);
    deploy.env("GREETING", "hello from a stack file");
    let out = ok(run(deploy, b""), "deploy -f")?;
    assert_eq!(out, format!("deployed greeter ({FIXTURE})\n"));

    // Sync invocation: / answers BODY (substituted), the secret is mounted, env merged.
    let out = ok(
        bramble(&node, &["invoke", "greeter", "-m", "GET"]),
        "invoke /",
    )?;
    assert_eq!(out, "hello from a stack file");
    let secret = ok(
        bramble(
            &node,
            &[
                "invoke",
                "greeter",
                "--path",
                "/read",
                "--query",
                "path=/var/openfaas/secrets/api-key",
            ],
        ),
        "invoke /read",
    )?;
    assert_eq!(secret, "s3cret");
    let env = ok(
        bramble(&node, &["invoke", "greeter", "--path", "/env"]),
        "invoke /env",
    )?;
    assert!(
        env.contains("FROM_FILE=file\n") && env.contains("OVERRIDDEN=by-file\n"),
        "{env}"
    );
    // stdin is the body: /echo sends it back.
    let body = b"line one\nline two\x00binary\xff";
    let echoed = bramble_in(&node, &["invoke", "greeter", "--path", "echo"], body);
    assert!(echoed.status.success(), "{}", stderr(&echoed));
    assert_eq!(echoed.stdout, body);
    // Headers and query parameters reach the function.
    let headers = ok(
        bramble(
            &node,
            &[
                "invoke",
                "greeter",
                "--path",
                "/headers",
                "-H",
                "X-Test=yes",
                "-H",
                "X-Other: two words",
            ],
        ),
        "invoke /headers",
    )?;
    assert!(
        headers.contains("x-test: yes\n") && headers.contains("x-other: two words\n"),
        "{headers}"
    );

    // Deploying again is an update.
    let mut again = command(
        &node,
        &[
            "deploy",
            "-f",
            stack_file.to_str().unwrap(),
            "--env",
            "EXTRA=1",
        ],
    );
    again.env("GREETING", "hello again");
    assert_eq!(
        ok(run(again, b""), "deploy -f again")?,
        format!("updated greeter ({FIXTURE})\n")
    );
    let out = wait_for(
        &node,
        &["invoke", "greeter", "-m", "GET"],
        "the update",
        |o| o == "hello again",
    )?;
    assert_eq!(out, "hello again");

    // The flag-based deploy still works beside it.
    ok(
        bramble(
            &node,
            &[
                "deploy",
                "--name",
                "plain",
                "--image",
                FIXTURE,
                "--env",
                "BODY=plain",
            ],
        ),
        "deploy --name",
    )?;

    // list: human and JSON.
    let list = wait_for(&node, &["list"], "both functions ready", |o| {
        o.lines().filter(|l| l.contains(" 1/1 ")).count() == 2
    })?;
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "INVOCATIONS", "REPLICAS", "STATE", "IMAGE"],
        "{list}"
    );
    let greeter: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(greeter[0], "greeter", "{list}");
    assert!(
        greeter[1].parse::<u64>()? >= 5,
        "invocations counted: {list}"
    );
    assert_eq!(&greeter[2..], ["1/1", "ready", FIXTURE], "{list}");
    assert!(lines[2].starts_with("plain "), "{list}");
    let json: Value =
        serde_json::from_str(&ok(bramble(&node, &["list", "--json"]), "list --json")?)?;
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"greeter") && names.contains(&"plain"),
        "{json}"
    );

    // describe: human and JSON.
    let text = ok(bramble(&node, &["describe", "greeter"]), "describe")?;
    let status = status_of(&node, "greeter")?;
    assert_eq!(status["name"], "greeter");
    assert_eq!(status["bramble"]["state"], "ready");
    assert_eq!(status["availableReplicas"], 1);
    assert_eq!(status["envVars"]["BODY"], "hello again");
    let url = format!("http://{}/function/greeter", node.addr());
    let async_url = format!("http://{}/async-function/greeter", node.addr());
    for (key, value) in [
        ("Name", "greeter"),
        ("Namespace", "openfaas-fn"),
        ("Image", FIXTURE),
        ("State", "ready"),
        ("Replicas", "1 available, 1 desired"),
        ("Restarts", "0"),
        ("Secrets", "api-key"),
        ("URL", &url),
        ("Async URL", &async_url),
    ] {
        assert_eq!(field(&text, key), Some(value), "{key} in describe:\n{text}");
    }
    if status["limits"]["memory"] == "64Mi" {
        assert_eq!(
            field(&text, "Limits"),
            Some("memory 64Mi, cpu 500m"),
            "{text}"
        );
    }
    if let Some(cpu) = status["usage"]["cpu"].as_f64() {
        // Millicores averaged up to the moment of each read: describe's read and this one
        // differ a little, never by an order of magnitude.
        let shown = field(&text, "Usage").and_then(|u| {
            u.strip_prefix("cpu ")?
                .split_once("m, ")?
                .0
                .parse::<f64>()
                .ok()
        });
        assert!(
            shown.is_some_and(|m| (m - cpu).abs() <= 0.5 * m.max(cpu) + 0.5),
            "usage.cpu {cpu}:\n{text}"
        );
    }
    assert!(
        field(&text, "Invocations").is_some_and(|n| n.parse::<u64>().is_ok()),
        "{text}"
    );
    for needle in [
        "Environment:\n",
        "  BODY=hello again\n",
        "  EXTRA=1\n",
        "Labels:\n  app=greeter\n",
    ] {
        assert!(
            text.contains(needle),
            "{needle:?} missing in describe:\n{text}"
        );
    }

    // Logs: a printed line shows up as TIMESTAMP INSTANCE TEXT.
    ok(
        bramble(
            &node,
            &[
                "invoke",
                "greeter",
                "--path",
                "/log",
                "--query",
                "line=cli sync line",
            ],
        ),
        "invoke /log",
    )?;
    let logs = wait_for(
        &node,
        &["logs", "greeter", "--tail", "20"],
        "the log line",
        |o| o.contains("cli sync line"),
    )?;
    let line = logs
        .lines()
        .find(|l| l.ends_with(" cli sync line"))
        .unwrap();
    let fields: Vec<&str> = line.splitn(3, ' ').collect();
    assert!(
        fields[0].starts_with("20") && fields[0].ends_with('Z'),
        "{line}"
    );
    assert!(!fields[1].is_empty(), "{line}");
    let json_logs = ok(
        bramble(
            &node,
            &[
                "logs", "greeter", "--tail", "20", "--json", "--since", "10m",
            ],
        ),
        "logs --json",
    )?;
    let parsed: Vec<Value> = json_logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        parsed.iter().any(|l| l["text"] == "cli sync line"),
        "{json_logs}"
    );
    assert!(parsed.len() <= 20);

    // Async: the call id is printed, the call runs later.
    let call_id = ok(
        bramble(
            &node,
            &[
                "invoke",
                "greeter",
                "--async",
                "--path",
                "/log",
                "--query",
                "line=cli async line",
            ],
        ),
        "invoke --async",
    )?;
    assert!(
        !call_id.trim().is_empty() && call_id.ends_with('\n') && call_id.lines().count() == 1,
        "{call_id:?}"
    );
    wait_for(
        &node,
        &["logs", "greeter", "--tail", "50"],
        "the async call",
        |o| o.contains("cli async line"),
    )?;

    // --follow streams new lines as they come.
    follow_logs(&node)?;

    // Scale to zero and back.
    assert_eq!(
        ok(bramble(&node, &["scale", "greeter", "0"]), "scale 0")?,
        "scaled greeter to 0 replicas\n"
    );
    wait_for(&node, &["list"], "scaled to zero", |o| {
        o.lines()
            .any(|l| l.starts_with("greeter ") && l.contains(" 0/0 "))
    })?;
    assert_eq!(
        ok(bramble(&node, &["scale", "greeter", "1"]), "scale 1")?,
        "scaled greeter to 1 replica\n"
    );
    wait_for(&node, &["list"], "scaled back", |o| {
        o.lines()
            .any(|l| l.starts_with("greeter ") && l.contains(" 1/1 "))
    })?;
    assert_eq!(
        ok(
            bramble(&node, &["invoke", "greeter", "-m", "GET"]),
            "invoke after scale"
        )?,
        "hello again"
    );

    // rm.
    assert_eq!(
        ok(bramble(&node, &["rm", "greeter"]), "rm")?,
        "removed greeter\n"
    );
    ok(bramble(&node, &["rm", "plain"]), "rm plain")?;
    assert_eq!(
        ok(bramble(&node, &["list"]), "list after rm")?,
        "no functions\n"
    );
    fails(
        &bramble(&node, &["describe", "greeter"]),
        "not found",
        "describe after rm",
    )?;
    Ok(())
}

/// `bramble logs --follow` prints a line logged after it started, then is stopped.
fn follow_logs(node: &Node) -> Result<(), String> {
    let gateway = format!("http://{}", node.addr());
    let mut child = command(
        node,
        &[
            "logs",
            "greeter",
            "--follow",
            "--tail",
            "0",
            "--gateway",
            &gateway,
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut n = 0;
    let found = loop {
        // Logged repeatedly: the first may land before the stream is attached.
        n += 1;
        ok(
            bramble(
                node,
                &[
                    "invoke",
                    "greeter",
                    "--path",
                    "/log",
                    "--query",
                    &format!("line=followed {n}"),
                ],
            ),
            "invoke /log",
        )?;
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) if line.contains(" followed ") => break true,
            Ok(line) => seen.push(line),
            Err(_) if Instant::now() > deadline => break false,
            Err(_) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("logs --follow exited early: {status}"));
        }
    };
    let still_running = child.try_wait().map_err(|e| e.to_string())?.is_none();
    let _ = child.kill();
    let _ = child.wait();
    if !found {
        return Err(format!(
            "logs --follow never printed a followed line; printed {seen:?}"
        ));
    }
    if !still_running {
        return Err("logs --follow ended by itself".into());
    }
    Ok(())
}

async fn secrets_are_created_listed_and_removed_never_printed() -> TestResult {
    let node = node("cli-secrets").await?;
    let dir = tempfile::tempdir()?;
    let values: [&[u8]; 3] = [
        b"literal-s3cret",
        b"stdin-s3cret",
        b"\x00\x01file-s3cret\xff",
    ];

    let mut said = Vec::new();
    let o = bramble(
        &node,
        &[
            "secret",
            "create",
            "from-literal",
            "--from-literal",
            "literal-s3cret",
        ],
    );
    said.push(ok(o, "create --from-literal")?);
    let o = bramble_in(
        &node,
        &["secret", "create", "from-stdin"],
        b"stdin-s3cret\n",
    );
    said.push(ok(o, "create from stdin")?);
    let file = dir.path().join("value.bin");
    std::fs::write(&file, values[2])?;
    let o = bramble(
        &node,
        &[
            "secret",
            "create",
            "from-file",
            "--from-file",
            file.to_str().unwrap(),
        ],
    );
    said.push(ok(o, "create --from-file")?);
    assert_eq!(said[0], "created secret from-literal\n");

    let list = ok(bramble(&node, &["secret", "list"]), "secret list")?;
    assert_eq!(
        list,
        "NAME          NAMESPACE\nfrom-file     openfaas-fn\nfrom-literal  openfaas-fn\nfrom-stdin    openfaas-fn\n"
    );
    let json = ok(
        bramble(&node, &["secret", "list", "--json"]),
        "secret list --json",
    )?;
    let parsed: Value = serde_json::from_str(&json)?;
    assert_eq!(parsed.as_array().map(Vec::len), Some(3), "{json}");
    said.push(list);
    said.push(json);

    // The values reached the functions as they were given (stdin without its newline).
    ok(
        bramble(
            &node,
            &[
                "deploy",
                "--name",
                "reader",
                "--image",
                FIXTURE,
                "--secret",
                "from-literal",
                "--secret",
                "from-stdin",
                "--secret",
                "from-file",
            ],
        ),
        "deploy reader",
    )?;
    for (name, value) in ["from-literal", "from-stdin", "from-file"]
        .iter()
        .zip(values)
    {
        let o = bramble(
            &node,
            &[
                "invoke",
                "reader",
                "--path",
                "/read",
                "--query",
                &format!("path=/var/openfaas/secrets/{name}"),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(o.stdout, value, "{name}");
    }
    ok(bramble(&node, &["rm", "reader"]), "rm reader")?;

    let o = bramble(&node, &["secret", "rm", "from-literal"]);
    said.push(ok(o, "secret rm")?);
    assert_eq!(said.last().unwrap(), "removed secret from-literal\n");
    let list = ok(bramble(&node, &["secret", "list"]), "secret list")?;
    assert!(
        !list.contains("from-literal") && list.contains("from-stdin"),
        "{list}"
    );

    // Errors: nothing to read, bad name.
    said.push(fails(
        &bramble(&node, &["secret", "create", "empty"]),
        "is empty",
        "empty stdin",
    )?);
    said.push(fails(
        &bramble(
            &node,
            &[
                "secret",
                "create",
                "../x",
                "--from-literal",
                "literal-s3cret",
            ],
        ),
        "secret name",
        "bad name",
    )?);

    for text in &said {
        assert!(
            !text.contains("s3cret"),
            "a secret value was printed: {text}"
        );
    }
    Ok(())
}

async fn errors_are_one_line_and_exit_1() -> TestResult {
    let node = node("cli-errors").await?;
    let dir = tempfile::tempdir()?;
    let stack_file = dir.path().join("stack.yml");
    let path = stack_file.to_str().unwrap();

    // A misspelt key names the function, the key and the fix; nothing is deployed.
    std::fs::write(
        &stack_file,
        format!(
            "provider:\n  name: openfaas\nfunctions:\n  f:\n    image: {FIXTURE}\n    enviroment:\n      A: b\n"
        ),
    )?;
    fails(
        &bramble(&node, &["deploy", "-f", path]),
        "functions.f: unknown key \"enviroment\" (did you mean \"environment\"?)",
        "unknown key",
    )?;
    // An unset variable is named.
    std::fs::write(
        &stack_file,
        format!(
            "provider:\n  name: openfaas\nfunctions:\n  f:\n    image: {FIXTURE}\n    environment:\n      A: ${{SURELY_NOT_SET_ANYWHERE}}\n"
        ),
    )?;
    fails(
        &bramble(&node, &["deploy", "-f", path]),
        "functions.f.environment.A: ${SURELY_NOT_SET_ANYWHERE} is not set",
        "unset variable",
    )?;
    // A bad limit is refused before anything is sent.
    std::fs::write(
        &stack_file,
        format!(
            "provider:\n  name: openfaas\nfunctions:\n  f:\n    image: {FIXTURE}\n    limits:\n      memory: lots\n"
        ),
    )?;
    fails(
        &bramble(&node, &["deploy", "-f", path]),
        "functions.f.limits.memory: ",
        "bad limit",
    )?;
    assert_eq!(ok(bramble(&node, &["list"]), "list")?, "no functions\n");

    // Several functions: one the gateway refuses (its secret does not exist) does not stop
    // the others; each failure is a line, then a summary, exit 1.
    std::fs::write(
        &stack_file,
        format!(
            "provider:\n  name: openfaas\nfunctions:\n  good:\n    image: {FIXTURE}\n  needs-secret:\n    image: {FIXTURE}\n    secrets: [missing]\n"
        ),
    )?;
    let o = bramble(&node, &["deploy", "-f", path]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(stdout(&o), format!("deployed good ({FIXTURE})\n"));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("bramble: deploying needs-secret: ") && lines[0].contains("missing"),
        "{err}"
    );
    assert_eq!(
        lines[1],
        "bramble: 1 of 2 functions failed to deploy: needs-secret"
    );
    ok(bramble(&node, &["rm", "good"]), "rm good")?;

    // Wrong credentials: the hint says where they came from.
    let gateway = format!("http://{}", node.addr());
    let mut c = command(&node, &["list", "--gateway", &gateway]);
    c.env("BRAMBLE_PASSWORD", "wrong");
    fails(
        &run(c, b""),
        "the gateway refused the credentials (from $BRAMBLE_USER and $BRAMBLE_PASSWORD)",
        "wrong credentials",
    )?;
    let mut c = command(
        &node,
        &[
            "deploy",
            "--name",
            "f",
            "--image",
            FIXTURE,
            "--gateway",
            &gateway,
        ],
    );
    c.env("BRAMBLE_PASSWORD", "wrong");
    fails(
        &run(c, b""),
        "refused the credentials",
        "wrong credentials on deploy",
    )?;

    // A function's non-2xx answer: exit 1 with the status, its body as the message.
    ok(
        bramble(&node, &["deploy", "--name", "f", "--image", FIXTURE]),
        "deploy",
    )?;
    fails(
        &bramble(
            &node,
            &["invoke", "f", "--path", "/status", "--query", "code=418"],
        ),
        "f answered 418 I'm a teapot: status 418",
        "non-2xx",
    )?;
    fails(
        &bramble(&node, &["invoke", "nope"]),
        "nope answered 404 Not Found",
        "unknown function",
    )?;
    fails(
        &bramble(&node, &["logs", "f", "--since", "yesterday"]),
        "--since \"yesterday\"",
        "bad --since",
    )?;
    fails(
        &bramble(&node, &["scale", "nope", "1"]),
        "not found",
        "scale unknown",
    )?;

    // No node there: says which address it tried.
    let c = command(&node, &["list", "--gateway", "http://127.0.0.1:9"]);
    fails(
        &run(c, b""),
        "cannot reach the bramble gateway at http://127.0.0.1:9",
        "unreachable",
    )?;
    Ok(())
}

/// One JSON object on one line.
fn json_line(text: &str) -> Result<Value, String> {
    if text.lines().count() != 1 || !text.ends_with('\n') {
        return Err(format!("expected one line of JSON, got {text:?}"));
    }
    serde_json::from_str(text).map_err(|e| format!("{e}: {text:?}"))
}

async fn an_image_built_and_imported_by_the_cli_serves_and_write_commands_speak_json() -> TestResult
{
    const BUILT: &str = "docker.io/library/built:1";
    let node = node("cli-images").await?;
    let dir = tempfile::tempdir()?;
    let binary = bramble_testkit::fixture_binary()?;
    let archive = dir.path().join("x.tar");
    let (binary, archive_arg) = (binary.to_str().unwrap(), archive.to_str().unwrap());

    // Built without Docker from the static fixture binary (a local command: no --gateway).
    let build = |args: &[&str]| run(command(&node, &[&["image", "build"], args].concat()), b"");
    let out = ok(
        build(&[
            "--binary",
            binary,
            "--name",
            "built:1",
            "--output",
            archive_arg,
        ]),
        "image build",
    )?;
    assert!(
        out.starts_with(&format!("built {BUILT} for linux/")),
        "{out}"
    );
    let size = std::fs::metadata(&archive)?.len();
    assert!(
        out.contains(&format!("({size} bytes, manifest sha256:")),
        "{out}"
    );
    let json_archive = dir.path().join("y.tar");
    let built = json_line(&ok(
        build(&[
            "--binary",
            binary,
            "--name",
            "built:1",
            "--output",
            json_archive.to_str().unwrap(),
            "--json",
        ]),
        "image build --json",
    )?)?;
    assert_eq!(built["image"], BUILT, "{built}");
    assert_eq!(
        built["size"],
        std::fs::metadata(&json_archive)?.len(),
        "{built}"
    );
    assert!(
        built["manifest"].as_str().unwrap().starts_with("sha256:"),
        "{built}"
    );

    // Uploaded through the API: the way to deploy with no registry.
    assert_eq!(
        ok(
            bramble(&node, &["image", "import", archive_arg]),
            "image import"
        )?,
        format!("imported {BUILT}\n")
    );
    let imported = json_line(&ok(
        bramble(
            &node,
            &[
                "image",
                "import",
                archive_arg,
                "--name",
                "built:2",
                "--json",
            ],
        ),
        "image import --json",
    )?)?;
    assert_eq!(
        imported,
        serde_json::json!({"images": ["docker.io/library/built:2"], "action": "imported"})
    );
    let list = ok(bramble(&node, &["image", "list"]), "image list")?;
    assert!(
        list.lines().any(|l| l.starts_with(&format!("{BUILT} "))),
        "{list}"
    );
    let images: Value = serde_json::from_str(&ok(
        bramble(&node, &["image", "list", "--json"]),
        "image list --json",
    )?)?;
    assert!(
        images
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == BUILT),
        "{images}"
    );

    // Deployed and invoked; deploy says whether it created or updated.
    let deployed = json_line(&ok(
        bramble(
            &node,
            &[
                "deploy",
                "--name",
                "built",
                "--image",
                BUILT,
                "--env",
                "BODY=from the cli",
                "--json",
            ],
        ),
        "deploy --json",
    )?)?;
    assert_eq!(
        deployed,
        serde_json::json!({"function": "built", "image": BUILT, "action": "deployed"})
    );
    assert_eq!(
        ok(bramble(&node, &["invoke", "built", "-m", "GET"]), "invoke")?,
        "from the cli"
    );
    let updated = json_line(&ok(
        bramble(
            &node,
            &[
                "deploy",
                "--name",
                "built",
                "--image",
                BUILT,
                "--env",
                "BODY=again",
                "--json",
            ],
        ),
        "deploy --json again",
    )?)?;
    assert_eq!(updated["action"], "updated", "{updated}");
    wait_for(
        &node,
        &["invoke", "built", "-m", "GET"],
        "the update",
        |o| o == "again",
    )?;

    // The other write commands.
    let queued = json_line(&ok(
        bramble(&node, &["invoke", "built", "--async", "--json"]),
        "invoke --async --json",
    )?)?;
    assert_eq!(queued["function"], "built", "{queued}");
    assert!(
        queued["callId"]
            .as_str()
            .is_some_and(|id| !id.is_empty() && id != "-"),
        "{queued}"
    );
    fails(
        &bramble(&node, &["invoke", "built", "--json"]),
        "--async",
        "--json without --async",
    )?;
    assert_eq!(
        json_line(&ok(
            bramble(&node, &["scale", "built", "0", "--json"]),
            "scale --json"
        )?)?,
        serde_json::json!({"function": "built", "replicas": 0, "action": "scaled"})
    );

    // An image in use is not removed; once unused it is.
    fails(
        &bramble(&node, &["image", "rm", "built:1"]),
        "is used by: built.openfaas-fn",
        "image rm while used",
    )?;
    assert!(
        ok(bramble(&node, &["image", "list"]), "image list")?.contains(BUILT),
        "a refused rm keeps the image"
    );
    assert_eq!(
        json_line(&ok(
            bramble(&node, &["rm", "built", "--json"]),
            "rm --json"
        )?)?,
        serde_json::json!({"function": "built", "action": "removed"})
    );
    assert_eq!(
        ok(bramble(&node, &["image", "rm", "built:1"]), "image rm")?,
        "removed built:1\n"
    );
    assert_eq!(
        json_line(&ok(
            bramble(&node, &["image", "rm", "built:2", "--json"]),
            "image rm --json"
        )?)?,
        serde_json::json!({"image": "built:2", "action": "removed"})
    );
    let list = ok(bramble(&node, &["image", "list"]), "image list after rm")?;
    assert!(!list.contains("/built:"), "{list}");

    // Secrets: the result names the secret, never the value.
    let created = ok(
        bramble(
            &node,
            &[
                "secret",
                "create",
                "k",
                "--from-literal",
                "s3cret",
                "--json",
            ],
        ),
        "secret create --json",
    )?;
    assert_eq!(
        json_line(&created)?,
        serde_json::json!({"secret": "k", "action": "created"})
    );
    assert_eq!(
        json_line(&ok(
            bramble(&node, &["secret", "rm", "k", "--json"]),
            "secret rm --json"
        )?)?,
        serde_json::json!({"secret": "k", "action": "removed"})
    );
    Ok(())
}

/// Lines of a child's output, as they come.
fn lines_of(reader: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

async fn gpio_set_get_and_watch_on_a_simulator_node() -> TestResult {
    let node = Node::with_fixture(
        Path::new(BRAMBLE),
        "cli-gpio",
        "hardware = { backend = \"simulator\" }",
    )
    .await?;

    assert_eq!(
        ok(bramble(&node, &["gpio", "set", "GPIO17", "1"]), "gpio set")?,
        "GPIO17 = 1\n"
    );
    let text = ok(bramble(&node, &["gpio", "get", "GPIO17"]), "gpio get")?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], "backend: simulator", "{text}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            "LINE",
            "DIRECTION",
            "LEVEL",
            "BIAS",
            "DEBOUNCE",
            "FUNCTIONS"
        ],
        "{text}"
    );
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!((row[0], row[2]), ("GPIO17", "1"), "{text}");
    let json: Value = serde_json::from_str(&ok(
        bramble(&node, &["gpio", "get", "GPIO17", "--json"]),
        "gpio get --json",
    )?)?;
    assert_eq!(json["backend"], "simulator", "{json}");
    let listed = json["lines"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{json}");
    assert_eq!(
        (&listed[0]["name"], &listed[0]["level"]),
        (&"GPIO17".into(), &1.into())
    );
    assert_eq!(
        json_line(&ok(
            bramble(&node, &["gpio", "set", "GPIO17", "1", "--json"]),
            "gpio set --json"
        )?)?,
        serde_json::json!({"line": "GPIO17", "level": 1})
    );
    fails(
        &bramble(&node, &["gpio", "get", "GPIO99"]),
        "no GPIO line named GPIO99",
        "unknown line",
    )?;

    // watch prints the edge of a set made after it started.
    let gateway = format!("http://{}", node.addr());
    let mut child = command(&node, &["gpio", "watch", "GPIO17", "--gateway", &gateway])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = lines_of(child.stdout.take().ok_or("no stdout")?);
    let stderr = lines_of(child.stderr.take().ok_or("no stderr")?);
    let result = (|| -> Result<String, String> {
        // Printed once the node answered the watch: it is subscribed from then on.
        let said = stderr
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "gpio watch never said it was watching".to_owned())?;
        if said != "watching GPIO17 (Ctrl-C to stop)" {
            return Err(format!("gpio watch said {said:?}"));
        }
        ok(
            bramble(&node, &["gpio", "set", "GPIO17", "0"]),
            "gpio set 0",
        )?;
        stdout
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "gpio watch printed no edge".to_owned())
    })();
    let _ = child.kill();
    let _ = child.wait();
    let edge = result?;
    let fields: Vec<&str> = edge.split(' ').collect();
    assert_eq!(fields.len(), 6, "{edge}");
    assert!(fields[0].parse::<f64>().is_ok(), "a timestamp: {edge}");
    assert_eq!(&fields[1..4], ["GPIO17", "falling", "level=0"], "{edge}");
    assert!(
        fields[4].starts_with("seqno=") && fields[5].starts_with("line_seqno="),
        "{edge}"
    );
    Ok(())
}
