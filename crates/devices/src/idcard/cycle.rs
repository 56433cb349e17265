//! The reader's protocol cycle as a pure state machine: given the reply to
//! the last command, what to send next and what to report. No port, no
//! clock; the driver feeds it replies and failures and does the I/O.
//!
//! Cycle: on connect RESET then SAM_STATUS; then each poll FIND, on 9F
//! SELECT, on 90 READ_BASE. A card resting on the reader is reported once:
//! after a read the machine latches and ignores further 9F until a FIND
//! answers 80 (no card). The latch is kept here, not left to the module,
//! because some modules answer 9F again for a card that stayed in the field.

use super::CardEvent;
use crate::sam::{Response, Status, cmd, parse_base_info};

/// A `(CMD, PARA)` pair from [`crate::sam::cmd`].
pub(crate) type Command = (u8, u8);

/// Which reply the machine waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Awaiting {
    Reset,
    SamStatus,
    Find,
    Select,
    Read,
}

impl Awaiting {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Awaiting::Reset => "reset",
            Awaiting::SamStatus => "sam status",
            Awaiting::Find => "find card",
            Awaiting::Select => "select card",
            Awaiting::Read => "read base info",
        }
    }
}

/// Something the driver should count or log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// The SAM's self-test answer after connect (logged, counted if bad).
    SamStatus(Status),
    /// A command answered with an error status.
    BadStatus { during: Awaiting, status: Status },
}

/// What the driver does after a reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Outcome {
    /// Send this command now; `None`: wait for the next poll.
    pub(crate) send: Option<Command>,
    pub(crate) event: Option<CardEvent>,
    pub(crate) report: Option<Report>,
}

/// The reader's cycle state. Create once per driver, not per connection, so
/// that a reconnect while a card rests on the reader does not read it again.
#[derive(Debug, Default)]
pub(crate) struct ReaderCycle {
    awaiting: Option<Awaiting>,
    /// A card was read (or refused) and has not left the field since.
    latched: bool,
}

impl ReaderCycle {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The port was (re)opened: reset the SAM first.
    pub(crate) fn start(&mut self) -> Command {
        self.awaiting = Some(Awaiting::Reset);
        cmd::RESET
    }

    /// A status query between polls (a technician's selftest).
    pub(crate) fn query_sam(&mut self) -> Command {
        self.awaiting = Some(Awaiting::SamStatus);
        cmd::SAM_STATUS
    }

    /// The poll interval elapsed with no exchange in flight.
    pub(crate) fn poll(&mut self) -> Command {
        self.awaiting = Some(Awaiting::Find);
        cmd::FIND_CARD
    }

    /// The reply in flight never came or was corrupt: abandon this cycle and
    /// retry at the next poll. The latch stays: a failure says nothing about
    /// whether the card left.
    pub(crate) fn fail(&mut self) {
        self.awaiting = None;
    }

    pub(crate) fn awaiting(&self) -> Option<Awaiting> {
        self.awaiting
    }

