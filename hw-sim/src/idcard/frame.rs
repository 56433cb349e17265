//! SAM (GA 467) frame codec, device side: splits the host's byte stream into
//! command frames and encodes status replies, straight from docs/PROTOCOLS.md §1.

/// Every frame in either direction starts with these five bytes.
pub const PREAMBLE: [u8; 5] = [0xAA, 0xAA, 0xAA, 0x96, 0x69];

/// Host commands carry no data today; anything longer than this is treated as a
/// corrupt length field, so a garbage LEN cannot make us wait for 64 KiB.
pub const MAX_HOST_LEN: usize = 0x0100;

/// SW3 status codes the simulator emits.
pub mod status {
    /// Operation succeeded.
    pub const OK: u8 = 0x90;
    /// No content for this item (e.g. no additional address).
    pub const NO_CONTENT: u8 = 0x91;
    /// Find card succeeded.
    pub const FIND_OK: u8 = 0x9F;
    /// Checksum error in the host frame.
    pub const CHECKSUM_ERROR: u8 = 0x10;
    /// Length error in the host frame.
    pub const LENGTH_ERROR: u8 = 0x11;
    /// Unknown command or parameter.
    pub const COMMAND_ERROR: u8 = 0x21;
    /// Reading the card failed (used when there is no card to read).
    pub const READ_FAILED: u8 = 0x41;
    /// Find card failed: no (new) card in the field.
    pub const FIND_FAILED: u8 = 0x80;
    /// Select card failed.
    pub const SELECT_FAILED: u8 = 0x81;
}

/// XOR of `bytes`: the SAM checksum when given everything from LEN_HI to the
/// last data byte.
pub fn xor_checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |acc, b| acc ^ b)
}

/// Builds a complete frame: preamble, LEN (body + checksum), body, checksum.
fn frame(body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len() + 1).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(PREAMBLE.len() + 2 + body.len() + 1);
    out.extend_from_slice(&PREAMBLE);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    let chk = xor_checksum(&out[PREAMBLE.len()..]);
    out.push(chk);
    out
}

/// A host-to-module command frame (what a daemon sends). Handy for tests.
pub fn host_frame(cmd: u8, para: u8, data: &[u8]) -> Vec<u8> {
    let mut body = vec![cmd, para];
    body.extend_from_slice(data);
    frame(&body)
}

/// A module-to-host reply: SW1 = SW2 = 0x00, SW3 = `sw3`, then `data`.
pub fn encode_reply(sw3: u8, data: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x00, sw3];
    body.extend_from_slice(data);
    frame(&body)
}

/// One command frame from the host, checksum already verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCommand {
    /// CMD byte.
    pub cmd: u8,
    /// PARA byte.
    pub para: u8,
    /// Bytes between PARA and the checksum.
    pub data: Vec<u8>,
}

/// Outcome of looking at the front of the receive buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet for a verdict.
    NeedMore,
    /// The first `n` bytes cannot start a frame: drop them.
    Skip(usize),
    /// A frame of `consumed` bytes; `Err(status)` if it must be answered with
    /// an error status instead of being executed.
    Frame {
        /// Bytes to remove from the buffer.
        consumed: usize,
        /// The command, or the SW3 error status to reply with.
        result: Result<HostCommand, u8>,
    },
}

