//! Modbus RTU server side for the simulated IO board: CRC-16/MODBUS, request
//! framing by function code with CRC resync, and the coil/input data model
//! (docs/PROTOCOLS.md §5, written from the standard, not from the daemon's client).

/// Read coils.
pub const FC_READ_COILS: u8 = 0x01;
/// Read discrete inputs.
pub const FC_READ_INPUTS: u8 = 0x02;
/// Write single coil.
pub const FC_WRITE_COIL: u8 = 0x05;
/// Write multiple coils.
pub const FC_WRITE_COILS: u8 = 0x0F;

/// FC05 to this address plus a coil number switches the coil on for a time
/// the board keeps itself (docs/PROTOCOLS.md: boards that pulse a relay); the
/// value is the pulse width in 100 ms units.
pub const TIMED_PULSE_BASE: u16 = 0x0200;
/// The unit of a timed pulse's width, in milliseconds.
pub const TIMED_PULSE_UNIT_MS: u64 = 100;

/// Exception: function code not supported.
pub const EX_ILLEGAL_FUNCTION: u8 = 0x01;
/// Exception: address range outside the board.
pub const EX_ILLEGAL_ADDRESS: u8 = 0x02;
/// Exception: value or quantity not allowed.
pub const EX_ILLEGAL_VALUE: u8 = 0x03;

/// Longest RTU frame the standard allows.
const MAX_FRAME: usize = 256;

/// CRC-16/MODBUS: poly 0x8005 reflected (0xA001), init 0xFFFF, no final xor.
pub fn crc16_modbus(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xA001 } else { crc >> 1 };
        }
    }
    crc
}

/// Appends the CRC, low byte first, to `unit | fc | data`.
pub fn with_crc(mut frame: Vec<u8>) -> Vec<u8> {
    let crc = crc16_modbus(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}

/// True if the last two bytes are the CRC of the rest.
pub fn crc_ok(frame: &[u8]) -> bool {
    frame.len() >= 4 && {
        let (body, crc) = frame.split_at(frame.len() - 2);
        crc16_modbus(body).to_le_bytes() == [crc[0], crc[1]]
    }
}

/// How the front of the receive buffer splits into a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Wait for more bytes.
    NeedMore,
    /// The first byte cannot start a valid frame: drop it and look again.
    Drop1,
    /// A CRC-valid frame of this many bytes.
    Frame(usize),
}

/// Finds a request at the start of `buf`. RTU delimits frames by silence,
/// which a pty does not preserve, so the length comes from the function code.
/// `line_idle` means no more bytes are coming for now: an incomplete frame is
/// then garbage.
pub fn split_request(buf: &[u8], line_idle: bool) -> Split {
    let more = if line_idle { Split::Drop1 } else { Split::NeedMore };
    if buf.len() < 2 {
        return if buf.is_empty() { Split::NeedMore } else { more };
    }
    let len = match buf[1] {
        0x01..=0x06 => 8,
        0x0F | 0x10 => match buf.get(6) {
            Some(&count) => 9 + usize::from(count),
            None => return more,
        },
        // Unknown function: its length is unknowable, so take the shortest
        // prefix that carries a valid CRC (it still earns an exception 01).
        // Without one, assume garbage and resync at once: hosts write a whole
        // frame in one go, so a real frame is complete by now.
        _ => {
            let upto = buf.len().min(MAX_FRAME);
            return match (4..=upto).find(|&n| crc_ok(&buf[..n])) {
                Some(n) => Split::Frame(n),
                None => Split::Drop1,
            };
        }
    };
    if buf.len() < len {
        return more;
    }
    if crc_ok(&buf[..len]) { Split::Frame(len) } else { Split::Drop1 }
}

/// The board's data model.
#[derive(Clone, Debug)]
pub struct Bank {
    /// Unit address answered to.
    pub unit_id: u8,
    /// Relay outputs.
    pub coils: Vec<bool>,
    /// Discrete inputs.
    pub inputs: Vec<bool>,
}

/// What executing one request did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Reply frame; None when the request is not ours or was a broadcast.
    pub reply: Option<Vec<u8>>,
    /// Coil writes in order (coil, on, previous state).
    pub writes: Vec<(u16, bool, bool)>,
    /// Whether the request was addressed to us (or broadcast) and executed.
    pub served: bool,
    /// Timed pulses started (coil, width in 100 ms units): the board drops
    /// each coil on its own when the width runs out.
    pub pulses: Vec<(u16, u16)>,
}

impl Bank {
    /// A board with all coils and inputs off.
    pub fn new(unit_id: u8, coils: u16, inputs: u16) -> Bank {
        Bank { unit_id, coils: vec![false; usize::from(coils)], inputs: vec![false; usize::from(inputs)] }
    }

