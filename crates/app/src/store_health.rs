//! How the store is doing, as the daemon saw it: failures counted by class
//! (`full`, `busy`, `io`, `corrupt`, `other`) for metrics, `gatectl status`
//! and the uplink's status message; and the monitor that keeps a full disk
//! from stopping the gate (the ballast file, `disk_low` / `disk_full`, the
//! outbox's capacity).

use gate_store::{ErrorClass, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::{error, info, warn};

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

/// The store's state as last measured, shared with metrics and the control
/// socket (the uplink has its own copy in `LinkState`).
#[derive(Debug, Default)]
pub struct StoreState {
    /// `ok`, `low`, `full`, `busy`, `io`, `corrupt`; empty before the first check.
    pub state: std::sync::Mutex<&'static str>,
    pub disk_free_bytes: AtomicU64,
    /// Unsent events dropped because the outbox was over capacity.
    pub outbox_dropped: AtomicU64,
}

impl StoreState {
    pub fn state(&self) -> &'static str {
        *self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How often the disk and the outbox are checked.
const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// A failure this recent still colours the state.
const RECENT_MS: i64 = 60_000;
const MIB: u64 = 1 << 20;
/// The ballast's file name in the state folder.
pub(crate) const BALLAST: &str = "gated.ballast";

/// Watches the state folder's free space and the outbox: keeps the ballast
/// file (released when the disk fills, so decisions go on being recorded),
/// raises `disk_low` and `disk_full`, and trims the outbox to its capacity
/// with an `outbox_overflow` event.
pub(crate) struct Monitor {
    pub store: gate_store::StoreThread,
    pub config: gate_config::Config,
    /// The configuration in force: the ballast, the low margin and the
    /// outbox's capacity follow a reload at the next check.
    pub reloads: tokio::sync::watch::Receiver<gate_config::Config>,
    pub observed: std::sync::Arc<crate::Observed>,
    pub outbox_changed: std::sync::Arc<tokio::sync::Notify>,
    pub alerts: crate::alerts::AlertBook,
    pub last_state: &'static str,
}

impl Monitor {
    fn state_dir(&self) -> std::path::PathBuf {
        self.config.store.path.parent().map(std::path::Path::to_path_buf).unwrap_or_default()
    }

    pub(crate) async fn run(mut self, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => self.check().await,
            }
        }
    }

    async fn check(&mut self) {
        if self.reloads.has_changed().unwrap_or(false) {
            self.config = self.reloads.borrow_and_update().clone();
            self.alerts.set_quiet_period(self.config.alerts.quiet_period);
        }
        let now = crate::wall_clock_ms();
        let errors = &self.observed.decisions.store_errors;
        let recent = errors.last().filter(|(_, at)| now - at <= RECENT_MS);
        let recent_full = recent.is_some_and(|(class, at)| class == gate_store::ErrorClass::Full && now - at <= 10_000);
        let dir = self.state_dir();
        let ballast_bytes = self.config.store.ballast_mb * MIB;
        let low = LowMargin {
            percent: u64::from(self.config.store.disk_low_percent),
            cap_bytes: self.config.store.disk_low_mb * MIB,
        };
        // File system calls and the ballast's writes block: not on a worker.
        let disk = tokio::task::spawn_blocking(move || keep_ballast(&dir, ballast_bytes, low, recent_full))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let disk = match disk {
            Ok(disk) => disk,
            Err(e) => {
                warn!(error = %e, "cannot measure the state folder's free space");
                return;
            }
        };
        let state = if disk.ballast_released || recent_full {
            "full"
        } else if disk.free_bytes < low.bytes(disk.total_bytes) {
            "low"
        } else {
            match recent.map(|(class, _)| class) {
                Some(gate_store::ErrorClass::Busy) => "busy",
                Some(gate_store::ErrorClass::Io) => "io",
                Some(gate_store::ErrorClass::Corrupt) => "corrupt",
                Some(gate_store::ErrorClass::Full) => "full",
                _ => "ok",
            }
        };
        let shared = &self.observed.store;
        *shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = state;
        shared.disk_free_bytes.store(disk.free_bytes, Ordering::Relaxed);
        *self.observed.link.store_state.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = state.to_owned();
        self.observed.link.disk_free_bytes.store(disk.free_bytes, Ordering::Relaxed);
        if state != self.last_state {
            let alarm = match state {
                "full" => Some("disk_full"),
                "low" if self.last_state != "full" => Some("disk_low"),
                _ => None,
            };
            if let Some(alarm) = alarm {
                error!(
                    alarm,
                    free_bytes = disk.free_bytes,
                    ballast_released = disk.ballast_released,
                    "state folder short of space"
                );
                self.raise(alarm, disk.free_bytes, now).await;
            } else {
                info!(state, free_bytes = disk.free_bytes, "store state");
            }
            self.last_state = state;
        }
        self.trim_outbox(now).await;
    }

    async fn raise(&mut self, alarm: &'static str, free_bytes: u64, now: gate_core::UnixMillis) {
        let facts = vec![("disk_free_bytes".to_owned(), free_bytes.to_string())];
        let record = self.alerts.alarm(&self.config, "store", alarm, facts, now);
        let written = self
            .store
            .call(move |s| {
                let mut record = record;
                record.mode = crate::decide::mode_in_force(s.mode_schedule(), now);
                s.append_event(gate_sync::ALERT_STREAM, gate_store::Priority::Important, now, |seq| {
                    gate_sync::encode_alert(&record, seq)
                })
            })
            .await;
        match written {
            Ok(seq) => {
                self.observed.decisions.alerts.fetch_add(1, Ordering::Relaxed);
                warn!(seq, alarm, "alert to the management departments");
                self.outbox_changed.notify_one();
            }
            Err(e) => {
                self.observed.decisions.store_errors.count(&e);
                error!(error = %e, alarm, "could not record a store alert");
            }
        }
    }

    async fn trim_outbox(&mut self, now: gate_core::UnixMillis) {
        let max = self.config.store.outbox_max_events;
        let context = crate::event_context(&self.config);
        let trimmed = self
            .store
            .call(move |s| {
                let mode = crate::decide::mode_in_force(s.mode_schedule(), now);
                s.enforce_outbox_capacity(max, |w, dropped| {
                    let record =
                        context.record(now, mode, gate_sync::EventBody::OutboxOverflow { dropped: dropped.clone() });
                    w.append_event(gate_sync::EVENT_STREAM, gate_store::Priority::Important, now, |seq| {
                        gate_sync::encode_event(&record, seq)
                    })
                    .map(|_| ())
                })
            })
            .await;
        match trimmed {
            Ok(Some(dropped)) => {
                let count: u64 = dropped.iter().map(|(_, first, last)| last - first + 1).sum();
                self.observed.store.outbox_dropped.fetch_add(count, Ordering::Relaxed);
                let ranges: Vec<String> = dropped.iter().map(|(s, a, b)| format!("{s}:{a}-{b}")).collect();
                error!(dropped = count, ranges = %ranges.join(","), max, "outbox over capacity: oldest unsent events dropped");
                self.outbox_changed.notify_one();
            }
            Ok(None) => {}
            Err(e) => {
                self.observed.decisions.store_errors.count(&e);
                warn!(error = %e, "cannot check the outbox's capacity");
            }
        }
    }
}

