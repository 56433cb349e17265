//! The read-base-info payload: the 256-byte UCS-2 text block of a resident
//! ID card or residence permit turned into a [`CardRecord`], and the photo
//! (and fingerprint) bytes dropped unread.
//!
//! Offsets follow the GA 467 layout table (bytes, inclusive ranges):
//! name 0-29, sex 30-31, nation 32-35, birth 36-51, address 52-121, ID number
//! 122-157, issuer 158-187, valid from 188-203, valid to 204-219, reserved
//! 220-255 with the card-type byte at 248.

use gate_core::id_number::mask_id_like;
use gate_core::{CardKind, CardRecord, CardValidTo, CivilDate, IdNumber, Sex};

/// Size of the text block on every card generation.
const TEXT_LEN: usize = 256;
/// Offset of the card-type byte inside the text block.
const TYPE_BYTE_OFFSET: usize = 248;

/// Why a read-base-info payload did not give a card record. No variant
/// carries personal data in clear.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    /// The payload is too short for what its length fields declare, or the
    /// text length is not the 256 bytes every card has.
    #[error("malformed card data: {0}")]
    Malformed(String),
    /// A card this reader cannot turn into a record yet: 'Y' (2023
    /// foreigner permanent residence card, layout not public) or 'I' (2017
    /// foreigner card, whose 15-character number has no GB 11643 check).
    #[error("unsupported card type {:?} ({})", char::from(*type_byte), unsupported_reason(*type_byte))]
    UnsupportedCardType { type_byte: u8 },
    /// The ID number fails the GB 11643 check (or its shape); only the
    /// masked form is kept.
    #[error("ID number {masked} fails the GB 11643-1999 check")]
    InvalidIdNumber { masked: String },
}

fn unsupported_reason(type_byte: u8) -> &'static str {
    match type_byte {
        b'Y' => "2023 foreigner permanent residence card: text layout not public",
        b'I' => "2017 foreigner permanent residence card: 15-character number without GB 11643 check",
        _ => "unknown card type",
    }
}

/// Parses the read-base-info payload (the data after SW1..SW3: text length,
/// photo length, fingerprint length if `with_fingerprint`, text, photo,
/// fingerprint) into a [`CardRecord`]. The photo and fingerprint bytes are
/// dropped, never kept.
pub fn parse_base_info(data: &[u8], with_fingerprint: bool) -> Result<CardRecord, CardError> {
    let header = if with_fingerprint { 6 } else { 4 };
    if data.len() < header {
        return Err(CardError::Malformed(format!(
            "payload of {} bytes is shorter than its {header}-byte length header",
            data.len()
        )));
    }
    let field = |i: usize| usize::from(u16::from_be_bytes([data[i], data[i + 1]]));
    let text_len = field(0);
    let photo_len = field(2);
    let fp_len = if with_fingerprint { field(4) } else { 0 };
    if text_len != TEXT_LEN {
        return Err(CardError::Malformed(format!("text length field says {text_len}, every card has {TEXT_LEN}")));
    }
    let needed = header + text_len + photo_len + fp_len;
    if data.len() < needed {
        // A truncated payload means the module's reply is not what it
        // declares; refuse rather than parse a record from a half-frame.
        return Err(CardError::Malformed(format!(
            "payload of {} bytes is shorter than the {needed} its length fields declare",
            data.len()
        )));
    }
    let mut text = [0u8; TEXT_LEN];
    text.copy_from_slice(&data[header..header + TEXT_LEN]);
    parse_text_block(&text)
}

/// Parses the 256-byte UCS-2 LE text block.
pub fn parse_text_block(text: &[u8; 256]) -> Result<CardRecord, CardError> {
    let kind = match text[TYPE_BYTE_OFFSET] {
        b'J' => CardKind::HkMacaoTaiwanPermit,
        // The 2017 foreigner permanent residence card has a 15-character
        // number (122-151) that GB 11643 does not cover, while `IdNumber`
        // (and so `CardRecord`) only holds a checked 18-character number.
        // Refuse it clearly instead of storing an unchecked number.
        b'I' => return Err(CardError::UnsupportedCardType { type_byte: b'I' }),
        b'Y' => return Err(CardError::UnsupportedCardType { type_byte: b'Y' }),
        _ => CardKind::ResidentId,
    };

    // The residence permit ('J') keeps the resident layout for everything
    // the record holds; its pass number (220-237) and issue count (238-241)
    // are not part of the record. Its 18-character number at 122-157 is the
    // one checked and used as the identity.
    let raw_id = ucs2_field(text, 122, 157);
    let id_number =
        IdNumber::parse(&raw_id).map_err(|_| CardError::InvalidIdNumber { masked: mask_id_like(&raw_id) })?;

    let valid_from = CivilDate::parse_compact(&ucs2_field(text, 188, 203)).ok();
    let valid_to_raw = ucs2_field(text, 204, 219);
    let valid_to = match (valid_to_raw.as_str(), valid_from) {
        // Either printed date unreadable: the card cannot say it is valid.
        (_, None) => CardValidTo::Unreadable,
        ("长期", Some(_)) => CardValidTo::LongTerm,
        (raw, Some(_)) => CivilDate::parse_compact(raw).map_or(CardValidTo::Unreadable, CardValidTo::Date),
    };

    Ok(CardRecord {
        kind,
        name: ucs2_field(text, 0, 29),
        sex: Sex::from_code(&ucs2_field(text, 30, 31)),
        nation_code: ucs2_field(text, 32, 35),
        birth_date: CivilDate::parse_compact(&ucs2_field(text, 36, 51)).ok(),
        address: ucs2_field(text, 52, 121),
        id_number,
        issuer: ucs2_field(text, 158, 187),
        valid_from,
        valid_to: Some(valid_to),
    })
}

/// Decodes bytes `first..=last` as UCS-2 LE and trims the space / NUL padding.
fn ucs2_field(text: &[u8; 256], first: usize, last: usize) -> String {
    let units = text[first..=last].chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]]));
    // UCS-2 has no surrogate pairs; a stray one is a corrupt card field and
    // becomes U+FFFD rather than an error for the whole record.
    char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect::<String>()
        .trim_matches(|c| c == ' ' || c == '\0')
        .to_owned()
}