/// Looks for one host frame at the start of `buf`, resynchronising on the
/// preamble when the line carries garbage.
pub fn parse_host(buf: &[u8]) -> Parsed {
    if let Some(pos) = find(buf, &PREAMBLE) {
        if pos > 0 {
            return Parsed::Skip(pos);
        }
    } else {
        // Keep only a tail that could be the start of a preamble split across reads.
        let keep =
            (1..PREAMBLE.len()).rev().find(|&k| k <= buf.len() && buf[buf.len() - k..] == PREAMBLE[..k]).unwrap_or(0);
        return if buf.len() > keep { Parsed::Skip(buf.len() - keep) } else { Parsed::NeedMore };
    }
    let header = PREAMBLE.len() + 2;
    if buf.len() < header {
        return Parsed::NeedMore;
    }
    let len = usize::from(u16::from_be_bytes([buf[5], buf[6]]));
    if !(3..=MAX_HOST_LEN).contains(&len) {
        // Nothing trustworthy follows; answer and resync after the header.
        return Parsed::Frame { consumed: header, result: Err(status::LENGTH_ERROR) };
    }
    let total = header + len;
    if buf.len() < total {
        return Parsed::NeedMore;
    }
    let chk = buf[total - 1];
    if xor_checksum(&buf[PREAMBLE.len()..total - 1]) != chk {
        return Parsed::Frame { consumed: total, result: Err(status::CHECKSUM_ERROR) };
    }
    Parsed::Frame {
        consumed: total,
        result: Ok(HostCommand { cmd: buf[header], para: buf[header + 1], data: buf[header + 2..total - 1].to_vec() }),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("test hex")).collect()
    }

    #[test]
    fn reply_find_fail_matches_hardware_md() {
        assert_eq!(encode_reply(0x80, &[]), hex("AA AA AA 96 69 00 04 00 00 80 84"));
    }

    #[test]
    fn reply_find_ok_matches_hardware_md() {
        assert_eq!(encode_reply(0x9F, &[0; 4]), hex("AA AA AA 96 69 00 08 00 00 9F 00 00 00 00 97"));
    }

    #[test]
    fn reply_select_ok_is_19_bytes() {
        let r = encode_reply(0x90, &[0; 8]);
        assert_eq!(r.len(), 19);
        assert_eq!(&r[5..7], &[0x00, 0x0C]);
    }

    #[test]
    fn host_frames_match_hardware_md_table() {
        let table = [
            (0x10, 0xFF, "AA AA AA 96 69 00 03 10 FF EC"),
            (0x11, 0xFF, "AA AA AA 96 69 00 03 11 FF ED"),
            (0x12, 0xFF, "AA AA AA 96 69 00 03 12 FF EE"),
            (0x20, 0x01, "AA AA AA 96 69 00 03 20 01 22"),
            (0x20, 0x02, "AA AA AA 96 69 00 03 20 02 21"),
            (0x30, 0x01, "AA AA AA 96 69 00 03 30 01 32"),
            (0x30, 0x03, "AA AA AA 96 69 00 03 30 03 30"),
            (0x30, 0x10, "AA AA AA 96 69 00 03 30 10 23"),
        ];
        for (cmd, para, text) in table {
            let bytes = hex(text);
            assert_eq!(host_frame(cmd, para, &[]), bytes, "{text}");
            assert_eq!(
                parse_host(&bytes),
                Parsed::Frame { consumed: 10, result: Ok(HostCommand { cmd, para, data: vec![] }) },
                "{text}"
            );
        }
    }

    #[test]
    fn parse_skips_garbage_before_preamble() {
        let mut buf = hex("01 AA 02 AA AA");
        buf.extend(hex("AA AA AA 96 69 00 03 20 01 22"));
        assert_eq!(parse_host(&buf), Parsed::Skip(5));
    }

    #[test]
    fn parse_keeps_partial_preamble_tail() {
        assert_eq!(parse_host(&hex("55 66 AA AA")), Parsed::Skip(2));
        assert_eq!(parse_host(&hex("AA AA")), Parsed::NeedMore);
        assert_eq!(parse_host(&hex("AA AA AA 96 69 00")), Parsed::NeedMore);
        assert_eq!(parse_host(&hex("AA AA AA 96 69 00 03 20 01")), Parsed::NeedMore);
    }

    #[test]
    fn parse_bad_checksum_is_status_10() {
        let buf = hex("AA AA AA 96 69 00 03 20 01 23");
        assert_eq!(parse_host(&buf), Parsed::Frame { consumed: 10, result: Err(0x10) });
    }

    #[test]
    fn parse_bad_length_is_status_11() {
        for len in ["00 00", "00 02", "FF FF"] {
            let buf = hex(&format!("AA AA AA 96 69 {len} 20 01 22"));
            assert_eq!(parse_host(&buf), Parsed::Frame { consumed: 7, result: Err(0x11) }, "{len}");
        }
    }
}
