//! `bramble list|describe|invoke|logs|rm|scale`: the function commands, over the OpenFaaS API
//! like faas-cli's. Read commands print a table or text for people and, with `--json`, the
//! gateway's JSON unchanged for machines; write commands print a line for people and, with
//! `--json`, one JSON object per line saying what was done.

use std::io::{IsTerminal as _, Write as _};

use anyhow::{Context as _, bail};
use bramble_gateway::types::{
    DeleteFunctionRequest, FunctionResources, FunctionStatus, LogMessage, ScaleServiceRequest,
};
use bramble_gateway::validate;
use futures::StreamExt as _;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};

use super::client::{Client, Target};
use super::key_value;

/// Longest log line accepted from the gateway.
const MAX_LOG_LINE: usize = 4 << 20;
/// How much of a failed invocation's body the error shows.
const MAX_ERROR_BODY: usize = 2048;

#[derive(clap::Subcommand, Debug)]
pub(crate) enum FunctionCommand {
    /// List the functions: invocations, replicas, state, image.
    #[command(visible_alias = "ls")]
    List(Box<ListArgs>),
    /// Show everything about a function: status, restarts, last exit, usage, URLs.
    Describe(Box<NameArgs>),
    /// Call a function: the body from stdin, the answer to stdout.
    Invoke(Box<InvokeArgs>),
    /// Print a function's logs (and follow them with --follow).
    Logs(Box<LogsArgs>),
    /// Remove a function.
    #[command(visible_alias = "remove")]
    Rm(Box<RmArgs>),
    /// Set the number of replicas of a function (0 stops it; a request starts it again).
    Scale(Box<ScaleArgs>),
}

#[derive(clap::Args, Debug)]
pub(crate) struct ListArgs {
    /// Namespace (default: the node's default).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Print the gateway's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub(crate) struct NameArgs {
    /// Function name.
    name: String,
    /// Namespace (default: the node's default).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Print the gateway's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub(crate) struct RmArgs {
    /// Function name.
    name: String,
    /// Namespace (default: the node's default).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Print the result as JSON: {"function","action":"removed"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub(crate) struct InvokeArgs {
    /// Function name.
    name: String,
    /// Namespace (default: the node's default).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Queue the call (POST /async-function) and print its call id.
    #[arg(long = "async")]
    asynchronous: bool,
    /// HTTP method.
    #[arg(long, short = 'm', default_value = "POST")]
    method: String,
    /// Request header KEY=VALUE or "KEY: VALUE" (repeatable).
    #[arg(long = "header", short = 'H', value_parser = header)]
    headers: Vec<(String, String)>,
    /// Query parameter KEY=VALUE (repeatable).
    #[arg(long, value_parser = key_value)]
    query: Vec<(String, String)>,
    /// Path below the function, e.g. /echo.
    #[arg(long)]
    path: Option<String>,
    /// Content type of the body.
    #[arg(long, default_value = "text/plain")]
    content_type: String,
    /// With --async: print {"function","callId"} (a synchronous call prints the answer).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub(crate) struct LogsArgs {
    /// Function name.
    name: String,
    /// Namespace (default: the node's default).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Keep printing new lines until interrupted.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    /// Only lines newer than a duration (10m, 1h30m) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only this instance's lines.
    #[arg(long)]
    instance: Option<String>,
    /// Print the gateway's NDJSON lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ScaleArgs {
    /// Function name.
    name: String,
    /// Number of replicas.
    replicas: u64,
    /// Namespace (default: the node's default).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Print the result as JSON: {"function","replicas","action":"scaled"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

pub(crate) async fn run(command: FunctionCommand) -> anyhow::Result<()> {
    match command {
        FunctionCommand::List(args) => list(&args).await,
        FunctionCommand::Describe(args) => describe(&args).await,
        FunctionCommand::Invoke(args) => invoke(&args).await,
        FunctionCommand::Logs(args) => logs(&args).await,
        FunctionCommand::Rm(args) => remove(&args).await,
        FunctionCommand::Scale(args) => scale(&args).await,
    }
}

/// `KEY=VALUE` or `KEY: VALUE` (header names hold neither `=` nor `:`).
fn header(s: &str) -> Result<(String, String), String> {
    let split = s.find(['=', ':']).map(|at| (&s[..at], &s[at + 1..]));
    match split {
        Some((k, v)) if !k.trim().is_empty() => {
            Ok((k.trim().to_owned(), v.trim_start().to_owned()))
        }
        _ => Err(format!("{s:?} is not KEY=VALUE or \"KEY: VALUE\"")),
    }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    validate::function_name(name).map_err(anyhow::Error::msg)
}

fn with_namespace(
    builder: reqwest::RequestBuilder,
    namespace: Option<&str>,
) -> reqwest::RequestBuilder {
    match namespace {
        Some(ns) => builder.query(&[("namespace", ns)]),
        None => builder,
    }
}

// ---------------------------------------------------------------------------------------------
// list, describe
// ---------------------------------------------------------------------------------------------

async fn list(args: &ListArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.target)?;
    let request = with_namespace(
        client.request(Method::GET, "/system/functions"),
        args.namespace.as_deref(),
    );
    let value = json_answer(&client, request, "/system/functions").await?;
    if args.json {
        return print_json(&value);
    }
    let functions: Vec<FunctionStatus> = serde_json::from_value(value)
        .context("the gateway's list of functions is not what bramble expects")?;
    out(&format_list(&functions))
}

