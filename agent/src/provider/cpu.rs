//! `usage.cpu` of a function's status, as OpenFaaS means it: the CPU its replicas use, in
//! millicores (1000 = one core busy), averaged over about the last minute — what faas-netes
//! reports with `rate(pod_cpu_usage_seconds_total[1m]) * 1000`, faas-provider's "increase in
//! CPU usage since the last measurement, equivalent to Kubernetes' millicores".
//!
//! The provider samples the cumulative CPU time of every task (its cgroup's counter, one
//! containerd call for all of them) every [`SAMPLE_EVERY`] in the background, and notes each
//! task's start, when that counter is 0. A status read takes a fresh reading and compares it
//! with the newest sample at least [`WINDOW`] old; a replica younger than that (or first seen
//! by this bramble less than that ago) is measured from its first sample. So the first read
//! after a replica started, or after bramble started, is already meaningful.

use std::collections::{HashMap, VecDeque};
use std::sync::{PoisonError, Weak};
use std::time::{Duration, Instant};

use bramble_runtime::TaskEvent;
use tokio::sync::broadcast;

use super::LocalProvider;
use crate::runtime::NodeRuntime;

/// The span `usage.cpu` averages over (OpenFaaS: `[1m]`).
pub(super) const WINDOW: Duration = Duration::from_secs(60);
/// How often every task's counter is sampled.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// CPU counter samples per task (container id): `(when, cumulative CPU ns)`, oldest first.
#[derive(Debug, Default)]
pub(super) struct CpuSamples {
    by_task: HashMap<String, VecDeque<(Instant, u64)>>,
}

impl CpuSamples {
    /// The task of `container` started at `at`: its new cgroup's counter was 0 then.
    pub(super) fn started(&mut self, container: &str, at: Instant) {
        self.by_task
            .insert(container.to_owned(), VecDeque::from([(at, 0)]));
    }

    /// A background reading, taken at `at`, of every running task. Tasks not in it are gone
    /// (unless they were noted as started after `at`) and forgotten.
    pub(super) fn record_all(&mut self, readings: &HashMap<String, u64>, at: Instant) {
        self.by_task.retain(|id, samples| {
            readings.contains_key(id) || samples.back().is_some_and(|(t, _)| *t > at)
        });
        for (id, cpu_ns) in readings {
            let samples = self.by_task.entry(id.clone()).or_default();
            if samples.back().is_some_and(|(t, _)| *t > at) {
                // Started after this reading was taken: the reading is of the task before.
                continue;
            }
            if samples.back().is_some_and(|(_, before)| *before > *cpu_ns) {
                // The counter went back: a new task of the same container whose start was
                // missed. Its history starts here.
                samples.clear();
            }
            samples.push_back((at, *cpu_ns));
            // Keep the newest sample at least WINDOW old, and everything after it.
            while samples.len() >= 2 && samples[1].0 + WINDOW <= at {
                samples.pop_front();
            }
        }
    }

    /// Millicores `container` used on average from its baseline sample (the newest at least
    /// [`WINDOW`] before `now`, else its oldest) until `now`, when its counter reads `cpu_ns`.
    /// `None` when nothing is known about it yet (or its counter went back since).
    pub(super) fn millicores(&self, container: &str, now: Instant, cpu_ns: u64) -> Option<f64> {
        let samples = self.by_task.get(container)?;
        let (then, before) = samples
            .iter()
            .rev()
            .find(|(t, _)| *t + WINDOW <= now)
            .or_else(|| samples.front())
            .copied()?;
        let seconds = now.checked_duration_since(then)?.as_secs_f64();
        if seconds < 0.001 || cpu_ns < before {
            return None;
        }
        Some((cpu_ns - before) as f64 / 1e6 / seconds)
    }
}

