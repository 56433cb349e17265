//! Resident ID card reader simulator: a SAM module (device side of docs/PROTOCOLS.md
//! §1) served on a pty, with a handle to place/remove cards and inject faults
//! (garbage, wrong checksums, cut replies, slow or no answers, a given status,
//! an unplugged cable).

pub mod frame;
pub mod text;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::faults::FrameFaults;
use crate::mask_id;
use crate::pty::{self, Input, Line, SimPty};
use crate::script::StatusFault;
use frame::{HostCommand, Parsed, encode_reply, parse_host, status};

/// A host that stops mid-frame is given this long before the partial frame is
/// thrown away, like the module's inter-byte timeout.
const IDLE_DISCARD: Duration = Duration::from_millis(200);

/// Fixed 16-byte SAM identity returned by command 12 FF.
pub const SAM_ID: [u8; 16] =
    [0x05, 0x00, 0x01, 0x00, 0x20, 0x10, 0x12, 0x01, 0x00, 0x00, 0x00, 0x01, 0x12, 0x34, 0x56, 0x78];

/// The card content the simulated reader returns.
#[derive(Clone)]
pub struct SimCard {
    /// Chinese name, UCS-2 in bytes 0-29 padded with spaces.
    pub name: String,
    /// '1' male, '2' female.
    pub sex_code: char,
    /// Nation code, e.g. "01".
    pub nation_code: String,
    /// "YYYYMMDD".
    pub birth_date: String,
    /// Address.
    pub address: String,
    /// 18 characters, written as-is: the simulator does not validate, so tests
    /// can put invalid numbers on purpose.
    pub id_number: String,
    /// Issuing authority.
    pub issuer: String,
    /// "YYYYMMDD".
    pub valid_from: String,
    /// "YYYYMMDD" or "长期".
    pub valid_to: String,
    /// None = resident ID; Some('J'), Some('I'), Some('Y') sets text byte 248.
    pub card_type: Option<char>,
}

impl fmt::Debug for SimCard {
    // Personal data stays out of logs and test output even for fake cards:
    // the habit is what protects real ones.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimCard")
            .field("id_number", &mask_id(&self.id_number))
            .field("name", &"<redacted>")
            .field("sex_code", &self.sex_code)
            .field("valid_to", &self.valid_to)
            .field("card_type", &self.card_type)
            .finish_non_exhaustive()
    }
}

impl SimCard {
    /// A resident ID card with plausible defaults. Birth date and sex are taken
    /// from the ID number when it has them (digits 7-14, digit 17 odd = male).
    pub fn resident(id_number: &str, name: &str) -> SimCard {
        let chars: Vec<char> = id_number.chars().collect();
        let birth: String = chars.get(6..14).map(|c| c.iter().collect()).unwrap_or_default();
        let birth_date =
            if birth.len() == 8 && birth.chars().all(|c| c.is_ascii_digit()) { birth } else { "19900101".to_string() };
        let sex_code = match chars.get(16).and_then(|c| c.to_digit(10)) {
            Some(d) if d % 2 == 0 => '2',
            _ => '1',
        };
        SimCard {
            name: name.to_string(),
            sex_code,
            nation_code: "01".to_string(),
            birth_date,
            address: "福建省厦门市思明区鹭江道100号".to_string(),
            id_number: id_number.to_string(),
            issuer: "厦门市公安局思明分局".to_string(),
            valid_from: "20200101".to_string(),
            valid_to: "20991231".to_string(),
            card_type: None,
        }
    }
}

/// Something the simulated module did, for tools that want to narrate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdCardEvent {
    /// A reply went out. `command` is None when the host frame was unusable.
    Replied {
        /// (CMD, PARA) of the host frame answered.
        command: Option<(u8, u8)>,
        /// SW3 sent.
        status: u8,
        /// Whether it was damaged on purpose (wrong checksum or cut short).
        corrupted: bool,
    },
}

/// The module's state, behind the handle's mutex. Pure: bytes in, bytes out.
#[derive(Default)]
struct SamState {
    card: Option<SimCard>,
    /// Set by a successful base-info read; the card must leave the field
    /// before find card succeeds again.
    read_since_placed: bool,
    base_info_reads: u64,
    faults: FrameFaults,
    status: Option<StatusFault>,
    silent: bool,
    rx: Vec<u8>,
    /// An intact base-info reply is in the bytes being written.
    read_in_flight: bool,
    /// When each intact base-info reply was completely written.
    read_replies_written: Vec<Instant>,
}

