//! Counters a driver keeps about its device, read by the status page and the
//! health report without talking to the driver task.
//!
//! Atomics rather than a channel: the driver must never wait on whoever reads
//! its health, and a slightly stale snapshot is fine.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Live counters of one device. Shared as `Arc<DeviceHealth>` between the
/// driver (writer) and any number of readers.
#[derive(Debug, Default)]
pub struct DeviceHealth {
    /// The port is open (the driver is not in its reconnect back-off).
    pub connected: AtomicBool,
    /// Replies decoded and accepted.
    pub frames_ok: AtomicU64,
    /// Frames refused because their checksum / CRC did not match.
    pub checksum_errors: AtomicU64,
    /// Frames refused because their length field was impossible.
    pub length_errors: AtomicU64,
    /// Bytes dropped while looking for the start of a frame.
    pub garbage_bytes: AtomicU64,
    /// Requests that got no complete reply in time.
    pub timeouts: AtomicU64,
    /// Attempts to open the port again after it failed or was lost.
    pub reconnects: AtomicU64,
    /// Replies carrying an error status (SAM status word, Modbus exception,
    /// or a reply that does not match the request).
    pub status_errors: AtomicU64,
    /// SAM / card authentication failures (SW3 23, 31, 32, 33, 66).
    pub auth_errors: AtomicU64,
    /// The last problem, for a technician; never contains personal data.
    pub last_error: Mutex<Option<String>>,
    /// Set by a technician's selftest: the reader driver queries the SAM's
    /// status before its next poll, then clears it.
    pub sam_query_requested: AtomicBool,
    /// SAM status replies received (at connect and on request).
    pub sam_status_replies: AtomicU64,
    /// The status word of the last SAM status reply (0 before any).
    pub last_sam_status: std::sync::atomic::AtomicU8,
}

/// A copy of [`DeviceHealth`] at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthSnapshot {
    pub connected: bool,
    pub frames_ok: u64,
    pub checksum_errors: u64,
    pub length_errors: u64,
    pub garbage_bytes: u64,
    pub timeouts: u64,
    pub reconnects: u64,
    pub status_errors: u64,
    pub auth_errors: u64,
    pub last_error: Option<String>,
    pub sam_status_replies: u64,
    pub last_sam_status: u8,
}

impl DeviceHealth {
    pub fn snapshot(&self) -> HealthSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HealthSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            frames_ok: get(&self.frames_ok),
            checksum_errors: get(&self.checksum_errors),
            length_errors: get(&self.length_errors),
            garbage_bytes: get(&self.garbage_bytes),
            timeouts: get(&self.timeouts),
            reconnects: get(&self.reconnects),
            status_errors: get(&self.status_errors),
            auth_errors: get(&self.auth_errors),
            last_error: self.last_error_guard().clone(),
            sam_status_replies: get(&self.sam_status_replies),
            last_sam_status: self.last_sam_status.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub(crate) fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    pub(crate) fn set_last_error(&self, message: String) {
        *self.last_error_guard() = Some(message);
    }

    /// A poisoned lock only means another thread panicked while holding it;
    /// the `Option<String>` inside is still a valid value, so keep using it
    /// rather than spreading the panic into the driver.
    fn last_error_guard(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