async fn describe(args: &NameArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let client = Client::new(&args.target)?;
    let path = format!("/system/function/{}", args.name);
    let request = with_namespace(
        client.request(Method::GET, &path),
        args.namespace.as_deref(),
    )
    .query(&[("usage", "1")]);
    let value = json_answer(&client, request, &path).await?;
    if args.json {
        return print_json(&value);
    }
    let status: FunctionStatus = serde_json::from_value(value).with_context(|| {
        format!(
            "the gateway's status of {} is not what bramble expects",
            args.name
        )
    })?;
    let target = match &args.namespace {
        Some(ns) => format!("{}.{ns}", args.name),
        None => args.name.clone(),
    };
    let urls = (
        format!("{}/function/{target}", client.base()),
        format!("{}/async-function/{target}", client.base()),
    );
    out(&format_describe(&status, &urls.0, &urls.1))
}

async fn json_answer(
    client: &Client,
    request: reqwest::RequestBuilder,
    what: &str,
) -> anyhow::Result<serde_json::Value> {
    client
        .send(request)
        .await?
        .json()
        .await
        .with_context(|| format!("the gateway's answer to {what} is not JSON"))
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("printing JSON")?;
    text.push('\n');
    out(&text)
}

/// `1/1`: available/desired.
fn replicas(f: &FunctionStatus) -> String {
    format!("{}/{}", f.available_replicas, f.replicas)
}

fn state(f: &FunctionStatus) -> &'static str {
    f.bramble.as_ref().map_or("-", |b| b.state.as_str())
}

fn count(n: f64) -> String {
    if n.is_finite() && n >= 0.0 {
        format!("{n:.0}")
    } else {
        "-".into()
    }
}

/// The table of `bramble list`.
pub(crate) fn format_list(functions: &[FunctionStatus]) -> String {
    if functions.is_empty() {
        return "no functions\n".into();
    }
    let mut sorted: Vec<&FunctionStatus> = functions.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let rows = sorted
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                count(f.invocation_count),
                replicas(f),
                state(f).to_owned(),
                f.image.clone(),
            ]
        })
        .collect();
    table(&["NAME", "INVOCATIONS", "REPLICAS", "STATE", "IMAGE"], rows)
}