impl SamState {
    fn on_input(&mut self, input: Input<'_>, events: &mut Vec<IdCardEvent>) -> Vec<u8> {
        match input {
            Input::Bytes(b) => self.rx.extend_from_slice(b),
            Input::Idle => {
                self.rx.clear();
                return Vec::new();
            }
        }
        let mut out = Vec::new();
        loop {
            match parse_host(&self.rx) {
                Parsed::NeedMore => break,
                Parsed::Skip(n) => {
                    self.rx.drain(..n);
                }
                Parsed::Frame { consumed, result } => {
                    self.rx.drain(..consumed);
                    if self.silent {
                        continue;
                    }
                    let (command, mut reply, mut ok_read) = match result {
                        Ok(cmd) => {
                            let (reply, ok_read) = self.execute(&cmd);
                            (Some((cmd.cmd, cmd.para)), reply, ok_read)
                        }
                        Err(sw3) => (None, encode_reply(sw3, &[]), false),
                    };
                    if let Some(fault) = self
                        .status
                        .filter(|f| f.target.is_none_or(|t| command.is_some_and(|(c, p)| t.matches_sam(c, p))))
                    {
                        // An error status carries no data; the card was not read.
                        reply = encode_reply(fault.code, &[]);
                        ok_read = false;
                        if !fault.sticky {
                            self.status = None;
                        }
                    }
                    let status = reply[9];
                    let (mut bytes, shaped) = self.faults.shape(reply, |frame| {
                        if let Some(last) = frame.last_mut() {
                            *last ^= 0xFF;
                        }
                    });
                    if ok_read && shaped.intact() {
                        // Only an intact reply counts as the host having read
                        // the card; after a damaged one it may retry the cycle.
                        self.base_info_reads += 1;
                        self.read_since_placed = true;
                        self.read_in_flight = true;
                    }
                    out.append(&mut bytes);
                    events.push(IdCardEvent::Replied { command, status, corrupted: !shaped.intact() });
                }
            }
        }
        out
    }

    /// Returns the reply frame and whether it is a successful base-info read.
    fn execute(&mut self, c: &HostCommand) -> (Vec<u8>, bool) {
        let known = matches!(
            (c.cmd, c.para),
            (0x10, 0xFF)
                | (0x11, 0xFF)
                | (0x12, 0xFF)
                | (0x20, 0x01)
                | (0x20, 0x02)
                | (0x30, 0x01)
                | (0x30, 0x03)
                | (0x30, 0x10)
        );
        if !known {
            return (encode_reply(status::COMMAND_ERROR, &[]), false);
        }
        if !c.data.is_empty() {
            // None of these commands takes data: the length field is wrong.
            return (encode_reply(status::LENGTH_ERROR, &[]), false);
        }
        let reply = match (c.cmd, c.para, &self.card) {
            (0x10 | 0x11, _, _) => encode_reply(status::OK, &[]),
            (0x12, _, _) => encode_reply(status::OK, &SAM_ID),
            (0x20, 0x01, Some(_)) if !self.read_since_placed => encode_reply(status::FIND_OK, &[0; 4]),
            (0x20, 0x01, _) => encode_reply(status::FIND_FAILED, &[]),
            (0x20, 0x02, Some(_)) => encode_reply(status::OK, &[0; 8]),
            (0x20, 0x02, None) => encode_reply(status::SELECT_FAILED, &[]),
            (0x30, 0x03, Some(_)) => encode_reply(status::NO_CONTENT, &[]),
            (0x30, 0x01 | 0x10, Some(card)) => {
                return (base_info_reply(card, c.para == 0x10), true);
            }
            (0x30, _, None) => encode_reply(status::READ_FAILED, &[]),
            _ => encode_reply(status::COMMAND_ERROR, &[]),
        };
        (reply, false)
    }
}

/// 90 + text len + photo len [+ fingerprint len] + text + photo [+ fingerprint].
fn base_info_reply(card: &SimCard, with_fingerprint: bool) -> Vec<u8> {
    let mut data = Vec::with_capacity(6 + text::TEXT_LEN + text::PHOTO_LEN + text::FINGERPRINT_LEN);
    data.extend_from_slice(&(text::TEXT_LEN as u16).to_be_bytes());
    data.extend_from_slice(&(text::PHOTO_LEN as u16).to_be_bytes());
    if with_fingerprint {
        data.extend_from_slice(&(text::FINGERPRINT_LEN as u16).to_be_bytes());
    }
    data.extend_from_slice(&text::encode_text(card));
    data.extend_from_slice(&text::photo_filler());
    if with_fingerprint {
        data.extend_from_slice(&text::fingerprint_filler());
    }
    encode_reply(status::OK, &data)
}

