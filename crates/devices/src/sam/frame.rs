//! SAM frame layer: `AA AA AA 96 69 | LEN_HI LEN_LO | body | CHK`.
//!
//! LEN counts every byte after the length field, the checksum included; CHK
//! is the XOR of the length bytes and the body. The decoder never trusts a
//! byte it has not checked: a frame is returned only whole and with a
//! matching checksum, and after any error it resynchronises on the next
//! preamble, so one burst of line noise costs one exchange, not the session.

/// The five bytes that open every frame, in both directions.
pub const PREAMBLE: [u8; 5] = [0xAA, 0xAA, 0xAA, 0x96, 0x69];

/// Smallest LEN of a reply: SW1 SW2 SW3 and the checksum.
pub const MIN_DECLARED_LEN: usize = 4;
/// Largest LEN accepted. The biggest real reply (base info with fingerprint)
/// declares 0x090A; anything far beyond that is a corrupted length field, and
/// waiting for it would stall the reader until the reply timeout.
pub const MAX_DECLARED_LEN: usize = 4096;

/// Preamble plus the two length bytes.
const HEADER_LEN: usize = PREAMBLE.len() + 2;

fn xor(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |acc, b| acc ^ b)
}

/// A host-to-module frame: preamble, LEN, CMD, PARA, DATA, CHK.
pub fn encode_command(cmd: u8, para: u8, data: &[u8]) -> Vec<u8> {
    // CMD + PARA + DATA + CHK. Callers send at most a few bytes of data; a
    // length beyond u16 cannot be framed at all, so saturate rather than wrap
    // (the module will then refuse it with a length error).
    let len = u16::try_from(2 + data.len() + 1).unwrap_or(u16::MAX);
    let mut frame = Vec::with_capacity(HEADER_LEN + usize::from(len));
    frame.extend_from_slice(&PREAMBLE);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.push(cmd);
    frame.push(para);
    frame.extend_from_slice(data);
    let chk = xor(&frame[PREAMBLE.len()..]);
    frame.push(chk);
    frame
}

/// A module-to-host frame that passed its checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub sw1: u8,
    pub sw2: u8,
    /// The status byte; see [`Status`].
    pub sw3: u8,
    /// Everything between SW3 and the checksum.
    pub data: Vec<u8>,
}

impl Response {
    pub fn status(&self) -> Status {
        Status::from_code(self.sw3)
    }
}

/// The SW3 status codes of GA 467.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// 90: operation succeeded.
    Ok,
    /// 91: no content for this item.
    NoContent,
    /// 9F: find card succeeded.
    FindOk,
    /// 10: the module received a frame with a bad checksum.
    ChecksumError,
    /// 11: the module received a frame with a bad length.
    LengthError,
    /// 21: command or parameter error.
    CommandError,
    /// 23: unauthorised operation.
    Unauthorised,
    /// 24: unrecognised error.
    Unrecognised,
    /// 31: the card failed to authenticate the SAM.
    CardAuthSamFailed,
    /// 32: the SAM failed to authenticate the card.
    SamAuthCardFailed,
    /// 33: information verify error.
    VerifyError,
    /// 40: unknown card type.
    UnknownCardType,
    /// 41: read failed.
    ReadFailed,
    /// 47: random number failed.
    RandomFailed,
    /// 60: SAM self-test failed.
    SamSelfTestFailed,
    /// 66: SAM not authorised.
    SamNotAuthorised,
    /// 80: find failed, no card in the field.
    NoCard,
    /// 81: select failed.
    SelectFailed,
    /// Any code the standard does not list.
    Other(u8),
}

impl Status {
    pub fn from_code(code: u8) -> Self {
        match code {
            0x90 => Status::Ok,
            0x91 => Status::NoContent,
            0x9F => Status::FindOk,
            0x10 => Status::ChecksumError,
            0x11 => Status::LengthError,
            0x21 => Status::CommandError,
            0x23 => Status::Unauthorised,
            0x24 => Status::Unrecognised,
            0x31 => Status::CardAuthSamFailed,
            0x32 => Status::SamAuthCardFailed,
            0x33 => Status::VerifyError,
            0x40 => Status::UnknownCardType,
            0x41 => Status::ReadFailed,
            0x47 => Status::RandomFailed,
            0x60 => Status::SamSelfTestFailed,
            0x66 => Status::SamNotAuthorised,
            0x80 => Status::NoCard,
            0x81 => Status::SelectFailed,
            other => Status::Other(other),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Status::Ok => 0x90,
            Status::NoContent => 0x91,
            Status::FindOk => 0x9F,
            Status::ChecksumError => 0x10,
            Status::LengthError => 0x11,
            Status::CommandError => 0x21,
            Status::Unauthorised => 0x23,
            Status::Unrecognised => 0x24,
            Status::CardAuthSamFailed => 0x31,
            Status::SamAuthCardFailed => 0x32,
            Status::VerifyError => 0x33,
            Status::UnknownCardType => 0x40,
            Status::ReadFailed => 0x41,
            Status::RandomFailed => 0x47,
            Status::SamSelfTestFailed => 0x60,
            Status::SamNotAuthorised => 0x66,
            Status::NoCard => 0x80,
            Status::SelectFailed => 0x81,
            Status::Other(code) => code,
        }
    }