    /// Executes one CRC-valid frame. Unit 0 is a broadcast: writes are
    /// applied but, per the standard, never answered.
    pub fn execute(&mut self, frame: &[u8]) -> Outcome {
        let unit = frame[0];
        if unit != self.unit_id && unit != 0 {
            return Outcome::default();
        }
        let mut writes = Vec::new();
        let mut pulses = Vec::new();
        let reply = self.pdu(frame, &mut writes, &mut pulses).unwrap_or_else(|code| vec![frame[1] | 0x80, code]);
        let mut full = vec![self.unit_id];
        full.extend(reply);
        Outcome { reply: (unit != 0).then(|| with_crc(full)), writes, served: true, pulses }
    }

    /// Reply PDU (fc | data) or an exception code.
    fn pdu(
        &mut self,
        frame: &[u8],
        writes: &mut Vec<(u16, bool, bool)>,
        pulses: &mut Vec<(u16, u16)>,
    ) -> Result<Vec<u8>, u8> {
        let fc = frame[1];
        let word = |i: usize| u16::from_be_bytes([frame[i], frame[i + 1]]);
        match fc {
            FC_READ_COILS | FC_READ_INPUTS => {
                let (addr, qty) = (word(2), word(4));
                if !(1..=2000).contains(&qty) {
                    return Err(EX_ILLEGAL_VALUE);
                }
                let bits = if fc == FC_READ_COILS { &self.coils } else { &self.inputs };
                let range = in_range(addr, qty, bits.len())?;
                let mut data = vec![0u8; usize::from(qty).div_ceil(8)];
                for (i, &on) in bits[range].iter().enumerate() {
                    if on {
                        data[i / 8] |= 1 << (i % 8);
                    }
                }
                let mut out = vec![fc, data.len() as u8];
                out.extend(data);
                Ok(out)
            }
            FC_WRITE_COIL if word(2) >= TIMED_PULSE_BASE => {
                let (coil, units) = (word(2) - TIMED_PULSE_BASE, word(4));
                if units == 0 {
                    return Err(EX_ILLEGAL_VALUE);
                }
                in_range(coil, 1, self.coils.len())?;
                self.set_coil(coil, true, writes);
                pulses.push((coil, units));
                Ok(frame[1..6].to_vec())
            }
            FC_WRITE_COIL => {
                let (addr, value) = (word(2), word(4));
                let on = match value {
                    0xFF00 => true,
                    0x0000 => false,
                    _ => return Err(EX_ILLEGAL_VALUE),
                };
                in_range(addr, 1, self.coils.len())?;
                self.set_coil(addr, on, writes);
                Ok(frame[1..6].to_vec())
            }
            FC_WRITE_COILS => {
                let (addr, qty, count) = (word(2), word(4), usize::from(frame[6]));
                if !(1..=0x07B0).contains(&qty) || count != usize::from(qty).div_ceil(8) {
                    return Err(EX_ILLEGAL_VALUE);
                }
                in_range(addr, qty, self.coils.len())?;
                let values = &frame[7..7 + count];
                for i in 0..qty {
                    let on = values[usize::from(i / 8)] & (1 << (i % 8)) != 0;
                    self.set_coil(addr + i, on, writes);
                }
                Ok(frame[1..6].to_vec())
            }
            _ => Err(EX_ILLEGAL_FUNCTION),
        }
    }

    fn set_coil(&mut self, coil: u16, on: bool, writes: &mut Vec<(u16, bool, bool)>) {
        let slot = &mut self.coils[usize::from(coil)];
        writes.push((coil, on, *slot));
        *slot = on;
    }
}

