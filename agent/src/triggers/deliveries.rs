//! What the triggers delivered, for the dashboard: the latest deliveries of the node (a
//! fixed ring), the last one of each trigger, and a broadcast for open pages. Memory only:
//! nothing here is written to disk.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use bramble_gateway::ui::model::Delivery;
use tokio::sync::broadcast;

/// Deliveries kept for the hardware page.
pub const KEPT: usize = 50;
/// Deliveries an open page may fall behind by before it misses some.
const BROADCAST: usize = 64;

#[derive(Debug, Default)]
struct Inner {
    /// Newest last.
    recent: VecDeque<Delivery>,
    /// The last delivery of each trigger, by `(function, trigger id)`.
    last: HashMap<(String, String), Delivery>,
}

/// The node's trigger deliveries.
#[derive(Debug)]
pub struct Deliveries {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Delivery>,
}

impl Default for Deliveries {
    fn default() -> Self {
        Deliveries {
            inner: Mutex::default(),
            tx: broadcast::channel(BROADCAST).0,
        }
    }
}

impl Deliveries {
    /// Records a delivery that just ended.
    pub fn record(&self, delivery: Delivery) {
        {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if inner.recent.len() == KEPT {
                inner.recent.pop_front();
            }
            inner.recent.push_back(delivery.clone());
            inner.last.insert(
                (delivery.function.clone(), delivery.trigger.clone()),
                delivery.clone(),
            );
        }
        // Nobody watching is fine.
        let _ = self.tx.send(delivery);
    }

    /// The latest deliveries, newest first.
    pub fn recent(&self) -> Vec<Delivery> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.recent.iter().rev().cloned().collect()
    }

    /// The last delivery of `trigger` of `function` (`name.namespace`).
    pub fn last(&self, function: &str, trigger: &str) -> Option<Delivery> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .last
            .get(&(function.to_owned(), trigger.to_owned()))
            .cloned()
    }

    /// Forgets the last deliveries of triggers for which `keep` is false (deleted ones).
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .last
            .retain(|(function, trigger), _| keep(function, trigger));
    }

    /// Deliveries from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Delivery> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use bramble_gateway::ui::model::DeliveryOutcome;

    use super::*;

    fn delivery(function: &str, trigger: &str, sequence: u64) -> Delivery {
        Delivery {
            at_ms: sequence,
            function: function.into(),
            trigger: trigger.into(),
            kind: "gpio".into(),
            source: "GPIO17 falling".into(),
            sequence,
            count: 1,
            status: 200,
            outcome: DeliveryOutcome::Delivered,
            ms: 1.0,
        }
    }

    #[test]
    fn keeps_the_latest_and_the_last_of_each_trigger() {
        let d = Deliveries::default();
        let mut rx = d.subscribe();
        d.record(delivery("a.ns", "gpio-GPIO17", 1));
        for n in 2..=(KEPT as u64 + 10) {
            d.record(delivery("b.ns", "schedule", n));
        }
        let recent = d.recent();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0].sequence, KEPT as u64 + 10);
        // Out of the ring, still the trigger's last.
        assert_eq!(d.last("a.ns", "gpio-GPIO17").unwrap().sequence, 1);
        assert_eq!(rx.try_recv().unwrap().function, "a.ns");
        d.retain(|function, _| function != "a.ns");
        assert!(d.last("a.ns", "gpio-GPIO17").is_none());
        assert!(d.last("b.ns", "schedule").is_some());
    }
}
