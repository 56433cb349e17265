//! Misbehaviour shared by every simulated device: frames damaged on the way
//! out (garbage before them, a wrong checksum, cut short) and line noise.
//! What "a wrong checksum" means is the device's business; this module only
//! counts how many frames are still to be damaged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Damage waiting for the next frames a device sends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct FrameFaults {
    /// Written just before the next frame.
    pub(crate) garbage: Vec<u8>,
    /// Frames still to get a wrong checksum.
    pub(crate) corrupt: u32,
    /// Frames still to be cut short.
    pub(crate) truncate: u32,
}

/// What [`FrameFaults::shape`] did to one frame.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shaped {
    pub(crate) corrupted: bool,
    pub(crate) truncated: bool,
}

impl Shaped {
    /// Whether the receiver gets the frame as the device meant it.
    pub(crate) fn intact(self) -> bool {
        !self.corrupted && !self.truncated
    }
}

impl FrameFaults {
    /// The bytes to send for `frame`: pending garbage first, then the frame,
    /// damaged by `corrupt` and/or cut to half its length if so asked.
    pub(crate) fn shape(&mut self, mut frame: Vec<u8>, corrupt: impl FnOnce(&mut Vec<u8>)) -> (Vec<u8>, Shaped) {
        let corrupted = take_one(&mut self.corrupt);
        if corrupted {
            corrupt(&mut frame);
        }
        let truncated = take_one(&mut self.truncate) && frame.len() > 1;
        if truncated {
            // Half a frame: long enough to look like the start of one, so
            // the receiver waits for the rest and has to give up on time.
            frame.truncate(frame.len() / 2);
        }
        let mut out = std::mem::take(&mut self.garbage);
        out.append(&mut frame);
        (out, Shaped { corrupted, truncated })
    }
}

fn take_one(count: &mut u32) -> bool {
    if *count == 0 {
        return false;
    }
    *count -= 1;
    true
}

/// `n` arbitrary bytes. They need to be unpredictable enough to hit odd
/// code paths, not secure: a xorshift seeded from the clock and a counter.
pub fn noise(n: usize) -> Vec<u8> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut state = (nanos ^ CALLS.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_fault_hits_the_next_frames_once() {
        let mut faults = FrameFaults { garbage: vec![9, 9], corrupt: 1, truncate: 2 };
        let flip = |f: &mut Vec<u8>| {
            if let Some(last) = f.last_mut() {
                *last ^= 0xFF;
            }
        };
        let (out, shaped) = faults.shape(vec![1, 2, 3, 4], flip);
        assert_eq!(out, [9, 9, 1, 2]);
        assert_eq!(shaped, Shaped { corrupted: true, truncated: true });
        let (out, shaped) = faults.shape(vec![1, 2, 3, 4], flip);
        assert_eq!((out, shaped.intact()), (vec![1, 2], false));
        let (out, shaped) = faults.shape(vec![1, 2, 3, 4], flip);
        assert_eq!((out, shaped.intact()), (vec![1, 2, 3, 4], true));
    }

    #[test]
    fn noise_has_the_length_asked_and_varies() {
        assert_eq!(noise(0), Vec::<u8>::new());
        let a = noise(64);
        assert_eq!(a.len(), 64);
        assert_ne!(a, noise(64));
    }
}
