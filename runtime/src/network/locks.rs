//! Per-id async locks: calls for one id are serialised, different ids run concurrently.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

/// Per-id async locks; an entry lives only while someone holds or waits for it.
#[derive(Default)]
pub(super) struct IdLocks {
    map: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

pub(super) struct IdGuard<'a> {
    locks: &'a IdLocks,
    id: String,
    entry: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl IdLocks {
    pub(super) async fn lock(&self, id: &str) -> IdGuard<'_> {
        let entry = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(map.entry(id.to_owned()).or_default())
        };
        let guard = Arc::clone(&entry).lock_owned().await;
        IdGuard {
            locks: self,
            id: id.to_owned(),
            entry,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for IdGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self
            .locks
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The map and `self.entry` hold the only references: nobody waits, so forget the id.
        // Cloning requires the map lock, which we hold, so the count cannot grow meanwhile.
        if Arc::strong_count(&self.entry) == 2 {
            map.remove(&self.id);
        }
    }
}