    /// Authentication between SAM and card (or of the SAM itself) failed: a
    /// forged card or an unlicensed SAM, worth a separate counter.
    pub fn is_auth_failure(self) -> bool {
        matches!(
            self,
            Status::Unauthorised
                | Status::CardAuthSamFailed
                | Status::SamAuthCardFailed
                | Status::VerifyError
                | Status::SamNotAuthorised
        )
    }
}

/// Why bytes from the module were not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame checksum mismatch: computed {expected:#04x}, frame carries {found:#04x}")]
    Checksum { expected: u8, found: u8 },
    #[error("frame declares {declared} bytes after its length field, outside {MIN_DECLARED_LEN}..={MAX_DECLARED_LEN}")]
    Length { declared: usize },
    #[error("{skipped} bytes of line noise before a frame")]
    Garbage { skipped: usize },
}

/// Reassembles module-to-host frames from whatever chunks the port delivers.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes already dropped in the search for a preamble, not yet reported.
    skipped: usize,
}

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Next complete frame or error; `None` when more bytes are needed.
    ///
    /// Resynchronises: garbage before a preamble is skipped and reported once
    /// as `Garbage { skipped }`; after a checksum or length error the decoder
    /// skips past that preamble and keeps scanning. A frame split across any
    /// number of pushes decodes.
    pub fn next_frame(&mut self) -> Option<Result<Response, FrameError>> {
        match find(&self.buf, &PREAMBLE) {
            Some(0) => {}
            Some(start) => {
                self.buf.drain(..start);
                self.skipped += start;
            }
            None => {
                // Keep only a tail that could still grow into a preamble, so a
                // preamble split across two reads is not lost.
                let keep = partial_preamble_suffix(&self.buf);
                let drop = self.buf.len() - keep;
                self.buf.drain(..drop);
                self.skipped += drop;
                return None;
            }
        }
        if self.skipped > 0 {
            let skipped = std::mem::take(&mut self.skipped);
            return Some(Err(FrameError::Garbage { skipped }));
        }
        if self.buf.len() < HEADER_LEN {
            return None;
        }
        let declared = usize::from(u16::from_be_bytes([self.buf[5], self.buf[6]]));
        if !(MIN_DECLARED_LEN..=MAX_DECLARED_LEN).contains(&declared) {
            self.buf.drain(..PREAMBLE.len());
            return Some(Err(FrameError::Length { declared }));
        }
        let total = HEADER_LEN + declared;
        if self.buf.len() < total {
            return None;
        }
        let expected = xor(&self.buf[PREAMBLE.len()..total - 1]);
        let found = self.buf[total - 1];
        if expected != found {
            // Skip only the preamble: if the length field itself was hit, the
            // next real frame may start inside what it claimed to cover.
            self.buf.drain(..PREAMBLE.len());
            return Some(Err(FrameError::Checksum { expected, found }));
        }
        let frame: Vec<u8> = self.buf.drain(..total).collect();
        Some(Ok(Response { sw1: frame[7], sw2: frame[8], sw3: frame[9], data: frame[10..total - 1].to_vec() }))
    }

    /// Forgets everything buffered (a new exchange starts; any leftovers are
    /// stale replies that must not be taken for the next one).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.skipped = 0;
    }

    /// Bytes dropped in the search for a preamble and not reported yet
    /// (no preamble has followed them). Lets a driver count them before
    /// [`FrameDecoder::clear`] forgets them.
    pub fn pending_garbage(&self) -> usize {
        self.skipped
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Length of the longest tail of `buf` that is a proper prefix of the preamble.
fn partial_preamble_suffix(buf: &[u8]) -> usize {
    (1..PREAMBLE.len()).rev().find(|&n| n <= buf.len() && buf[buf.len() - n..] == PREAMBLE[..n]).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip() {
        for code in 0..=u8::MAX {
            assert_eq!(Status::from_code(code).code(), code);
        }
        assert_eq!(Status::from_code(0x42), Status::Other(0x42));
    }

    #[test]
    fn keeps_a_split_preamble() {
        let mut d = FrameDecoder::default();
        d.push(&[0x01, 0xAA, 0xAA]);
        assert_eq!(d.next_frame(), None);
        assert_eq!(d.pending_garbage(), 1);
        d.push(&[0xAA, 0x96, 0x69, 0x00, 0x04, 0x00, 0x00, 0x80, 0x84]);
        assert_eq!(d.next_frame(), Some(Err(FrameError::Garbage { skipped: 1 })));
        assert_eq!(d.next_frame().and_then(Result::ok).map(|r| r.status()), Some(Status::NoCard));
    }
}
