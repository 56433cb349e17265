//! The site mode over time: the mode in force now, and a change that may
//! take effect later (the platform announces it with its effective time).

use crate::{Mode, UnixMillis};

/// Who set the mode and why, for the record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModeOrigin {
    /// `platform:<issuer>` or `technician:<local user>`.
    pub operator: String,
    pub reason: String,
}

/// The mode before and after one scheduled change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModeSchedule {
    pub before: Mode,
    pub after: Mode,
    pub effective_at_ms: UnixMillis,
    pub origin: ModeOrigin,
}

impl ModeSchedule {
    /// A site that has always been in `mode`.
    pub fn constant(mode: Mode) -> Self {
        ModeSchedule { before: mode, after: mode, effective_at_ms: 0, origin: ModeOrigin::default() }
    }

    /// The mode in force at `now`.
    pub fn at(&self, now: UnixMillis) -> Mode {
        if now >= self.effective_at_ms { self.after } else { self.before }
    }

    /// A new change announced at `now`: whatever is in force at `now` becomes
    /// the mode before it.
    pub fn with_change(&self, now: UnixMillis, mode: Mode, effective_at_ms: UnixMillis, origin: ModeOrigin) -> Self {
        ModeSchedule { before: self.at(now), after: mode, effective_at_ms, origin }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_future_change_waits_for_its_time() {
        let s = ModeSchedule::constant(Mode::Normal);
        let s = s.with_change(100, Mode::Wartime, 200, ModeOrigin::default());
        assert_eq!(s.at(150), Mode::Normal);
        assert_eq!(s.at(200), Mode::Wartime);
        // Announced before the first took effect: the site is still normal.
        let s2 = s.with_change(150, Mode::Sporadic, 300, ModeOrigin::default());
        assert_eq!((s2.at(250), s2.at(300)), (Mode::Normal, Mode::Sporadic));
        // Announced after: wartime is what it replaces.
        let s3 = s.with_change(250, Mode::Normal, 250, ModeOrigin::default());
        assert_eq!((s3.before, s3.at(250)), (Mode::Wartime, Mode::Normal));
    }
}
