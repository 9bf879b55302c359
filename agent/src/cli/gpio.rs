//! `bramble gpio get|set|watch`: the node's GPIO lines through the admin API
//! (`/system/gpio`). Levels are physical (what is on the wire). `set` drives simulated
//! lines only, so a demo works on any laptop: `bramble gpio set GPIO17 0` presses a button
//! wired to ground.

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde::Deserialize;

use super::client::{Client, Target};
use super::functions::{out, report, table};

#[derive(clap::Subcommand, Debug)]
pub(crate) enum GpioCommand {
    /// Show the lines (or one): direction, physical level, bias, debounce, functions.
    Get(Box<GetArgs>),
    /// Drive a simulated input line to 0 or 1 (refused on real hardware).
    Set(Box<SetArgs>),
    /// Toggle a simulated input line: a button press and release by default, or a burst.
    Toggle(Box<ToggleArgs>),
    /// Print the edges of a line as they happen, until interrupted.
    Watch(Box<WatchArgs>),
}

#[derive(clap::Args, Debug)]
pub(crate) struct ToggleArgs {
    /// The line name, e.g. GPIO17.
    line: String,
    /// How many edges (2: a press and a release).
    #[arg(long, default_value_t = 2)]
    times: u32,
    /// Pause between edges (e.g. 100ms; default none).
    #[arg(long)]
    interval: Option<String>,
    /// Print the gateway's JSON: {"line","level"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub(crate) struct GetArgs {
    /// A line name (e.g. GPIO17); all lines when absent.
    line: Option<String>,
    /// Print the gateway's JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub(crate) struct SetArgs {
    /// The line name, e.g. GPIO17.
    line: String,
    /// The physical level: 0 (low) or 1 (high).
    #[arg(value_parser = clap::value_parser!(u8).range(0..=1))]
    level: u8,
    /// Print the gateway's JSON: {"line","level"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args, Debug)]
pub(crate) struct WatchArgs {
    /// The line name, e.g. GPIO17.
    line: String,
    /// Print the events as NDJSON, as the gateway sends them.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

pub(crate) async fn run(command: GpioCommand) -> anyhow::Result<()> {
    match command {
        GpioCommand::Get(args) => get(&args).await,
        GpioCommand::Set(args) => set(&args).await,
        GpioCommand::Toggle(args) => toggle(&args).await,
        GpioCommand::Watch(args) => watch(&args).await,
    }
}

/// A line as `/system/gpio` describes it.
#[derive(Debug, Deserialize)]
struct Line {
    name: String,
    #[serde(default)]
    direction: Option<String>,
    #[serde(default)]
    level: Option<u8>,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    debounce: Option<String>,
    #[serde(default)]
    owners: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Lines {
    backend: String,
    lines: Vec<Line>,
}

/// An edge as a watch stream sends it.
#[derive(Debug, Deserialize)]
struct Event {
    line: String,
    edge: String,
    level: u8,
    timestamp_ns: u64,
    seqno: u64,
    line_seqno: u64,
}

/// Percent-encodes a path segment.
fn segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_owned())
}

fn render(backend: &str, lines: Vec<Line>) -> String {
    let rows = lines
        .into_iter()
        .map(|line| {
            let owners = if line.owners.is_empty() {
                "-".to_owned()
            } else {
                line.owners.join(",")
            };
            vec![
                line.name,
                dash(line.direction),
                dash(line.level.map(|l| l.to_string())),
                dash(line.bias),
                dash(line.debounce),
                owners,
            ]
        })
        .collect();
    format!(
        "backend: {backend}\n{}",
        table(
            &[
                "LINE",
                "DIRECTION",
                "LEVEL",
                "BIAS",
                "DEBOUNCE",
                "FUNCTIONS"
            ],
            rows
        )
    )
}

async fn get(args: &GetArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.target)?;
    let response = client
        .send(client.request(Method::GET, "/system/gpio"))
        .await?;
    let text = response
        .text()
        .await
        .context("reading the gateway's answer")?;
    let lines: Lines = serde_json::from_str(&text)
        .context("the gateway's answer to /system/gpio is not what bramble expects")?;
    let selected: Vec<Line> = match &args.line {
        None => lines.lines,
        Some(name) => {
            let found: Vec<Line> = lines
                .lines
                .into_iter()
                .filter(|l| l.name == *name)
                .collect();
            if found.is_empty() {
                bail!(
                    "no GPIO line named {name} on this node ({} backend; `bramble gpio get` \
                     lists the lines)",
                    lines.backend
                );
            }
            found
        }
    };
    if args.json {
        let mut value: serde_json::Value = serde_json::from_str(&text)?;
        if let Some(name) = &args.line
            && let Some(all) = value.get_mut("lines").and_then(|l| l.as_array_mut())
        {
            all.retain(|l| l["name"] == name.as_str());
        }
        return out(&format!("{}\n", serde_json::to_string_pretty(&value)?));
    }
    out(&render(&lines.backend, selected))
}

