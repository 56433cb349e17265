//! The serial codecs of `gate-devices`: SAM frames and card text, QR
//! scanner framing, plate lines. Valid inputs are built with `hw-sim`'s
//! encoders (written from the protocol text, not from the daemon's codecs).

use crate::rng::Rng;
use crate::{Target, class};
use gate_devices::plate_reader::{PlateDebounce, parse_plate_line};
use gate_devices::qr_scanner::{QrFramer, Terminator};
use gate_devices::sam::{FrameDecoder, FrameError, parse_base_info, parse_text_block};
use hw_sim::SimCard;
use hw_sim::idcard::frame::encode_reply;
use hw_sim::idcard::text::encode_text;

/// A random, well-formed (check character right) or broken ID number.
pub fn id_number(rng: &mut Rng) -> String {
    let mut first17: String = "350203".to_owned();
    first17.push_str(&format!("{:04}{:02}{:02}", 1900 + rng.below(130), 1 + rng.below(13), 1 + rng.below(32)));
    first17.push_str(&format!("{:03}", rng.below(1000)));
    let check = gate_core::check_character(&first17).unwrap_or('X');
    match rng.below(8) {
        0 => first17,
        1 => format!("{first17}{}", if check == '0' { '1' } else { '0' }),
        _ => format!("{first17}{check}"),
    }
}

fn sim_card(rng: &mut Rng) -> SimCard {
    let mut card = SimCard::resident(&id_number(rng), &rng.text());
    if rng.below(4) == 0 {
        card.valid_to = ["长期", "20200230", "99999999", "", "2030010"][rng.below(5)].to_owned();
    }
    if rng.below(4) == 0 {
        card.valid_from = rng.text();
    }
    if rng.below(6) == 0 {
        card.card_type = Some(*rng.pick(&['J', 'I', 'Y', ' ', '\0', 'Z']));
    }
    if rng.below(8) == 0 {
        card.sex_code = *rng.pick(&['0', '1', '2', '9', 'x']);
    }
    card
}

/// A read-base-info payload: lengths, text, photo (and fingerprint).
fn base_info(rng: &mut Rng, with_fingerprint: bool) -> Vec<u8> {
    let text = encode_text(&sim_card(rng));
    let photo = rng.below(1100);
    let fp = if with_fingerprint { rng.below(1100) } else { 0 };
    let mut data = Vec::new();
    data.extend_from_slice(&256u16.to_be_bytes());
    data.extend_from_slice(&(photo as u16).to_be_bytes());
    if with_fingerprint {
        data.extend_from_slice(&(fp as u16).to_be_bytes());
    }
    data.extend_from_slice(&text);
    data.resize(data.len() + photo + fp, 0x5A);
    data
}

fn frame_label(r: &Result<gate_devices::sam::Response, FrameError>) -> u64 {
    match r {
        Ok(resp) => u64::from(resp.sw3) | 0x100,
        Err(FrameError::Checksum { .. }) => 1,
        Err(FrameError::Length { .. }) => 2,
        Err(FrameError::Garbage { .. }) => 3,
    }
}

fn card_label(r: &Result<gate_core::CardRecord, gate_devices::sam::CardError>) -> u64 {
    use gate_devices::sam::CardError;
    match r {
        Ok(record) => class(&format!("{:?}", record.kind)),
        Err(CardError::Malformed(_)) => 10,
        Err(CardError::UnsupportedCardType { type_byte }) => 20 + u64::from(*type_byte),
        Err(CardError::InvalidIdNumber { .. }) => 11,
    }
}

/// `sam-frame`: the module's byte stream, in chunks, through the frame
/// decoder; every good frame's data through the card parser both ways.
#[derive(Debug, Default)]
pub struct SamFrame;