/// Left-aligned columns two spaces apart; the last column is not padded.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut text = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(header).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i < last {
                let width = widths.get(i).copied().unwrap_or(0);
                line.extend(std::iter::repeat_n(
                    ' ',
                    width.saturating_sub(cell.chars().count()) + 2,
                ));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn resources(r: Option<&FunctionResources>) -> Option<String> {
    let r = r?;
    let parts: Vec<String> = [("memory", &r.memory), ("cpu", &r.cpu)]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Millicores (`usage.cpu`) as limits are written: `12.5m`.
fn millicores(m: f64) -> String {
    if m.is_finite() && m >= 0.0 {
        format!("{m:.1}m")
    } else {
        "-".into()
    }
}

/// `3.1 MiB`.
pub(crate) fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if !n.is_finite() || n < 0.0 {
        return "-".into();
    }
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The text of `bramble describe`.
pub(crate) fn format_describe(f: &FunctionStatus, url: &str, async_url: &str) -> String {
    let mut fields: Vec<(&str, String)> = vec![
        ("Name", f.name.clone()),
        (
            "Namespace",
            f.namespace.clone().unwrap_or_else(|| "-".into()),
        ),
        ("Image", f.image.clone()),
        ("State", state(f).to_owned()),
        (
            "Replicas",
            format!("{} available, {} desired", f.available_replicas, f.replicas),
        ),
        ("Invocations", count(f.invocation_count)),
    ];
    if let Some(b) = &f.bramble {
        fields.push(("Restarts", b.restarts.to_string()));
        if let Some(exit) = &b.last_exit {
            fields.push(("Last exit", exit.to_string()));
        }
        if let Some(message) = &b.message {
            fields.push(("Message", message.clone()));
        }
    }
    if let Some(created) = &f.created_at {
        fields.push(("Created", created.clone()));
    }
    if let Some(process) = &f.env_process {
        fields.push(("Process", process.clone()));
    }
    if let Some(limits) = resources(f.limits.as_ref()) {
        fields.push(("Limits", limits));
    }
    if let Some(requests) = resources(f.requests.as_ref()) {
        fields.push(("Requests", requests));
    }
    if f.read_only_root_filesystem {
        fields.push(("Read-only root", "yes".into()));
    }
    if let Some(usage) = &f.usage {
        fields.push((
            "Usage",
            format!(
                "cpu {}, memory {}",
                millicores(usage.cpu),
                bytes(usage.total_memory_bytes)
            ),
        ));
    }
    if !f.secrets.is_empty() {
        fields.push(("Secrets", f.secrets.join(", ")));
    }
    if !f.constraints.is_empty() {
        fields.push(("Constraints", f.constraints.join(", ")));
    }
    fields.push(("URL", url.to_owned()));
    fields.push(("Async URL", async_url.to_owned()));

    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut text = String::new();
    for (key, value) in &fields {
        text.push_str(&format!("{:<width$} {value}\n", format!("{key}:")));
    }
    for (title, map) in [
        ("Environment", &f.env_vars),
        ("Labels", &f.labels),
        ("Annotations", &f.annotations),
    ] {
        if !map.is_empty() {
            text.push_str(&format!("{title}:\n"));
            for (k, v) in map {
                text.push_str(&format!("  {k}={v}\n"));
            }
        }
    }
    text
}

// ---------------------------------------------------------------------------------------------
// invoke
// ---------------------------------------------------------------------------------------------

async fn invoke(args: &InvokeArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let client = Client::new(&args.target)?;
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| anyhow::anyhow!("{:?} is not an HTTP method", args.method))?;
    if args.asynchronous && method != Method::POST {
        bail!("--async calls are POST requests (got -m {method})");
    }
    if args.json && !args.asynchronous {
        bail!("--json prints the call id of an --async call; a synchronous call prints the answer");
    }
    let target = match &args.namespace {
        Some(ns) => format!("{}.{ns}", args.name),
        None => args.name.clone(),
    };
    let sub = match args.path.as_deref() {
        None | Some("") => String::new(),
        Some(p) if p.starts_with('/') => p.to_owned(),
        Some(p) => format!("/{p}"),
    };
    if sub.contains(['?', '#']) {
        bail!("--path {sub:?}: give query parameters with --query K=V");
    }
    let prefix = if args.asynchronous {
        "async-function"
    } else {
        "function"
    };
    let mut request = client
        .request(method, &format!("/{prefix}/{target}{sub}"))
        .query(&args.query);
    let mut has_content_type = false;
    for (k, v) in &args.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| anyhow::anyhow!("-H {k:?}: not a header name"))?;
        let value =
            HeaderValue::from_str(v).map_err(|_| anyhow::anyhow!("-H {k}: not a header value"))?;
        has_content_type |= name == CONTENT_TYPE;
        request = request.header(name, value);
    }
    if !has_content_type {
        request = request.header(CONTENT_TYPE, &args.content_type);
    }
    request = request.body(stdin_body()?);

    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the bramble gateway at {}", client.base()))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.bytes().await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]);
        let text = text.trim();
        if text.is_empty() {
            bail!("{target} answered {status}");
        }
        bail!("{target} answered {status}: {text}");
    }
    if args.asynchronous {
        let call_id = response
            .headers()
            .get("x-call-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let value = serde_json::json!({"function": target, "callId": call_id});
        return report(args.json, &format!("{call_id}\n"), &value);
    }
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("reading the answer of {target}"))?;
        out_bytes(&chunk)?;
    }
    Ok(())
}

