//! Per-key async mutexes: operations on the same container id or image name run one at a
//! time, operations on different keys run concurrently. Unused keys are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// A map of per-key locks.
#[derive(Debug, Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Holds a key's lock until dropped.
#[derive(Debug)]
pub struct KeyedGuard {
    _guard: OwnedMutexGuard<()>,
}

impl KeyedLocks {
    /// Waits for and takes the lock of `key`.
    pub async fn lock(&self, key: &str) -> KeyedGuard {
        let lock = {
            // A poisoned map only means another thread panicked mid-insert; the map itself is
            // still consistent, so keep using it.
            let mut locks = self
                .locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Forget locks nobody holds or waits for, so the map stays as small as the set of
            // keys in use.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            Arc::clone(locks.entry(key.to_owned()).or_default())
        };
        KeyedGuard {
            _guard: lock.lock_owned().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn same_key_is_serialised_other_keys_are_not() {
        let locks = Arc::new(KeyedLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let max_inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (locks, inside, max_inside) = (
                Arc::clone(&locks),
                Arc::clone(&inside),
                Arc::clone(&max_inside),
            );
            tasks.push(tokio::spawn(async move {
                let _g = locks.lock("a").await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                max_inside.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        let _other = locks.lock("b").await; // not blocked by "a"
        drop(_other);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max_inside.load(Ordering::SeqCst), 1);
        let _g = locks.lock("c").await;
        assert!(
            locks.locks.lock().unwrap().len() <= 2,
            "unused keys are forgotten"
        );
    }
}
