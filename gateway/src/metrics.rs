//! Invocation metrics and the Prometheus text format (0.0.4), written by hand.
//!
//! Metric names are OpenFaaS's, so its Grafana dashboards work: `gateway_function_invocation_total`,
//! `gateway_functions_seconds`, `gateway_function_invocation_started`, `gateway_service_count`,
//! and the OpenFaaS Pro names `pod_cpu_usage_seconds_total` and `pod_memory_working_set_bytes`.
//! Functions appear once they exist (from the provider's usage) or were invoked.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::provider::UsageSample;
use crate::recent::Recent;
use crate::ui::model::Invocation;

/// Upper bounds of the `gateway_functions_seconds` buckets (OpenFaaS's).
pub(crate) const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Default)]
struct CodeStats {
    count: u64,
    /// Non-cumulative counts per bucket; the last slot is above the largest bound.
    buckets: [u64; BUCKETS.len() + 1],
    sum: f64,
}

/// The counters of one function. An invocation holds them while in flight, so the map of
/// functions is read once per request and nothing is formatted or allocated on the way.
#[derive(Default)]
pub(crate) struct FunctionStats {
    started: AtomicU64,
    async_failed: AtomicU64,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    codes: BTreeMap<u16, CodeStats>,
    /// The latest invocations, for the dashboard.
    recent: Recent,
}

impl FunctionStats {
    /// An invocation started.
    pub(crate) fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// An invocation ended with `code` after `seconds`.
    pub(crate) fn finished(&self, code: u16, seconds: f64) {
        let slot = BUCKETS
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(BUCKETS.len());
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let c = counts.codes.entry(code).or_default();
        c.count += 1;
        c.sum += seconds;
        c.buckets[slot] += 1;
        counts.recent.record(code, seconds);
    }

    fn invocations(&self) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.codes.values().map(|c| c.count).sum()
    }
}

/// A function's counters as the dashboard reads them (off the invocation path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Finished invocations.
    pub(crate) invocations: u64,
    /// Of which answered 5xx.
    pub(crate) errors: u64,
    /// Non-cumulative counts per [`BUCKETS`] bucket, every code; the last is above the largest.
    pub(crate) buckets: [u64; BUCKETS.len() + 1],
}

/// Counters of one gateway, keyed by `name.namespace`.
#[derive(Default)]
pub(crate) struct Metrics {
    functions: RwLock<BTreeMap<String, Arc<FunctionStats>>>,
}