/// stdin, streamed, when it is not a terminal; nothing otherwise.
fn stdin_body() -> anyhow::Result<reqwest::Body> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(reqwest::Body::from(Vec::new()));
    }
    let fd = std::os::fd::AsFd::as_fd(&stdin)
        .try_clone_to_owned()
        .context("reading stdin")?;
    let file = tokio::fs::File::from_std(std::fs::File::from(fd));
    Ok(reqwest::Body::wrap_stream(
        tokio_util::io::ReaderStream::new(file),
    ))
}

// ---------------------------------------------------------------------------------------------
// logs
// ---------------------------------------------------------------------------------------------

/// `--since`: a duration ago, or an RFC 3339 time passed on as it is.
fn since(text: &str, now: std::time::SystemTime) -> anyhow::Result<String> {
    if let Ok(ago) = humantime::parse_duration(text) {
        let at = now.checked_sub(ago).unwrap_or(std::time::UNIX_EPOCH);
        return Ok(humantime::format_rfc3339_seconds(at).to_string());
    }
    // humantime reads `Z` times; an offset (+02:00) is checked on the part before it.
    let local = match text
        .len()
        .checked_sub(6)
        .and_then(|at| text.get(at..).map(|o| (at, o)))
    {
        Some((at, offset))
            if (offset.starts_with('+') || offset.starts_with('-'))
                && offset.as_bytes().get(3) == Some(&b':') =>
        {
            text.get(..at).unwrap_or(text)
        }
        _ => text,
    };
    if humantime::parse_rfc3339_weak(local.trim_end_matches(['Z', 'z'])).is_ok() {
        Ok(text.to_owned())
    } else {
        bail!(
            "--since {text:?}: give a duration (10m, 1h30m) or an RFC 3339 time (2024-05-01T10:00:00Z)"
        )
    }
}

async fn logs(args: &LogsArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let client = Client::new(&args.target)?;
    let mut query: Vec<(&str, String)> = vec![("name", args.name.clone())];
    if let Some(ns) = &args.namespace {
        query.push(("namespace", ns.clone()));
    }
    if let Some(tail) = args.tail {
        query.push(("tail", tail.to_string()));
    }
    if let Some(text) = &args.since {
        query.push(("since", since(text, std::time::SystemTime::now())?));
    }
    if let Some(instance) = &args.instance {
        query.push(("instance", instance.clone()));
    }
    query.push(("follow", args.follow.to_string()));
    let response = client
        .send(client.request(Method::GET, "/system/logs").query(&query))
        .await?;
    let mut stream = response.bytes_stream();
    let mut buffer: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("reading the log stream")?;
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            print_log_line(&line, args.json)?;
        }
        if buffer.len() > MAX_LOG_LINE {
            bail!("the gateway sent a log line longer than {MAX_LOG_LINE} bytes");
        }
    }
    print_log_line(&buffer, args.json)
}

fn print_log_line(line: &[u8], json: bool) -> anyhow::Result<()> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(());
    }
    let message: LogMessage = serde_json::from_slice(line).with_context(|| {
        format!(
            "the gateway sent a log line bramble cannot read: {}",
            String::from_utf8_lossy(&line[..line.len().min(200)])
        )
    })?;
    if json {
        let mut raw = line.to_vec();
        raw.push(b'\n');
        return out_bytes(&raw);
    }
    out(&format_log_line(&message))
}

