//! How the store is doing, as the daemon saw it: failures counted by class
//! (`full`, `busy`, `io`, `corrupt`, `other`) for metrics, `gatectl status`
//! and the uplink's status message.

use gate_store::{ErrorClass, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};

/// Store failures by class, from every task that uses the store.
#[derive(Debug, Default)]
pub struct StoreErrors {
    by_class: [AtomicU64; ErrorClass::ALL.len()],
    /// The class of the latest failure and when (Unix ms), 0 when none yet.
    last_class: AtomicU64,
    last_at_ms: AtomicU64,
}

impl StoreErrors {
    /// Counts one failure (the caller logs it).
    pub fn count(&self, error: &StoreError) {
        let class = error.class();
        let index = ErrorClass::ALL.iter().position(|c| *c == class).unwrap_or(ErrorClass::ALL.len() - 1);
        self.by_class[index].fetch_add(1, Ordering::Relaxed);
        self.last_class.store(index as u64 + 1, Ordering::Relaxed);
        self.last_at_ms.store(crate::wall_clock_ms().max(0) as u64, Ordering::Relaxed);
    }

    /// Failures so far of one class.
    pub fn of(&self, class: ErrorClass) -> u64 {
        let index = ErrorClass::ALL.iter().position(|c| *c == class).unwrap_or(0);
        self.by_class[index].load(Ordering::Relaxed)
    }

    /// The latest failure's class and time, if any.
    pub fn last(&self) -> Option<(ErrorClass, i64)> {
        let index = self.last_class.load(Ordering::Relaxed) as usize;
        let class = *ErrorClass::ALL.get(index.checked_sub(1)?)?;
        Some((class, self.last_at_ms.load(Ordering::Relaxed) as i64))
    }
}