fn in_range(addr: u16, qty: u16, len: usize) -> Result<std::ops::Range<usize>, u8> {
    let (start, end) = (usize::from(addr), usize::from(addr) + usize::from(qty));
    if end > len { Err(EX_ILLEGAL_ADDRESS) } else { Ok(start..end) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("test hex")).collect()
    }

    fn bank() -> Bank {
        Bank::new(1, 8, 8)
    }

    fn run(bank: &mut Bank, req: &str) -> Option<Vec<u8>> {
        let frame = with_crc(hex(req));
        assert_eq!(split_request(&frame, false), Split::Frame(frame.len()));
        bank.execute(&frame).reply
    }

    #[test]
    fn crc_check_value() {
        assert_eq!(crc16_modbus(b"123456789"), 0x4B37);
    }

    #[test]
    fn crc_known_frames() {
        // Widely published: FC05 coil 0 on for unit 1, and the Simply Modbus
        // read-coils example for unit 17.
        assert_eq!(with_crc(hex("01 05 00 00 FF 00")), hex("01 05 00 00 FF 00 8C 3A"));
        assert_eq!(with_crc(hex("11 01 00 13 00 25")), hex("11 01 00 13 00 25 0E 84"));
    }

    #[test]
    fn fc05_echo_and_state() {
        let mut b = bank();
        let on = run(&mut b, "01 05 00 03 FF 00");
        assert_eq!(on, Some(with_crc(hex("01 05 00 03 FF 00"))));
        assert!(b.coils[3]);
        let off = run(&mut b, "01 05 00 03 00 00");
        assert_eq!(off, Some(with_crc(hex("01 05 00 03 00 00"))));
        assert!(!b.coils[3]);
    }

    #[test]
    fn fc05_timed_pulse_switches_on_and_asks_for_the_drop() {
        let mut b = bank();
        // Coil 1 for 1.5 s (15 units of 100 ms), echoed like any FC05.
        let out = b.execute(&with_crc(hex("01 05 02 01 00 0F")));
        assert_eq!(out.reply, Some(with_crc(hex("01 05 02 01 00 0F"))));
        assert_eq!(out.pulses, vec![(1, 15)]);
        assert_eq!(out.writes, vec![(1, true, false)]);
        assert!(b.coils[1]);
        // Width 0 and coils the board lacks are refused, nothing switched.
        assert_eq!(run(&mut b, "01 05 02 02 00 00"), Some(with_crc(hex("01 85 03"))));
        assert_eq!(run(&mut b, "01 05 02 08 00 05"), Some(with_crc(hex("01 85 02"))));
        assert!(!b.coils[2]);
    }

    #[test]
    fn fc01_packs_bits_from_first_address() {
        let mut b = bank();
        b.coils[1] = true;
        b.coils[4] = true;
        assert_eq!(run(&mut b, "01 01 00 00 00 08"), Some(with_crc(hex("01 01 01 12"))));
        // Starting at address 1: coil 1 becomes bit 0.
        assert_eq!(run(&mut b, "01 01 00 01 00 04"), Some(with_crc(hex("01 01 01 09"))));
    }

    #[test]
    fn fc02_reads_inputs() {
        let mut b = bank();
        b.inputs[0] = true;
        b.inputs[7] = true;
        assert_eq!(run(&mut b, "01 02 00 00 00 08"), Some(with_crc(hex("01 02 01 81"))));
        assert_eq!(run(&mut b, "01 02 00 07 00 01"), Some(with_crc(hex("01 02 01 01"))));
    }

    #[test]
    fn fc0f_writes_each_coil() {
        let mut b = bank();
        let out = b.execute(&with_crc(hex("01 0F 00 02 00 03 01 05")));
        assert_eq!(out.reply, Some(with_crc(hex("01 0F 00 02 00 03"))));
        assert_eq!(out.writes, vec![(2, true, false), (3, false, false), (4, true, false)]);
        assert_eq!(b.coils, [false, false, true, false, true, false, false, false]);
    }

    #[test]
    fn exceptions() {
        let mut b = bank();
        assert_eq!(run(&mut b, "01 05 00 08 FF 00"), Some(with_crc(hex("01 85 02"))));
        assert_eq!(run(&mut b, "01 05 00 00 12 34"), Some(with_crc(hex("01 85 03"))));
        assert_eq!(run(&mut b, "01 01 00 04 00 05"), Some(with_crc(hex("01 81 02"))));
        assert_eq!(run(&mut b, "01 02 00 00 00 00"), Some(with_crc(hex("01 82 03"))));
        assert_eq!(run(&mut b, "01 0F 00 06 00 03 01 07"), Some(with_crc(hex("01 8F 02"))));
        assert_eq!(run(&mut b, "01 0F 00 00 00 03 02 07 00"), Some(with_crc(hex("01 8F 03"))));
        assert_eq!(run(&mut b, "01 03 00 00 00 01"), Some(with_crc(hex("01 83 01"))));
        assert_eq!(run(&mut b, "01 2B 0E 01 00"), Some(with_crc(hex("01 AB 01"))));
        assert!(b.coils.iter().all(|c| !c), "failed requests change nothing");
    }

    #[test]
    fn other_units_ignored_broadcast_silent() {
        let mut b = bank();
        let out = b.execute(&with_crc(hex("02 05 00 00 FF 00")));
        assert_eq!(out, Outcome::default());
        let out = b.execute(&with_crc(hex("00 05 00 01 FF 00")));
        assert_eq!(out.reply, None);
        assert!(b.coils[1]);
    }

    #[test]
    fn resync_after_garbage() {
        let frame = with_crc(hex("01 05 00 00 FF 00"));
        let mut buf = vec![0x07, 0x01, 0xFF];
        buf.extend(&frame);
        let mut dropped = 0;
        loop {
            match split_request(&buf[dropped..], false) {
                Split::Drop1 => dropped += 1,
                Split::Frame(n) => {
                    assert_eq!(&buf[dropped..dropped + n], &frame[..]);
                    break;
                }
                Split::NeedMore => panic!("stalled at {dropped}"),
            }
        }
        assert_eq!(dropped, 3);
    }

    #[test]
    fn incomplete_frame_waits_then_drops_when_idle() {
        let frame = with_crc(hex("01 05 00 00 FF 00"));
        assert_eq!(split_request(&frame[..5], false), Split::NeedMore);
        assert_eq!(split_request(&frame[..5], true), Split::Drop1);
        assert_eq!(split_request(&[0x01, 0x0F, 0x00], false), Split::NeedMore);
    }
}