impl Target for SamFrame {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(7);
        let mut out = vec![
            encode_reply(0x90, &[]),
            encode_reply(0x9F, &[0; 4]),
            encode_reply(0x80, &[]),
            encode_reply(0x31, &[]),
            encode_reply(0x90, &[0; 8]),
        ];
        for _ in 0..4 {
            out.push(encode_reply(0x90, &base_info(&mut rng, false)));
            out.push(encode_reply(0x90, &base_info(&mut rng, true)));
        }
        out
    }

    fn generate(&mut self, rng: &mut Rng) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for _ in 0..1 + rng.below(3) {
            if rng.below(4) == 0 {
                out.extend(rng.bytes(20));
            }
            let sw3 = *rng.pick(&[0x90, 0x90, 0x9F, 0x80, 0x31, 0x41, 0x10]);
            let with_fingerprint = rng.coin();
            let data = if sw3 == 0x90 { base_info(rng, with_fingerprint) } else { rng.bytes(8) };
            out.extend(encode_reply(sw3, &data));
        }
        Some(out)
    }

    fn dictionary(&self) -> Vec<Vec<u8>> {
        crate::tokens(&[
            &[0xAA, 0xAA, 0xAA, 0x96, 0x69],
            &[0x00, 0x00, 0x90],
            &[0x01, 0x00],
            &[0x10, 0x00],
            &[0xFF, 0xFF],
        ])
    }

    fn run(&mut self, input: &[u8]) -> u64 {
        // The first byte picks the read size: the port hands over bytes in
        // whatever chunks it likes.
        let (chunk, stream) = match input.split_first() {
            Some((c, rest)) => (usize::from(*c % 64) + 1, rest),
            None => (1, input),
        };
        let mut decoder = FrameDecoder::default();
        let mut outcome = Vec::new();
        for piece in stream.chunks(chunk) {
            decoder.push(piece);
            while let Some(frame) = decoder.next_frame() {
                outcome.push(frame_label(&frame));
                if let Ok(resp) = frame {
                    outcome.push(card_label(&parse_base_info(&resp.data, false)));
                    outcome.push(card_label(&parse_base_info(&resp.data, true)));
                }
            }
        }
        outcome.push(decoder.pending_garbage().min(1) as u64);
        outcome.sort_unstable();
        outcome.dedup();
        class(&outcome)
    }
}

/// `sam-card`: the 256-byte text block and the base-info payload directly.
#[derive(Debug, Default)]
pub struct SamCard;

impl Target for SamCard {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let mut rng = Rng::new(11);
        (0..8).map(|i| base_info(&mut rng, i % 2 == 1)).collect()
    }

    fn generate(&mut self, rng: &mut Rng) -> Option<Vec<u8>> {
        let with_fingerprint = rng.coin();
        Some(base_info(rng, with_fingerprint))
    }

    fn dictionary(&self) -> Vec<Vec<u8>> {
        // UCS-2LE digits, X, 长期, the card-type bytes.
        crate::tokens(&[b"1\0", b"9\0", b"X\0", b"\x7f\x95\x1f\x67", b"J", b"I", b"Y", b"\0\0"])
    }

    fn run(&mut self, input: &[u8]) -> u64 {
        let a = card_label(&parse_base_info(input, false));
        let b = card_label(&parse_base_info(input, true));
        let mut text = [0u8; 256];
        let n = input.len().min(256);
        text[..n].copy_from_slice(&input[input.len() - n..]);
        let c = card_label(&parse_text_block(&text));
        class(&(a, b, c))
    }
}

/// `qr-framer`: a scanner's byte stream under each terminator, with and
/// without a prefix, in chunks, with idle flushes.
#[derive(Debug, Default)]
pub struct QrFramerTarget;