/// Below how much free space the state folder is `low`: `disk_low_percent`
/// of the file system, but never more than `disk_low_mb`. The cap is why a
/// big shared disk (a 252 GB volume with 25 GB free) is not "short of
/// space" for a daemon whose whole outbox fits in a few GB; on a gate's
/// small flash the percentage is the smaller and decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LowMargin {
    pub percent: u64,
    pub cap_bytes: u64,
}

impl LowMargin {
    pub(crate) fn bytes(self, total_bytes: u64) -> u64 {
        (total_bytes.saturating_mul(self.percent) / 100).min(self.cap_bytes)
    }
}

/// Free space of the state folder, after the ballast was looked after.
#[derive(Debug, Clone, Copy)]
struct Disk {
    free_bytes: u64,
    total_bytes: u64,
    ballast_released: bool,
}

/// Releases the ballast when the disk is full (or a write just failed for
/// it), makes it again once there is room for it and the low margin.
fn keep_ballast(dir: &std::path::Path, ballast_bytes: u64, low: LowMargin, full: bool) -> std::io::Result<Disk> {
    let space = |dir: &std::path::Path| -> std::io::Result<(u64, u64)> {
        let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
        let unit = stat.fragment_size() as u64;
        Ok((stat.blocks_available() as u64 * unit, stat.blocks() as u64 * unit))
    };
    let path = dir.join(BALLAST);
    let (mut free, total) = space(dir)?;
    let present = path.exists();
    if ballast_bytes == 0 {
        if present {
            std::fs::remove_file(&path)?;
        }
        return Ok(Disk { free_bytes: free, total_bytes: total, ballast_released: false });
    }
    if present && (full || free < MIB) {
        std::fs::remove_file(&path)?;
        error!(file = %path.display(), bytes = ballast_bytes, "disk full: ballast released so decisions go on being recorded");
        free = space(dir)?.0;
        return Ok(Disk { free_bytes: free, total_bytes: total, ballast_released: true });
    }
    let low_margin = low.bytes(total);
    if !present {
        if free > ballast_bytes.saturating_add(low_margin).saturating_add(MIB) {
            write_ballast(&path, ballast_bytes)?;
            free = space(dir)?.0;
            return Ok(Disk { free_bytes: free, total_bytes: total, ballast_released: false });
        }
        // Not made (yet): as good as released.
        return Ok(Disk { free_bytes: free, total_bytes: total, ballast_released: full || free < MIB });
    }
    Ok(Disk { free_bytes: free, total_bytes: total, ballast_released: false })
}

/// Real blocks, not a sparse file: releasing it must free space.
fn write_ballast(path: &std::path::Path, bytes: u64) -> std::io::Result<()> {
    use std::io::Write;
    let partial = path.with_extension("partial");
    let mut file = std::fs::File::create(&partial)?;
    let chunk = vec![0u8; MIB as usize];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(MIB) as usize;
        if let Err(e) = file.write_all(&chunk[..n]) {
            drop(file);
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        left -= n as u64;
    }
    file.sync_all()?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn a_big_shared_disk_with_gigabytes_free_is_not_low() {
        // What CI's machine had: 252 GB in all, 25 GB free (under 10%).
        let low = LowMargin { percent: 10, cap_bytes: 2048 * MIB };
        let total = 252 * GIB;
        assert_eq!(low.bytes(total), 2 * GIB, "the cap decides on a big disk");
        assert!(25 * GIB >= low.bytes(total));
        assert!(GIB < low.bytes(total), "1 GB free of 252 GB is low");
    }

    #[test]
    fn on_a_small_flash_the_percentage_decides() {
        let low = LowMargin { percent: 10, cap_bytes: 2048 * MIB };
        assert_eq!(low.bytes(8 * GIB), 8 * GIB / 10);
        assert_eq!(LowMargin { percent: 30, cap_bytes: 2048 * MIB }.bytes(8 * MIB), 8 * MIB * 30 / 100);
        assert_eq!(LowMargin { percent: 0, cap_bytes: 2048 * MIB }.bytes(8 * GIB), 0, "0 turns it off");
    }
}
