//! `wrk`, the HTTP load generator (Debian package `wrk`), for the benchmarks: a separate,
//! efficient client, so what is measured is the server, the same way the issues measure it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// What one `wrk` run measured.
#[derive(Clone, Debug)]
pub struct WrkRun {
    pub p50: Duration,
    pub p99: Duration,
    pub requests: u64,
    pub requests_per_second: f64,
}

/// Runs `wrk` for `duration` with `connections` keep-alive connections over 2 threads, each
/// request a POST of `body` to `url`. Fails when wrk is missing, reports socket errors or
/// non-2xx answers, or its output cannot be read.
pub fn post(
    url: &str,
    connections: usize,
    duration: Duration,
    body: &str,
    scratch: &Path,
) -> Result<WrkRun, String> {
    run(
        url,
        connections,
        duration,
        &format!("wrk.body = {body:?}"),
        scratch,
    )
}

/// As [`post`], with a body of `len` bytes `x` (e.g. 1 MiB, made by wrk itself).
pub fn post_bytes(
    url: &str,
    connections: usize,
    duration: Duration,
    len: usize,
    scratch: &Path,
) -> Result<WrkRun, String> {
    run(
        url,
        connections,
        duration,
        &format!("wrk.body = string.rep(\"x\", {len})"),
        scratch,
    )
}

fn run(
    url: &str,
    connections: usize,
    duration: Duration,
    body_lua: &str,
    scratch: &Path,
) -> Result<WrkRun, String> {
    let script = scratch.join("wrk-post.lua");
    std::fs::write(&script, format!("wrk.method = \"POST\"\n{body_lua}\n"))
        .map_err(|e| format!("writing {}: {e}", script.display()))?;
    let output = Command::new("wrk")
        .args(["-t", &connections.clamp(1, 2).to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-d", &format!("{}s", duration.as_secs().max(1))])
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(url)
        .output()
        .map_err(|e| format!("wrk: {e} (apt install wrk)"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse(&text)
}

/// Reads wrk's `--latency` report.
pub fn parse(text: &str) -> Result<WrkRun, String> {
    let line_value = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix).map(str::trim))
    };
    if let Some(errors) = line_value("Socket errors:") {
        return Err(format!("wrk saw socket errors ({errors}):\n{text}"));
    }
    if let Some(bad) = line_value("Non-2xx or 3xx responses:") {
        return Err(format!("wrk saw {bad} non-2xx answers:\n{text}"));
    }
    let latency = |percent: &str| {
        line_value(percent)
            .and_then(duration_of)
            .ok_or_else(|| format!("no {percent} latency in wrk's output:\n{text}"))
    };
    let requests = text
        .lines()
        .find_map(|l| {
            let (count, rest) = l.trim().split_once(' ')?;
            rest.starts_with("requests in")
                .then(|| count.parse::<u64>().ok())
                .flatten()
        })
        .ok_or_else(|| format!("no request count in wrk's output:\n{text}"))?;
    let requests_per_second = line_value("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    Ok(WrkRun {
        p50: latency("50%")?,
        p99: latency("99%")?,
        requests,
        requests_per_second,
    })
}

/// `39.00us`, `1.20ms`, `2.00s`.
fn duration_of(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_latency_report() {
        let text = "Running 5s test @ http://10.72.0.2:8080/\n  2 threads and 8 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   190.45us  120.10us   5.01ms   90.00%\n  Latency Distribution\n     50%  167.00us\n     75%  200.00us\n     90%  250.00us\n     99%    1.20ms\n  85500 requests in 5.00s, 10.00MB read\nRequests/sec:  17100.12\nTransfer/sec:      2.00MB\n";
        let run = parse(text).unwrap();
        assert_eq!(run.p50, Duration::from_micros(167));
        assert_eq!(run.p99, Duration::from_micros(1200));
        assert_eq!(run.requests, 85500);
        assert!((run.requests_per_second - 17100.12).abs() < 1e-6);
        assert!(
            parse(&text.replace(
                "  85500",
                "  Socket errors: connect 0, read 1, write 0, timeout 0\n  85500"
            ))
            .is_err()
        );
    }
}