/// `TIMESTAMP INSTANCE TEXT`, the timestamp to the millisecond.
pub(crate) fn format_log_line(m: &LogMessage) -> String {
    format!(
        "{} {} {}\n",
        short_timestamp(&m.timestamp),
        m.instance,
        m.text.trim_end_matches(['\n', '\r'])
    )
}

/// `2024-05-01T10:00:00.123456789Z` → `2024-05-01T10:00:00.123Z`; anything else unchanged.
fn short_timestamp(ts: &str) -> String {
    let Some(dot) = ts.find('.') else {
        return ts.to_owned();
    };
    let (head, fraction) = ts.split_at(dot);
    let digits = fraction[1..].bytes().take_while(u8::is_ascii_digit).count();
    if digits <= 3 {
        return ts.to_owned();
    }
    format!("{head}.{}{}", &fraction[1..4], &fraction[1 + digits..])
}

// ---------------------------------------------------------------------------------------------
// rm, scale
// ---------------------------------------------------------------------------------------------

async fn remove(args: &RmArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let client = Client::new(&args.target)?;
    let body = DeleteFunctionRequest {
        function_name: args.name.clone(),
        namespace: args.namespace.clone(),
    };
    client
        .send_json(Method::DELETE, "/system/functions", &body)
        .await?;
    let value = serde_json::json!({
        "function": args.name,
        "namespace": args.namespace,
        "action": "removed",
    });
    report(args.json, &format!("removed {}\n", args.name), &value)
}

