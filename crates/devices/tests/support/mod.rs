//! Test support shared by the integration tests: pseudo-terminals, a card
//! text block built straight from the GA 467 layout table, SAM reply frames
//! and a hand-written CRC-16/MODBUS. Written from the protocol text, not
//! through the crate's own encoders, so a bug there cannot hide itself.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use nix::pty::openpty;
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// A pseudo-terminal pair: the driver opens `path` (the slave), the fake
/// device talks on `master`. `slave_guard` keeps the slave side alive
/// between driver reconnects; dropping it after the driver stopped makes
/// the master's blocking read fail, which ends the fake's thread.
pub struct Pty {
    pub master: File,
    pub slave_guard: OwnedFd,
    pub path: PathBuf,
}

pub fn pty() -> Pty {
    let pair = openpty(None, None).expect("openpty");
    // Raw master: no echo, no line editing, bytes pass untouched.
    let mut termios = tcgetattr(&pair.master).expect("tcgetattr");
    cfmakeraw(&mut termios);
    tcsetattr(&pair.master, SetArg::TCSANOW, &termios).expect("tcsetattr");
    let path = nix::unistd::ttyname(&pair.slave).expect("ttyname");
    Pty { master: File::from(pair.master), slave_guard: pair.slave, path }
}

pub fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("hex byte")).collect()
}

// ---- SAM ----------------------------------------------------------------

pub const PREAMBLE: [u8; 5] = [0xAA, 0xAA, 0xAA, 0x96, 0x69];

/// A module-to-host frame: LEN counts SW1..SW3, data and CHK; CHK is the XOR
/// of the length bytes, SW1..SW3 and data.
pub fn sam_reply(sw3: u8, data: &[u8]) -> Vec<u8> {
    let len = (3 + data.len() + 1) as u16;
    let mut body = len.to_be_bytes().to_vec();
    body.extend_from_slice(&[0x00, 0x00, sw3]);
    body.extend_from_slice(data);
    let chk = body.iter().fold(0u8, |a, b| a ^ b);
    let mut frame = PREAMBLE.to_vec();
    frame.extend_from_slice(&body);
    frame.push(chk);
    frame
}

/// Text block fields as (first byte, last byte) of the GA 467 table.
pub mod layout {
    pub const NAME: (usize, usize) = (0, 29);
    pub const SEX: (usize, usize) = (30, 31);
    pub const NATION: (usize, usize) = (32, 35);
    pub const BIRTH: (usize, usize) = (36, 51);
    pub const ADDRESS: (usize, usize) = (52, 121);
    pub const ID_NUMBER: (usize, usize) = (122, 157);
    pub const ISSUER: (usize, usize) = (158, 187);
    pub const VALID_FROM: (usize, usize) = (188, 203);
    pub const VALID_TO: (usize, usize) = (204, 219);
    /// 'J' permits only.
    pub const PASS_NUMBER: (usize, usize) = (220, 237);
    pub const ISSUE_COUNT: (usize, usize) = (238, 241);
    pub const TYPE_BYTE: usize = 248;
}

/// A 256-byte UCS-2 LE text block, space padded, with `fields` written at
/// their offsets and an optional card-type character at byte 248.
pub fn text_block(fields: &[((usize, usize), &str)], card_type: Option<char>) -> [u8; 256] {
    let mut text = [0u8; 256];
    for pair in text.chunks_exact_mut(2) {
        pair.copy_from_slice(&[0x20, 0x00]);
    }
    for &((first, last), value) in fields {
        let mut at = first;
        for unit in value.encode_utf16() {
            assert!(at < last, "field at {first} too long: {value}");
            text[at..at + 2].copy_from_slice(&unit.to_le_bytes());
            at += 2;
        }
    }
    if let Some(c) = card_type {
        text[layout::TYPE_BYTE..layout::TYPE_BYTE + 2].copy_from_slice(&(c as u16).to_le_bytes());
    }
    text
}

pub const RESIDENT_ID: &str = "11010519491231002X";

/// A resident card with the given number and "valid to".
pub fn resident_text(id: &str, valid_to: &str) -> [u8; 256] {
    use layout::*;
    text_block(
        &[
            (NAME, "张三"),
            (SEX, "1"),
            (NATION, "01"),
            (BIRTH, "19491231"),
            (ADDRESS, "北京市西城区某某胡同1号"),
            (ID_NUMBER, id),
            (ISSUER, "北京市公安局西城分局"),
            (VALID_FROM, "20150101"),
            (VALID_TO, valid_to),
        ],
        None,
    )
}

/// The read-base-info payload (after SW1..SW3): lengths, text, a 1024-byte
/// photo. The photo deliberately contains the preamble, as real WLT data
/// can: a decoder that scans for it inside a frame would break.
pub fn base_info_payload(text: &[u8; 256]) -> Vec<u8> {
    let mut data = vec![0x01, 0x00, 0x04, 0x00];
    data.extend_from_slice(text);
    let mut photo: Vec<u8> = (0..1024u32).map(|i| (i * 7 % 251) as u8).collect();
    photo[100..105].copy_from_slice(&PREAMBLE);
    data.extend_from_slice(&photo);
    data
}

// ---- Modbus -------------------------------------------------------------

/// CRC-16/MODBUS, bit by bit: reflected polynomial 0xA001, init 0xFFFF.
pub fn crc16_modbus(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &byte in data {
        crc ^= u16::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xA001 } else { crc >> 1 };
        }
    }
    crc
}

/// Appends the CRC, low byte first.
pub fn with_crc(mut frame: Vec<u8>) -> Vec<u8> {
    let crc = crc16_modbus(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}