impl Target for QrFramerTarget {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        vec![
            b"\x00VP1.eyJraWQiOiJhIn0.c2ln\r".to_vec(),
            b"\x01HC1:6BF+70790T9WJWG.FKY*4GO0.O1CV2 O5 N2FBBRW1*70HS8WY04AC\r\n".to_vec(),
            b"\x02garbage\xff\xfe\tnext\t".to_vec(),
            b"\x03CODE-1234".to_vec(),
            b"\x04\r\n\r\n\n\r".to_vec(),
        ]
    }

    fn generate(&mut self, rng: &mut Rng) -> Option<Vec<u8>> {
        let mut out = vec![rng.byte()];
        for _ in 0..1 + rng.below(4) {
            if rng.below(3) == 0 {
                out.extend_from_slice(b"QR:");
            }
            out.extend(rng.text().into_bytes());
            out.extend_from_slice(rng.pick(&["\r", "\n", "\r\n", "\t", ""]).as_bytes());
        }
        Some(out)
    }

    fn dictionary(&self) -> Vec<Vec<u8>> {
        crate::tokens(&[b"\r\n", b"\r", b"\n", b"\t", b"QR:", b"VP1.", b"HC1:", b"\xe4\xb8\xad", b"\xff"])
    }

    fn run(&mut self, input: &[u8]) -> u64 {
        let (control, stream) = match input.split_first() {
            Some((c, rest)) => (*c, rest),
            None => (0, input),
        };
        let terminator = [Terminator::Cr, Terminator::Lf, Terminator::CrLf, Terminator::Tab, Terminator::None]
            [usize::from(control % 5)];
        let prefix = (control & 0x08 != 0).then(|| "QR:".to_owned());
        let max_len = if control & 0x10 != 0 { 16 } else { 2048 };
        let chunk = usize::from(control >> 5) * 7 + 1;
        let mut framer = QrFramer::new(terminator, prefix, max_len);
        let mut outcome = Vec::new();
        for piece in stream.chunks(chunk) {
            for frame in framer.push(piece) {
                outcome.push(match frame {
                    Ok(text) => {
                        // Never longer than the limit, never empty, always text.
                        if text.len() > max_len || text.is_empty() {
                            panic!("framer returned a frame of {} bytes (limit {max_len})", text.len());
                        }
                        0
                    }
                    Err(e) => class(&e.to_string().split(' ').next().map(str::to_owned)),
                });
            }
        }
        if let Some(last) = framer.flush_idle() {
            outcome.push(u64::from(last.is_ok()) + 100);
        }
        let _ = framer.take_garbage_bytes();
        outcome.sort_unstable();
        outcome.dedup();
        class(&(control % 5, outcome))
    }
}

/// `plate-line`: one line from the plate camera, then the debouncer.
#[derive(Debug)]
pub struct PlateLine {
    debounce: PlateDebounce,
    now_ms: u64,
}

impl Default for PlateLine {
    fn default() -> Self {
        PlateLine { debounce: PlateDebounce::new(std::time::Duration::from_secs(10)), now_ms: 0 }
    }
}

impl Target for PlateLine {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        [
            "闽D12345,blue,0.93\r\n",
            "粤B·D12345,green,1.0\n",
            "京A12345,yellow,0",
            "沪C1234学,white,0.5",
            "闽D12345,,0.9",
            "闽D12345,blue,NaN",
            "闽D12345,blue,1e309",
            ",,",
            "ABC,blue,0.9,extra",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    fn generate(&mut self, rng: &mut Rng) -> Option<Vec<u8>> {
        let province = *rng.pick(&["闽", "粤", "京", "沪", "使", "WJ", ""]);
        let plate = format!("{province}{}{}", char::from(b'A' + rng.below(26) as u8), rng.below(1_000_000));
        let colour = *rng.pick(&["blue", "green", "yellow", "white", "black", "", "蓝"]);
        let confidence = *rng.pick(&["0.9", "1", "0", "-0", "1.0000001", "inf", "nan", ".5", "5e-1"]);
        Some(format!("{plate},{colour},{confidence}\r\n").into_bytes())
    }

    fn dictionary(&self) -> Vec<Vec<u8>> {
        crate::tokens(&[b",", b"\r\n", "·".as_bytes(), "闽".as_bytes(), b"0.", b"-", b"e"])
    }

    fn run(&mut self, input: &[u8]) -> u64 {
        let line = String::from_utf8_lossy(input);
        self.now_ms += 1_000;
        match parse_plate_line(&line) {
            Ok(read) => {
                if !(0.0..=1.0).contains(&read.confidence) {
                    panic!("confidence {} accepted outside 0..=1", read.confidence);
                }
                class(&(1, self.debounce.admit(&read.plate, self.now_ms)))
            }
            Err(e) => class(&(2, e.to_string().split(' ').take(2).collect::<String>())),
        }
    }
}