    pub(crate) fn on_response(&mut self, response: &Response) -> Outcome {
        let status = response.status();
        let Some(during) = self.awaiting.take() else {
            // Nothing was asked: a stray frame, not an answer to anything.
            return Outcome::default();
        };
        let bad = |status| Some(Report::BadStatus { during, status });
        match during {
            Awaiting::Reset => {
                // Carry on to the status query whatever the reset said: the
                // status query is what tells whether the SAM is usable.
                self.awaiting = Some(Awaiting::SamStatus);
                Outcome {
                    send: Some(cmd::SAM_STATUS),
                    report: if status == Status::Ok { None } else { bad(status) },
                    ..Outcome::default()
                }
            }
            Awaiting::SamStatus => Outcome { report: Some(Report::SamStatus(status)), ..Outcome::default() },
            Awaiting::Find => match status {
                Status::FindOk if self.latched => Outcome::default(),
                Status::FindOk => {
                    self.awaiting = Some(Awaiting::Select);
                    Outcome { send: Some(cmd::SELECT_CARD), ..Outcome::default() }
                }
                Status::NoCard => {
                    self.latched = false;
                    Outcome::default()
                }
                other => Outcome { report: bad(other), ..Outcome::default() },
            },
            Awaiting::Select => match status {
                Status::Ok => {
                    self.awaiting = Some(Awaiting::Read);
                    Outcome { send: Some(cmd::READ_BASE), ..Outcome::default() }
                }
                other => Outcome { report: bad(other), ..Outcome::default() },
            },
            Awaiting::Read => match status {
                Status::Ok => {
                    // A refused card latches too: otherwise a foreign card
                    // left on the reader would be refused at every poll.
                    self.latched = true;
                    let event = match parse_base_info(&response.data, false) {
                        Ok(record) => CardEvent::Read(record),
                        Err(err) => CardEvent::Rejected(err),
                    };
                    Outcome { event: Some(event), ..Outcome::default() }
                }
                other => Outcome { report: bad(other), ..Outcome::default() },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sam::CardError;

    fn reply(status: u8, data: Vec<u8>) -> Response {
        Response { sw1: 0, sw2: 0, sw3: status, data }
    }

    /// A read-base-info payload whose text fails early (bad text length):
    /// enough to drive the machine without building a whole card here.
    fn bad_payload() -> Vec<u8> {
        vec![0x00, 0x10, 0x04, 0x00]
    }

    /// Runs one poll cycle answering with `statuses` in turn; returns the
    /// commands sent and the events seen.
    fn cycle(m: &mut ReaderCycle, statuses: &[u8]) -> (Vec<Command>, Vec<CardEvent>) {
        let mut sent = vec![m.poll()];
        let mut events = Vec::new();
        for &s in statuses {
            let data = if m.awaiting() == Some(Awaiting::Read) { bad_payload() } else { Vec::new() };
            let out = m.on_response(&reply(s, data));
            events.extend(out.event);
            match out.send {
                Some(c) => sent.push(c),
                None => break,
            }
        }
        (sent, events)
    }

    #[test]
    fn start_resets_then_asks_status() {
        let mut m = ReaderCycle::new();
        assert_eq!(m.start(), cmd::RESET);
        let out = m.on_response(&reply(0x90, vec![]));
        assert_eq!(out.send, Some(cmd::SAM_STATUS));
        let out = m.on_response(&reply(0x60, vec![]));
        assert_eq!(out, Outcome { report: Some(Report::SamStatus(Status::SamSelfTestFailed)), ..Outcome::default() });
        assert_eq!(m.awaiting(), None);
    }

    #[test]
    fn a_resting_card_is_read_once_until_it_leaves() {
        let mut m = ReaderCycle::new();
        let (sent, events) = cycle(&mut m, &[0x9F, 0x90, 0x90]);
        assert_eq!(sent, [cmd::FIND_CARD, cmd::SELECT_CARD, cmd::READ_BASE]);
        assert_eq!(events.len(), 1);
        assert!(matches!(events[0], CardEvent::Rejected(CardError::Malformed(_))));

        // Still in the field: 9F again is ignored, no select.
        for _ in 0..3 {
            assert_eq!(cycle(&mut m, &[0x9F]), (vec![cmd::FIND_CARD], vec![]));
        }
        // It leaves, comes back: read again.
        assert_eq!(cycle(&mut m, &[0x80]), (vec![cmd::FIND_CARD], vec![]));
        let (sent, events) = cycle(&mut m, &[0x9F, 0x90, 0x90]);
        assert_eq!(sent.len(), 3);
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn failures_and_bad_statuses_keep_or_skip_the_latch_correctly() {
        let mut m = ReaderCycle::new();
        // Read failed (41): no event, no latch, next cycle reads.
        let (_, events) = cycle(&mut m, &[0x9F, 0x90, 0x41]);
        assert!(events.is_empty());
        // Timeout mid-cycle: no latch either.
        m.poll();
        m.on_response(&reply(0x9F, vec![]));
        m.fail();
        assert_eq!(m.awaiting(), None);
        assert_eq!(cycle(&mut m, &[0x9F, 0x90, 0x90]).1.len(), 1);
        // Latched; a failure does not clear the latch.
        m.poll();
        m.fail();
        assert_eq!(cycle(&mut m, &[0x9F]).1.len(), 0);
        // Select failed is reported.
        let mut m = ReaderCycle::new();
        m.poll();
        m.on_response(&reply(0x9F, vec![]));
        let out = m.on_response(&reply(0x81, vec![]));
        assert_eq!(out.report, Some(Report::BadStatus { during: Awaiting::Select, status: Status::SelectFailed }));
        // A frame nobody asked for changes nothing.
        assert_eq!(m.on_response(&reply(0x9F, vec![])), Outcome::default());
    }
}
