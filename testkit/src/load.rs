//! A steady request load: clients sending `GET path` in a loop until [`Load::finish`], counting
//! what succeeded, what failed and which bodies came back.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::http;

/// Pause between two requests of one client: a steady load, not a flood of a shared machine.
const PAUSE: Duration = Duration::from_millis(5);

/// Clients sending `GET path` in a loop until [`Load::finish`].
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<BTreeSet<String>>>,
    /// The longest a request took, in microseconds.
    slowest_us: Arc<AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

/// What a finished [`Load`] saw.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Requests answered 200.
    pub ok: usize,
    /// Every other outcome: `STATUS BODY`, or the client error.
    pub failures: Vec<String>,
    /// The distinct bodies of the 200 answers.
    pub bodies: BTreeSet<String>,
    /// The longest any request took.
    pub slowest: Duration,
}

impl Load {
    /// Starts `clients` clients on `addr` (each waits up to 10 s for an answer).
    pub fn start(addr: SocketAddr, path: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(BTreeSet::new()));
        let slowest_us = Arc::new(AtomicU64::new(0));
        let clients = (0..clients)
            .map(|_| {
                let (stop, ok, failures, bodies, slowest_us, path) = (
                    stop.clone(),
                    ok.clone(),
                    failures.clone(),
                    bodies.clone(),
                    slowest_us.clone(),
                    path.to_owned(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let sent = std::time::Instant::now();
                        let answer =
                            http::request(addr, "GET", &path, &[], b"", Duration::from_secs(10))
                                .await;
                        let took = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        slowest_us.fetch_max(took, Ordering::Relaxed);
                        match answer {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                lock(&bodies).insert(r.text());
                            }
                            Ok(r) => lock(&failures).push(format!("{} {}", r.status, r.text())),
                            Err(e) => lock(&failures).push(e.to_string()),
                        }
                        tokio::time::sleep(PAUSE).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            bodies,
            slowest_us,
            clients,
        }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// The distinct bodies of the 200 answers so far.
    pub fn bodies(&self) -> BTreeSet<String> {
        lock(&self.bodies).clone()
    }

    /// Stops the clients after their request in flight and reports.
    pub async fn finish(self) -> Result<LoadReport, tokio::task::JoinError> {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await?;
        }
        Ok(LoadReport {
            ok: self.ok.load(Ordering::Relaxed),
            failures: lock(&self.failures).clone(),
            bodies: lock(&self.bodies).clone(),
            slowest: Duration::from_micros(self.slowest_us.load(Ordering::Relaxed)),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