async fn scale(args: &ScaleArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let client = Client::new(&args.target)?;
    let body = ScaleServiceRequest {
        service_name: args.name.clone(),
        replicas: args.replicas,
        namespace: args.namespace.clone(),
    };
    let path = format!("/system/scale-function/{}", args.name);
    let request = with_namespace(
        client.request(Method::POST, &path),
        args.namespace.as_deref(),
    )
    .json(&body);
    client.send(request).await?;
    let plural = if args.replicas == 1 {
        "replica"
    } else {
        "replicas"
    };
    let value = serde_json::json!({
        "function": args.name,
        "namespace": args.namespace,
        "replicas": args.replicas,
        "action": "scaled",
    });
    report(
        args.json,
        &format!("scaled {} to {} {plural}\n", args.name, args.replicas),
        &value,
    )
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

/// Writes to stdout. A closed pipe (`bramble logs f | head`) ends the program quietly, as it
/// ends other Unix tools, instead of panicking like `println!`.
pub(crate) fn out_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

pub(crate) fn out(text: &str) -> anyhow::Result<()> {
    out_bytes(text.as_bytes())
}

/// The result of a write command: `text` for people, or with `--json` `value` on one line
/// (keys whose value is `null` left out).
pub(crate) fn report(json: bool, text: &str, value: &serde_json::Value) -> anyhow::Result<()> {
    if !json {
        return out(text);
    }
    let mut value = value.clone();
    if let Some(map) = value.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    let mut line = serde_json::to_string(&value).context("printing JSON")?;
    line.push('\n');
    out(&line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bramble_gateway::types::{BrambleStatus, FunctionUsage};
    use bramble_gateway::types::{ExitReason, FunctionState};

    fn status(name: &str) -> FunctionStatus {
        FunctionStatus {
            name: name.into(),
            image: format!("docker.io/library/{name}:latest"),
            namespace: Some("openfaas-fn".into()),
            ..FunctionStatus::default()
        }
    }

    #[test]
    fn list_is_an_aligned_table_sorted_by_name() {
        let mut a = status("zeta");
        a.invocation_count = 1234.0;
        a.replicas = 1;
        a.available_replicas = 1;
        a.bramble = Some(BrambleStatus {
            state: FunctionState::Ready,
            ..BrambleStatus::default()
        });
        let b = status("alpha");
        let text = format_list(&[a, b]);
        assert_eq!(
            text,
            "NAME   INVOCATIONS  REPLICAS  STATE  IMAGE\n\
             alpha  0            0/0       -      docker.io/library/alpha:latest\n\
             zeta   1234         1/1       ready  docker.io/library/zeta:latest\n"
        );
        assert_eq!(format_list(&[]), "no functions\n");
    }

    #[test]
    fn describe_shows_status_extension_usage_and_urls() {
        let mut f = status("hello");
        f.replicas = 1;
        f.available_replicas = 0;
        f.invocation_count = 3.0;
        f.bramble = Some(BrambleStatus {
            state: FunctionState::CrashLooping,
            restarts: 4,
            last_exit: Some(ExitReason::Oom),
            message: Some("the function ran out of memory (64Mi)".into()),
            ..BrambleStatus::default()
        });
        f.limits = Some(FunctionResources {
            memory: Some("64Mi".into()),
            cpu: None,
        });
        f.usage = Some(FunctionUsage {
            cpu: 12.5,
            total_memory_bytes: 3.5 * 1024.0 * 1024.0,
        });
        f.env_vars = [("MESSAGE".into(), "hi".into())].into();
        f.secrets = vec!["api-key".into()];
        f.read_only_root_filesystem = true;
        let text = format_describe(
            &f,
            "http://pi:8080/function/hello",
            "http://pi:8080/async-function/hello",
        );
        for line in [
            "Name:           hello\n",
            "State:          crash-looping\n",
            "Replicas:       0 available, 1 desired\n",
            "Invocations:    3\n",
            "Restarts:       4\n",
            "Last exit:      oom\n",
            "Message:        the function ran out of memory (64Mi)\n",
            "Limits:         memory 64Mi\n",
            "Read-only root: yes\n",
            "Usage:          cpu 12.5m, memory 3.5 MiB\n",
            "Secrets:        api-key\n",
            "URL:            http://pi:8080/function/hello\n",
            "Async URL:      http://pi:8080/async-function/hello\n",
            "Environment:\n  MESSAGE=hi\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in\n{text}");
        }
        assert!(!text.contains("Requests"));
    }

    #[test]
    fn log_lines_and_timestamps() {
        let m = LogMessage {
            name: "f".into(),
            namespace: "openfaas-fn".into(),
            instance: "f-1".into(),
            timestamp: "2024-05-01T10:00:00.123456789Z".into(),
            text: "hello\n".into(),
        };
        assert_eq!(format_log_line(&m), "2024-05-01T10:00:00.123Z f-1 hello\n");
        assert_eq!(
            short_timestamp("2024-05-01T10:00:00Z"),
            "2024-05-01T10:00:00Z"
        );
        assert_eq!(
            short_timestamp("2024-05-01T10:00:00.5+02:00"),
            "2024-05-01T10:00:00.5+02:00"
        );
        assert_eq!(
            short_timestamp("2024-05-01T10:00:00.123456+02:00"),
            "2024-05-01T10:00:00.123+02:00"
        );
        assert_eq!(short_timestamp("garbage.✓✓✓✓"), "garbage.✓✓✓✓");
        assert_eq!(short_timestamp("."), ".");
    }

    #[test]
    fn since_takes_durations_and_rfc3339() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_714_557_600);
        assert_eq!(since("10m", now).unwrap(), "2024-05-01T09:50:00Z");
        assert_eq!(since("1h30m", now).unwrap(), "2024-05-01T08:30:00Z");
        assert_eq!(
            since("2024-05-01T10:00:00Z", now).unwrap(),
            "2024-05-01T10:00:00Z"
        );
        assert_eq!(
            since("2024-05-01T10:00:00+02:00", now).unwrap(),
            "2024-05-01T10:00:00+02:00"
        );
        assert!(since("yesterday", now).is_err());
        assert!(since("+02:00", now).is_err());
    }

    #[test]
    fn headers_and_sizes() {
        assert_eq!(header("X-A=1").unwrap(), ("X-A".into(), "1".into()));
        assert_eq!(
            header("Authorization: Bearer a=b").unwrap(),
            ("Authorization".into(), "Bearer a=b".into())
        );
        assert!(header("novalue").is_err());
        assert!(header("=x").is_err());
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(bytes(f64::NAN), "-");
        assert_eq!(count(f64::INFINITY), "-");
    }
}