struct Shared {
    state: Mutex<SamState>,
    cancel: CancellationToken,
    stopped: watch::Sender<bool>,
    events: broadcast::Sender<IdCardEvent>,
    line: Arc<Line>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, SamState> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Entry point for the SAM module simulator.
#[derive(Debug)]
pub struct IdCardSim;

impl IdCardSim {
    /// Opens a pty (see [`SimPty::open`]) and spawns a tokio task serving the
    /// SAM protocol on it. Returns at once. Must be called inside a tokio
    /// runtime; the task lives until [`IdCardHandle::stop`] or runtime shutdown.
    pub fn start(link: Option<&Path>) -> anyhow::Result<IdCardHandle> {
        let pty = SimPty::open(link)?;
        let (stopped, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(SamState::default()),
            cancel: CancellationToken::new(),
            stopped,
            events: broadcast::channel(256).0,
            line: Line::new(&pty),
        });
        let task_shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let s = Arc::clone(&task_shared);
            let w = Arc::clone(&task_shared);
            pty::serve(
                pty,
                Arc::clone(&task_shared.line),
                task_shared.cancel.clone(),
                IDLE_DISCARD,
                move |input| {
                    let mut events = Vec::new();
                    let out = s.state().on_input(input, &mut events);
                    for e in events {
                        let _ = s.events.send(e);
                    }
                    out
                },
                move |at| {
                    let mut st = w.state();
                    if std::mem::take(&mut st.read_in_flight) {
                        st.read_replies_written.push(at);
                    }
                },
            )
            .await;
            task_shared.stopped.send_replace(true);
        });
        Ok(IdCardHandle { shared })
    }
}

/// Control handle for a running SAM simulator; cheap to clone.
#[derive(Clone)]
pub struct IdCardHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for IdCardHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdCardHandle").field("device_path", &self.shared.line.device_path()).finish_non_exhaustive()
    }
}

impl IdCardHandle {
    /// Path the daemon should open (the symlink if one was given).
    pub fn device_path(&self) -> PathBuf {
        self.shared.line.device_path()
    }

    /// The `/dev/pts/N` slave behind [`Self::device_path`] (a new one after
    /// each replug).
    pub fn slave_path(&self) -> PathBuf {
        self.shared.line.slave_path()
    }

    /// A card is now on the reader. Placing while another card is present
    /// counts as a fresh placement (it can be found and read again).
    pub fn place(&self, card: SimCard) {
        let mut st = self.shared.state();
        st.card = Some(card);
        st.read_since_placed = false;
    }

    /// The card left the field.
    pub fn remove(&self) {
        let mut st = self.shared.state();
        st.card = None;
        st.read_since_placed = false;
    }

    /// How many successful (uncorrupted) read-base-info replies were sent.
    pub fn base_info_reads(&self) -> u64 {
        self.shared.state().base_info_reads
    }

    /// The next `n` replies get a wrong checksum byte. A corrupted base-info
    /// reply does not count as a read, so the card can be found again.
    pub fn corrupt_next_replies(&self, n: u32) {
        self.shared.state().faults.corrupt = n;
    }

    /// The next `n` replies are cut to half their length (the host waits
    /// for the rest in vain). A cut base-info reply does not count as a read.
    pub fn truncate_next_replies(&self, n: u32) {
        self.shared.state().faults.truncate = n;
    }

    /// `bytes` are written just before the next reply.
    pub fn inject_garbage(&self, bytes: Vec<u8>) {
        self.shared.state().faults.garbage.extend(bytes);
    }

    /// Replies carry `fault.code` as SW3 (and no data): the next one, or the
    /// next to the targeted command, or every such one while `sticky`. A
    /// read answered so is no read, so the card can be found again.
    pub fn inject_status(&self, fault: StatusFault) {
        self.shared.state().status = Some(fault);
    }

    /// Cancels a pending or sticky [`Self::inject_status`].
    pub fn clear_status(&self) {
        self.shared.state().status = None;
    }

    /// Every reply waits this long before it is written; zero for none.
    pub fn set_slow(&self, delay: Duration) {
        self.shared.line.set_slow(delay);
    }

