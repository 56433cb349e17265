//! The SAM resident ID card module's serial protocol (GA 467 frames) and the
//! card data it returns, as pure functions: no I/O, no clock.
//!
//! [`encode_command`] and [`FrameDecoder`] handle the frame layer (preamble,
//! length, XOR checksum, resynchronisation after line noise);
//! [`parse_base_info`] and [`parse_text_block`] turn the read-base-info
//! payload into a [`gate_core::CardRecord`], dropping the photo.

mod card;
mod frame;

pub use card::{CardError, parse_base_info, parse_text_block};
pub use frame::{
    FrameDecoder, FrameError, MAX_DECLARED_LEN, MIN_DECLARED_LEN, PREAMBLE, Response, Status, encode_command,
};

/// The commands the driver sends, as `(CMD, PARA)`.
pub mod cmd {
    /// Reset the SAM.
    pub const RESET: (u8, u8) = (0x10, 0xFF);
    /// Ask the SAM for its self-test status.
    pub const SAM_STATUS: (u8, u8) = (0x11, 0xFF);
    /// Read the SAM's own serial number.
    pub const READ_SAM_ID: (u8, u8) = (0x12, 0xFF);
    /// Look for a card in the field (9F found, 80 none).
    pub const FIND_CARD: (u8, u8) = (0x20, 0x01);
    /// Select the card found.
    pub const SELECT_CARD: (u8, u8) = (0x20, 0x02);
    /// Read text and photo.
    pub const READ_BASE: (u8, u8) = (0x30, 0x01);
    /// Read text, photo and fingerprint templates.
    pub const READ_BASE_FP: (u8, u8) = (0x30, 0x10);
}