/// Samples every task's CPU counter every [`SAMPLE_EVERY`] and notes task starts, until the
/// provider is gone.
pub(super) async fn sample<R: NodeRuntime>(
    provider: Weak<LocalProvider<R>>,
    mut events: broadcast::Receiver<TaskEvent>,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let Some(provider) = provider.upgrade() else { return };
                let at = Instant::now();
                // containerd unreachable: no sample this time; reads fall back on older ones.
                if let Ok(all) = provider.ctx.runtime.usage_all().await {
                    let readings = all.into_iter().map(|(id, u)| (id, u.cpu_ns)).collect();
                    provider
                        .cpu
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record_all(&readings, at);
                }
            }
            event = events.recv() => match event {
                Ok(TaskEvent::Started { container, .. }) => {
                    let Some(provider) = provider.upgrade() else { return };
                    provider
                        .cpu
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .started(&container, Instant::now());
                }
                // A missed start is caught by the next sample.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-6)
    }

    #[test]
    fn a_new_replica_is_measured_from_its_start() {
        let t0 = Instant::now();
        let mut s = CpuSamples::default();
        assert_eq!(s.millicores("c", t0 + SEC, 1), None, "nothing known yet");
        s.started("c", t0);
        // 0.5 s of CPU in the 2 s since it started: 250 millicores.
        assert!(close(s.millicores("c", t0 + 2 * SEC, 500_000_000), 250.0));
    }

    #[test]
    fn an_older_replica_is_averaged_over_the_last_minute() {
        let t0 = Instant::now();
        let mut s = CpuSamples::default();
        let reading = |cpu: u64| HashMap::from([("c".to_owned(), cpu)]);
        // First seen by a background sample (adopted after a restart): 100 s of CPU already.
        s.record_all(&reading(100_000_000_000), t0);
        // Busy (one full core) for the first 30 s, then idle.
        for i in 1..=12u32 {
            let busy = u64::from(i.min(3)) * 10_000_000_000;
            s.record_all(&reading(100_000_000_000 + busy), t0 + i * SAMPLE_EVERY);
        }
        let now = t0 + 125 * SEC;
        // The baseline is the sample at 60 s (the newest at least a minute old): idle since.
        assert!(close(s.millicores("c", now, 130_000_000_000), 0.0));
        // 65 s after that baseline, 13 s of CPU were used: 200 millicores.
        assert!(close(s.millicores("c", now, 143_000_000_000), 200.0));
        assert!(
            s.by_task["c"].len() <= (WINDOW.as_secs() / SAMPLE_EVERY.as_secs()) as usize + 2,
            "old samples are dropped: {:?}",
            s.by_task["c"]
        );
    }

    #[test]
    fn gone_tasks_are_forgotten_and_restarted_ones_start_over() {
        let t0 = Instant::now();
        let mut s = CpuSamples::default();
        s.started("old", t0);
        s.record_all(
            &HashMap::from([("old".to_owned(), 5_000_000_000)]),
            t0 + SEC,
        );
        // A reading without it: gone. A start noted after the reading survives it, and a
        // reading taken before that start (of the task before) does not count.
        s.started("new", t0 + 3 * SEC);
        s.record_all(&HashMap::new(), t0 + 2 * SEC);
        assert_eq!(s.millicores("old", t0 + 4 * SEC, 6_000_000_000), None);
        s.record_all(
            &HashMap::from([("new".to_owned(), 7_000_000_000)]),
            t0 + 2 * SEC,
        );
        assert!(close(
            s.millicores("new", t0 + 4 * SEC, 1_000_000_000),
            1000.0
        ));
        // A counter that went back (a restart whose start was missed) starts a new history.
        s.record_all(
            &HashMap::from([("new".to_owned(), 9_000_000_000)]),
            t0 + 4 * SEC,
        );
        s.record_all(
            &HashMap::from([("new".to_owned(), 1_000_000_000)]),
            t0 + 5 * SEC,
        );
        assert!(close(
            s.millicores("new", t0 + 7 * SEC, 2_000_000_000),
            500.0
        ));
        assert_eq!(
            s.millicores("new", t0 + 7 * SEC, 10),
            None,
            "went back again"
        );
    }
}