    /// Pulls the cable for `downtime` (see [`Line::unplug`]).
    pub fn unplug(&self, downtime: Duration) {
        self.shared.line.unplug(downtime);
    }

    /// How many times the cable was plugged back in.
    pub fn replugs(&self) -> u64 {
        self.shared.line.replugs()
    }

    /// When each intact base-info reply had been completely written, in
    /// order: the instant the host could have its last byte.
    pub fn read_replies_written(&self) -> Vec<Instant> {
        self.shared.state().read_replies_written.clone()
    }

    /// Stop answering at all (reader hung); requests are swallowed.
    pub fn set_silent(&self, silent: bool) {
        self.shared.state().silent = silent;
    }

    /// Narration of what the module does.
    pub fn subscribe(&self) -> broadcast::Receiver<IdCardEvent> {
        self.shared.events.subscribe()
    }

    /// Ends the task and closes the pty (removing the symlink), asynchronously;
    /// await [`Self::wait_stopped`] to know it is done.
    pub fn stop(&self) {
        self.shared.cancel.cancel();
    }

    /// Resolves once the serving task has ended and the pty is closed.
    pub async fn wait_stopped(&self) {
        let mut rx = self.shared.stopped.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use frame::host_frame;

    fn send(st: &mut SamState, bytes: &[u8]) -> Vec<u8> {
        st.on_input(Input::Bytes(bytes), &mut Vec::new())
    }

    fn cmd(st: &mut SamState, c: u8, p: u8) -> Vec<u8> {
        send(st, &host_frame(c, p, &[]))
    }

    fn placed() -> SamState {
        SamState { card: Some(SimCard::resident("35020319900101123X", "张三")), ..SamState::default() }
    }

    #[test]
    fn answers_table_commands() {
        let mut st = placed();
        assert_eq!(cmd(&mut st, 0x10, 0xFF), encode_reply(0x90, &[]));
        assert_eq!(cmd(&mut st, 0x11, 0xFF), encode_reply(0x90, &[]));
        let id = cmd(&mut st, 0x12, 0xFF);
        assert_eq!(id.len(), 11 + 16);
        assert_eq!(cmd(&mut st, 0x20, 0x01), encode_reply(0x9F, &[0; 4]));
        assert_eq!(cmd(&mut st, 0x20, 0x02), encode_reply(0x90, &[0; 8]));
        assert_eq!(cmd(&mut st, 0x30, 0x03), encode_reply(0x91, &[]));
        let r = cmd(&mut st, 0x30, 0x01);
        assert_eq!(r.len(), 1295);
        assert_eq!(&r[5..7], &[0x05, 0x08]);
        assert_eq!(&r[7..14], &[0x00, 0x00, 0x90, 0x01, 0x00, 0x04, 0x00]);
        assert_eq!(frame::xor_checksum(&r[5..1294]), r[1294]);
    }

    #[test]
    fn fingerprint_read_is_2321_bytes() {
        let mut st = placed();
        let r = cmd(&mut st, 0x30, 0x10);
        assert_eq!(r.len(), 2321);
        assert_eq!(&r[5..7], &[0x09, 0x0A]);
        assert_eq!(&r[10..16], &[0x01, 0x00, 0x04, 0x00, 0x04, 0x00]);
        assert_eq!(frame::xor_checksum(&r[5..2320]), r[2320]);
    }

    #[test]
    fn no_card_statuses() {
        let mut st = SamState::default();
        assert_eq!(cmd(&mut st, 0x20, 0x01), encode_reply(0x80, &[]));
        assert_eq!(cmd(&mut st, 0x20, 0x02), encode_reply(0x81, &[]));
        assert_eq!(cmd(&mut st, 0x30, 0x01), encode_reply(0x41, &[]));
        assert_eq!(st.base_info_reads, 0);
    }

    #[test]
    fn card_held_on_reader_is_read_once() {
        let mut st = placed();
        assert_eq!(cmd(&mut st, 0x20, 0x01)[9], 0x9F);
        assert_eq!(cmd(&mut st, 0x30, 0x01)[9], 0x90);
        assert_eq!(st.base_info_reads, 1);
        assert_eq!(cmd(&mut st, 0x20, 0x01), encode_reply(0x80, &[]));
        assert_eq!(cmd(&mut st, 0x20, 0x01), encode_reply(0x80, &[]));
    }

    #[test]
    fn error_statuses() {
        let mut st = placed();
        assert_eq!(cmd(&mut st, 0x20, 0x07), encode_reply(0x21, &[]));
        assert_eq!(cmd(&mut st, 0x55, 0x01), encode_reply(0x21, &[]));
        assert_eq!(send(&mut st, &host_frame(0x20, 0x01, &[1])), encode_reply(0x11, &[]));
        let mut bad = host_frame(0x20, 0x01, &[]);
        *bad.last_mut().expect("frame") ^= 1;
        assert_eq!(send(&mut st, &bad), encode_reply(0x10, &[]));
    }

    #[test]
    fn resyncs_after_garbage_and_split_reads() {
        let mut st = placed();
        let mut bytes = vec![0x00, 0xAA, 0x13, 0xAA, 0xAA, 0x96];
        bytes.extend(host_frame(0x20, 0x01, &[]));
        let (a, b) = bytes.split_at(9);
        assert!(send(&mut st, a).is_empty());
        assert_eq!(send(&mut st, b), encode_reply(0x9F, &[0; 4]));
    }

    #[test]
    fn idle_discards_partial_frame() {
        let mut st = placed();
        let f = host_frame(0x20, 0x01, &[]);
        assert!(send(&mut st, &f[..8]).is_empty());
        st.on_input(Input::Idle, &mut Vec::new());
        assert_eq!(send(&mut st, &f), encode_reply(0x9F, &[0; 4]));
    }

    #[test]
    fn faults_corrupt_garbage_silent() {
        let mut st = placed();
        st.faults.corrupt = 1;
        let r = cmd(&mut st, 0x30, 0x01);
        assert_ne!(frame::xor_checksum(&r[5..1294]), r[1294]);
        assert_eq!(st.base_info_reads, 0, "corrupted reply is not a read");
        assert_eq!(cmd(&mut st, 0x20, 0x01)[9], 0x9F);

        st.faults.garbage = vec![1, 2, 3];
        let r = cmd(&mut st, 0x11, 0xFF);
        assert_eq!(r[..3], [1, 2, 3]);
        assert_eq!(r[3..], encode_reply(0x90, &[])[..]);

        st.silent = true;
        assert!(cmd(&mut st, 0x11, 0xFF).is_empty());
        st.silent = false;
        assert_eq!(cmd(&mut st, 0x11, 0xFF), encode_reply(0x90, &[]));
    }

    #[test]
    fn status_injection_hits_the_targeted_replies() {
        use crate::script::StatusTarget;
        let mut st = placed();
        // The very next reply, whatever it answers.
        st.status = Some(StatusFault { code: 0x24, target: None, sticky: false });
        assert_eq!(cmd(&mut st, 0x11, 0xFF), encode_reply(0x24, &[]));
        assert_eq!(cmd(&mut st, 0x11, 0xFF), encode_reply(0x90, &[]));
        // Every read while sticky: find and select stay normal, the card is
        // never read, so it can be found again.
        st.status = Some(StatusFault { code: 0x31, target: Some(StatusTarget::Read), sticky: true });
        for _ in 0..2 {
            assert_eq!(cmd(&mut st, 0x20, 0x01)[9], 0x9F);
            assert_eq!(cmd(&mut st, 0x20, 0x02)[9], 0x90);
            assert_eq!(cmd(&mut st, 0x30, 0x01), encode_reply(0x31, &[]));
        }
        assert_eq!(st.base_info_reads, 0);
        st.status = None;
        assert_eq!(cmd(&mut st, 0x30, 0x01).len(), 1295);
        assert_eq!(st.base_info_reads, 1);
    }

    #[test]
    fn a_cut_reply_is_half_a_frame_and_no_read() {
        let mut st = placed();
        st.faults.truncate = 1;
        assert_eq!(cmd(&mut st, 0x30, 0x01).len(), 1295 / 2);
        assert_eq!(st.base_info_reads, 0);
        assert!(!st.read_in_flight);
        assert_eq!(cmd(&mut st, 0x30, 0x01).len(), 1295);
        assert!(st.read_in_flight);
    }

    #[test]
    fn resident_defaults_follow_id_number() {
        let c = SimCard::resident("350203198512244526", "李四");
        assert_eq!(c.birth_date, "19851224");
        assert_eq!(c.sex_code, '2');
        assert_eq!(c.valid_to, "20991231");
        let c = SimCard::resident("bogus", "王五");
        assert_eq!(c.birth_date, "19900101");
        assert!(!format!("{c:?}").contains("王五"));
    }
}