async fn set(args: &SetArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.target)?;
    let response = client
        .send_json(
            Method::PUT,
            &format!("/system/gpio/{}", segment(&args.line)),
            &serde_json::json!({ "level": args.level }),
        )
        .await?;
    let value: serde_json::Value = response
        .json()
        .await
        .context("reading the gateway's answer")?;
    report(
        args.json,
        &format!("{} = {}\n", args.line, args.level),
        &value,
    )
}

async fn toggle(args: &ToggleArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.target)?;
    let mut body = serde_json::json!({ "times": args.times });
    if let Some(interval) = &args.interval {
        body["interval"] = interval.as_str().into();
    }
    let response = client
        .send_json(
            Method::POST,
            &format!("/system/gpio/{}/toggle", segment(&args.line)),
            &body,
        )
        .await?;
    let ended: serde_json::Value = response
        .json()
        .await
        .context("reading the gateway's answer")?;
    report(
        args.json,
        &format!(
            "{} toggled {} times, now {}\n",
            args.line, args.times, ended["level"]
        ),
        &ended,
    )
}

/// One event as a line of text; notes edges missed since the previous event of the line.
fn describe(event: &Event, previous_line_seqno: Option<u64>) -> String {
    let seconds = event.timestamp_ns / 1_000_000_000;
    let nanos = event.timestamp_ns % 1_000_000_000;
    let mut text = format!(
        "{seconds}.{nanos:09} {} {} level={} seqno={} line_seqno={}",
        event.line, event.edge, event.level, event.seqno, event.line_seqno
    );
    if let Some(previous) = previous_line_seqno {
        let missed = event.line_seqno.saturating_sub(previous).saturating_sub(1);
        if missed > 0 {
            text.push_str(&format!(" ({missed} edges missed)"));
        }
    }
    text.push('\n');
    text
}

async fn watch(args: &WatchArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.target)?;
    let path = format!("/system/gpio/{}/watch", segment(&args.line));
    let mut response = client.send(client.request(Method::GET, &path)).await?;
    if !args.json {
        eprintln!("watching {} (Ctrl-C to stop)", args.line);
    }
    let mut buffer: Vec<u8> = Vec::new();
    let mut previous: Option<u64> = None;
    while let Some(chunk) = response.chunk().await.context("the watch stream broke")? {
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            if args.json {
                super::functions::out_bytes(&line)?;
                continue;
            }
            let event: Event = serde_json::from_slice(&line).with_context(|| {
                format!("unexpected event {:?}", String::from_utf8_lossy(&line))
            })?;
            out(&describe(&event, previous))?;
            previous = Some(event.line_seqno);
        }
    }
    bail!("the gateway ended the watch of {}", args.line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("GPIO17"), "GPIO17");
        assert_eq!(segment("A B?#%"), "A%20B%3F%23%25");
    }

    #[test]
    fn events_read_well_and_show_gaps() {
        let event = Event {
            line: "GPIO17".into(),
            edge: "rising".into(),
            level: 1,
            timestamp_ns: 12_000_000_123,
            seqno: 7,
            line_seqno: 5,
        };
        assert_eq!(
            describe(&event, None),
            "12.000000123 GPIO17 rising level=1 seqno=7 line_seqno=5\n"
        );
        assert!(describe(&event, Some(4)).ends_with("line_seqno=5\n"));
        assert!(describe(&event, Some(2)).ends_with("(2 edges missed)\n"));
    }

    #[test]
    fn table_of_lines() {
        let text = render(
            "simulator",
            vec![
                Line {
                    name: "GPIO17".into(),
                    direction: Some("in".into()),
                    level: Some(1),
                    bias: Some("pull-up".into()),
                    debounce: Some("20ms".into()),
                    owners: vec!["led-button".into()],
                },
                Line {
                    name: "GPIO5".into(),
                    direction: None,
                    level: Some(0),
                    bias: None,
                    debounce: None,
                    owners: vec![],
                },
            ],
        );
        assert_eq!(
            text,
            "backend: simulator\n\
             LINE    DIRECTION  LEVEL  BIAS     DEBOUNCE  FUNCTIONS\n\
             GPIO17  in         1      pull-up  20ms      led-button\n\
             GPIO5   -          0      -        -         -\n"
        );
    }
}
