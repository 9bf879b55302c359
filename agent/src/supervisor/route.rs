//! What the gateway reads per request: a function's ready replicas, picked round robin
//! without talking to its supervisor, each with a count of the requests in flight to it (a
//! replica is drained before it is stopped).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// One replica's address and the requests in flight to it.
#[derive(Debug)]
pub(crate) struct Slot {
    addr: SocketAddr,
    in_flight: AtomicUsize,
    /// Woken when `in_flight` drops to zero.
    idle: Notify,
}

impl Slot {
    pub(crate) fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            addr,
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        })
    }

    #[cfg(test)]
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests in flight to this replica now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Returns once no request is in flight to this replica. Only meaningful after the
    /// replica left the route: until then new requests may keep arriving.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a guard dropped in between still wakes us.
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(Arc::clone(self))
    }
}

/// Keeps a request counted as in flight to its replica until dropped.
#[derive(Debug)]
pub(crate) struct InFlightGuard(Arc<Slot>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A function's ready replicas, its upstream timeout and when it was last used.
#[derive(Debug)]
pub(crate) struct Route {
    ready: RwLock<Vec<Arc<Slot>>>,
    next: AtomicUsize,
    ready_count: watch::Sender<usize>,
    /// The origin of `last_used_ms`.
    born: Instant,
    last_used_ms: AtomicU64,
    timeout_ms: AtomicU64,
}

impl Route {
    pub(crate) fn new(timeout: Duration) -> Self {
        let route = Self {
            ready: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            ready_count: watch::channel(0).0,
            born: Instant::now(),
            last_used_ms: AtomicU64::new(0),
            timeout_ms: AtomicU64::new(0),
        };
        route.set_timeout(timeout);
        route
    }

    /// A ready replica, round robin, with the request counted in flight to it; records the
    /// use. The count is taken while the ready list is read-locked, so once [`Route::publish`]
    /// returns, every request that picked a replica of the old list is counted and a drain
    /// cannot miss it.
    pub(crate) fn pick(&self) -> Option<(SocketAddr, InFlightGuard)> {
        self.touch();
        let ready = self.ready.read().unwrap_or_else(PoisonError::into_inner);
        if ready.is_empty() {
            return None;
        }
        let slot = &ready[self.next.fetch_add(1, Ordering::Relaxed) % ready.len()];
        Some((slot.addr, slot.enter()))
    }

    /// Waits until at least one replica is ready or `timeout` passes.
    pub(crate) async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut receiver = self.ready_count.subscribe();
        tokio::time::timeout(timeout, receiver.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The function's upstream timeout.
    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms.store(
            u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Replaces the ready replicas.
    pub(crate) fn publish(&self, slots: Vec<Arc<Slot>>) {
        let count = slots.len();
        *self.ready.write().unwrap_or_else(PoisonError::into_inner) = slots;
        self.ready_count.send_replace(count);
    }

    /// Records a use now (a request, or a wake-up that starts the idle clock afresh).
    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_used_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the last use.
    pub(crate) fn idle_for(&self) -> Duration {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.last_used_ms.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes_round_robin_and_wake_waiters() {
        let route = Arc::new(Route::new(Duration::from_secs(60)));
        assert!(route.pick().is_none());
        let waiter = {
            let route = Arc::clone(&route);
            tokio::spawn(async move { route.wait_ready(Duration::from_secs(5)).await })
        };
        let a = Slot::new(SocketAddr::from(([10, 0, 0, 2], 8080)));
        let b = Slot::new(SocketAddr::from(([10, 0, 0, 3], 8080)));
        route.publish(vec![Arc::clone(&a), Arc::clone(&b)]);
        assert!(waiter.await.unwrap());
        let picks: Vec<_> = (0..4).map(|_| route.pick().unwrap().0).collect();
        assert_eq!(picks.iter().filter(|p| **p == a.addr()).count(), 2);
        assert!(
            !Route::new(Duration::from_secs(1))
                .wait_ready(Duration::from_millis(20))
                .await
        );
        let (addr, guard) = route.pick().unwrap();
        let (held, other) = if addr == a.addr() { (&a, &b) } else { (&b, &a) };
        assert_eq!((held.in_flight(), other.in_flight()), (1, 0));
        drop(guard);
        assert_eq!(held.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_waits_for_the_last_request_and_no_longer() {
        let route = Route::new(Duration::from_secs(60));
        let slot = Slot::new(SocketAddr::from(([10, 0, 0, 2], 8080)));
        route.publish(vec![Arc::clone(&slot)]);
        let (_, first) = route.pick().unwrap();
        let (_, second) = route.pick().unwrap();
        route.publish(Vec::new());
        let drained = tokio::spawn({
            let slot = Arc::clone(&slot);
            async move {
                slot.drained().await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !drained.is_finished(),
            "drained with a request still in flight"
        );
        let released = Instant::now();
        drop(second);
        assert_eq!(drained.await.unwrap(), released);
        // Nothing in flight: returns at once.
        slot.drained().await;
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_follows_the_clock_and_uses() {
        let route = Route::new(Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(route.idle_for(), Duration::from_secs(5));
        assert!(route.pick().is_none());
        assert_eq!(route.idle_for(), Duration::ZERO);
    }
}