impl Metrics {
    /// The counters of `function` (`name.namespace`), made on first use.
    pub(crate) fn function(&self, function: &str) -> Arc<FunctionStats> {
        let map = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(stats) = map.get(function) {
            return Arc::clone(stats);
        }
        drop(map);
        let mut map = self
            .functions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(function.to_owned()).or_default())
    }

    /// An async call of `function` was given up.
    pub(crate) fn async_failed(&self, function: &str) {
        self.function(function)
            .async_failed
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Finished invocations of `function`, any code.
    pub(crate) fn invocations(&self, function: &str) -> u64 {
        let map = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(function).map_or(0, |s| s.invocations())
    }

    /// The counters of `function` summed over its codes, for the dashboard.
    pub(crate) fn summary(&self, function: &str) -> Summary {
        let mut summary = Summary::default();
        let Some(stats) = self.get(function) else {
            return summary;
        };
        let counts = stats.counts.lock().unwrap_or_else(PoisonError::into_inner);
        for (code, c) in &counts.codes {
            summary.invocations += c.count;
            if *code >= 500 {
                summary.errors += c.count;
            }
            for (total, n) in summary.buckets.iter_mut().zip(c.buckets) {
                *total += n;
            }
        }
        summary
    }

    /// The latest invocations of `function`, newest first, and how many there were in all.
    pub(crate) fn recent(&self, function: &str) -> (u64, Vec<Invocation>) {
        self.get(function)
            .map(|s| {
                let counts = s.counts.lock().unwrap_or_else(PoisonError::into_inner);
                (counts.recent.written(), counts.recent.newest_first())
            })
            .unwrap_or_default()
    }

    /// The counters of `function` when it has any (never made here).
    fn get(&self, function: &str) -> Option<Arc<FunctionStats>> {
        let map = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(function).cloned()
    }

    /// The exposition text, with the provider's usage per `(name, namespace)`.
    pub(crate) fn render(&self, usage: &HashMap<(String, String), UsageSample>) -> String {
        let map = self
            .functions
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        // One consistent copy of each function's counters.
        let functions: Vec<(&String, u64, u64, BTreeMap<u16, CodeStats>)> = map
            .iter()
            .map(|(function, s)| {
                let codes = s
                    .counts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .codes
                    .clone();
                (
                    function,
                    s.started.load(Ordering::Relaxed),
                    s.async_failed.load(Ordering::Relaxed),
                    codes,
                )
            })
            .collect();
        let mut out = String::with_capacity(4096);

        header(
            &mut out,
            "gateway_function_invocation_total",
            "counter",
            "Function invocations by status code",
        );
        for (function, _, _, codes) in &functions {
            for (code, c) in codes {
                let _ = writeln!(
                    out,
                    "gateway_function_invocation_total{{code=\"{code}\",function_name=\"{}\"}} {}",
                    escape(function),
                    c.count
                );
            }
        }

        header(
            &mut out,
            "gateway_functions_seconds",
            "histogram",
            "Function time taken",
        );
        for (function, _, _, codes) in &functions {
            let name = escape(function);
            for (code, c) in codes {
                let mut cumulative = 0;
                for (le, n) in BUCKETS.iter().zip(c.buckets) {
                    cumulative += n;
                    let _ = writeln!(
                        out,
                        "gateway_functions_seconds_bucket{{code=\"{code}\",function_name=\"{name}\",le=\"{le}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(
                    out,
                    "gateway_functions_seconds_bucket{{code=\"{code}\",function_name=\"{name}\",le=\"+Inf\"}} {}",
                    c.count
                );
                let _ = writeln!(
                    out,
                    "gateway_functions_seconds_sum{{code=\"{code}\",function_name=\"{name}\"}} {}",
                    float(c.sum)
                );
                let _ = writeln!(
                    out,
                    "gateway_functions_seconds_count{{code=\"{code}\",function_name=\"{name}\"}} {}",
                    c.count
                );
            }
        }

        header(
            &mut out,
            "gateway_function_invocation_started",
            "counter",
            "Function invocations started",
        );
        for (function, started, _, _) in &functions {
            let _ = writeln!(
                out,
                "gateway_function_invocation_started{{function_name=\"{}\"}} {}",
                escape(function),
                started
            );
        }

        header(
            &mut out,
            "gateway_async_failed_total",
            "counter",
            "Async calls given up after all retries",
        );
        for (function, _, async_failed, _) in functions.iter().filter(|f| f.2 > 0) {
            let _ = writeln!(
                out,
                "gateway_async_failed_total{{function_name=\"{}\"}} {}",
                escape(function),
                async_failed
            );
        }

        let mut usage: Vec<(String, &UsageSample)> = usage
            .iter()
            .map(|((n, ns), u)| (format!("{n}.{ns}"), u))
            .collect();
        usage.sort_by(|a, b| a.0.cmp(&b.0));
        header(
            &mut out,
            "gateway_service_count",
            "gauge",
            "Replicas of a function",
        );
        for (function, u) in &usage {
            let _ = writeln!(
                out,
                "gateway_service_count{{function_name=\"{}\"}} {}",
                escape(function),
                u.replicas
            );
        }
        header(
            &mut out,
            "pod_cpu_usage_seconds_total",
            "counter",
            "CPU time used by a function's replicas",
        );
        for (function, u) in &usage {
            let _ = writeln!(
                out,
                "pod_cpu_usage_seconds_total{{function_name=\"{}\"}} {}",
                escape(function),
                float(u.cpu_seconds_total)
            );
        }
        header(
            &mut out,
            "pod_memory_working_set_bytes",
            "gauge",
            "Memory in use by a function's replicas",
        );
        for (function, u) in &usage {
            let _ = writeln!(
                out,
                "pod_memory_working_set_bytes{{function_name=\"{}\"}} {}",
                escape(function),
                float(u.memory_bytes)
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value escaped for the text format: `\` `"` and newline.
pub(crate) fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value: Go's spelling of the special values.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".to_owned()
        } else {
            "-Inf".to_owned()
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_histograms_and_usage() {
        let m = Metrics::default();
        let f = m.function("f.ns");
        f.started();
        f.started();
        f.finished(200, 0.0);
        f.finished(200, 0.25);
        m.function("f.ns").finished(500, 20.0);
        assert_eq!(m.invocations("f.ns"), 3);
        assert_eq!(m.invocations("g.ns"), 0);
        let usage = HashMap::from([(
            ("f".to_owned(), "ns".to_owned()),
            UsageSample {
                cpu_seconds_total: 1.5,
                memory_bytes: 1024.0,
                replicas: 2,
            },
        )]);
        let text = m.render(&usage);
        for line in [
            "gateway_function_invocation_total{code=\"200\",function_name=\"f.ns\"} 2",
            "gateway_function_invocation_total{code=\"500\",function_name=\"f.ns\"} 1",
            "gateway_functions_seconds_bucket{code=\"200\",function_name=\"f.ns\",le=\"0.005\"} 1",
            "gateway_functions_seconds_bucket{code=\"200\",function_name=\"f.ns\",le=\"0.1\"} 1",
            "gateway_functions_seconds_bucket{code=\"200\",function_name=\"f.ns\",le=\"0.25\"} 2",
            "gateway_functions_seconds_bucket{code=\"200\",function_name=\"f.ns\",le=\"+Inf\"} 2",
            "gateway_functions_seconds_bucket{code=\"500\",function_name=\"f.ns\",le=\"10\"} 0",
            "gateway_functions_seconds_bucket{code=\"500\",function_name=\"f.ns\",le=\"+Inf\"} 1",
            "gateway_functions_seconds_sum{code=\"200\",function_name=\"f.ns\"} 0.25",
            "gateway_functions_seconds_count{code=\"500\",function_name=\"f.ns\"} 1",
            "gateway_function_invocation_started{function_name=\"f.ns\"} 2",
            "gateway_service_count{function_name=\"f.ns\"} 2",
            "pod_cpu_usage_seconds_total{function_name=\"f.ns\"} 1.5",
            "pod_memory_working_set_bytes{function_name=\"f.ns\"} 1024",
            "# TYPE gateway_functions_seconds histogram",
            "# TYPE gateway_function_invocation_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("gateway_async_failed_total{"));
    }

    #[test]
    fn summaries_and_recent_invocations_for_the_dashboard() {
        let m = Metrics::default();
        m.function("f.ns").finished(200, 0.003);
        m.function("f.ns").finished(200, 0.02);
        m.function("f.ns").finished(502, 0.5);
        let s = m.summary("f.ns");
        assert_eq!((s.invocations, s.errors), (3, 1));
        assert_eq!(s.buckets[0], 1); // <= 5 ms
        assert_eq!(s.buckets[2], 1); // <= 25 ms
        assert_eq!(s.buckets[6], 1); // <= 0.5 s
        assert_eq!(m.summary("g.ns"), Summary::default());
        let (total, recent) = m.recent("f.ns");
        assert_eq!(total, 3);
        let statuses: Vec<u16> = recent.iter().map(|i| i.status).collect();
        assert_eq!(statuses, [502, 200, 200]);
        assert_eq!(m.recent("g.ns"), (0, Vec::new()));
    }

    #[test]
    fn label_values_and_special_floats_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(0.1), "0.1");
    }
}
