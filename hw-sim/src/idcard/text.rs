//! The 256-byte UCS-2LE text block of a resident ID card (docs/PROTOCOLS.md §1 table)
//! plus the opaque photo / fingerprint filler that follows it on the wire.

use super::SimCard;

/// Size of the text block.
pub const TEXT_LEN: usize = 256;
/// Size of the WLT photo block.
pub const PHOTO_LEN: usize = 1024;
/// Size of the fingerprint template block (command 30 10 only).
pub const FINGERPRINT_LEN: usize = 1024;

/// Byte ranges of the resident-ID fields inside the text block.
pub mod field {
    use std::ops::Range;
    /// Name.
    pub const NAME: Range<usize> = 0..30;
    /// Sex code.
    pub const SEX: Range<usize> = 30..32;
    /// Nation code.
    pub const NATION: Range<usize> = 32..36;
    /// Birth date YYYYMMDD.
    pub const BIRTH: Range<usize> = 36..52;
    /// Address.
    pub const ADDRESS: Range<usize> = 52..122;
    /// ID number.
    pub const ID_NUMBER: Range<usize> = 122..158;
    /// Issuing authority.
    pub const ISSUER: Range<usize> = 158..188;
    /// Valid from YYYYMMDD.
    pub const VALID_FROM: Range<usize> = 188..204;
    /// Valid to YYYYMMDD or 长期.
    pub const VALID_TO: Range<usize> = 204..220;
    /// Reserved (pass number etc. on other card types).
    pub const RESERVED: Range<usize> = 220..256;
    /// Card-type marker: one ASCII byte at this offset.
    pub const CARD_TYPE: usize = 248;
}

/// Encodes `card` into the text block. Fields are UCS-2LE padded with U+0020;
/// over-long values are cut at the field end (the card has no more room).
pub fn encode_text(card: &SimCard) -> [u8; TEXT_LEN] {
    let mut out = [0u8; TEXT_LEN];
    // Everything starts as UCS-2 spaces so the reserved area is padded too.
    for pair in out.chunks_exact_mut(2) {
        pair.copy_from_slice(&[0x20, 0x00]);
    }
    let sex = card.sex_code.to_string();
    let fields: [(&str, std::ops::Range<usize>); 9] = [
        (&card.name, field::NAME),
        (&sex, field::SEX),
        (&card.nation_code, field::NATION),
        (&card.birth_date, field::BIRTH),
        (&card.address, field::ADDRESS),
        (&card.id_number, field::ID_NUMBER),
        (&card.issuer, field::ISSUER),
        (&card.valid_from, field::VALID_FROM),
        (&card.valid_to, field::VALID_TO),
    ];
    for (text, range) in fields {
        put_field(&mut out[range], text);
    }
    if let Some(t) = card.card_type {
        // A single ASCII byte: the low byte of the UCS-2 unit, high byte zero.
        out[field::CARD_TYPE] = u8::try_from(u32::from(t)).unwrap_or(b'?');
        out[field::CARD_TYPE + 1] = 0;
    }
    out
}

fn put_field(dst: &mut [u8], text: &str) {
    for (slot, unit) in dst.chunks_exact_mut(2).zip(text.encode_utf16()) {
        slot.copy_from_slice(&unit.to_le_bytes());
    }
}

/// Decodes one UCS-2LE field and trims the space padding (for tests and tools).
pub fn decode_field(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes.chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect();
    String::from_utf16_lossy(&units).trim_end_matches([' ', '\0']).to_string()
}

/// Stand-in for the WLT photo: opaque bytes, deterministic so replies are
/// reproducible, and never three 0xAA in a row so it cannot fake a preamble.
pub fn photo_filler() -> Vec<u8> {
    (0..PHOTO_LEN).map(|i| (i % 0xA0) as u8).collect()
}

/// Stand-in for the fingerprint templates, same rules as the photo.
pub fn fingerprint_filler() -> Vec<u8> {
    (0..FINGERPRINT_LEN).map(|i| 0x43 ^ (i % 0x40) as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_land_at_table_offsets() {
        let mut card = SimCard::resident("35020319900101123X", "张三");
        card.valid_to = "长期".into();
        let t = encode_text(&card);
        assert_eq!(decode_field(&t[field::NAME]), "张三");
        assert_eq!(&t[4..6], &[0x20, 0x00], "name padded with UCS-2 spaces");
        assert_eq!(decode_field(&t[field::SEX]), "1");
        assert_eq!(decode_field(&t[field::NATION]), "01");
        assert_eq!(decode_field(&t[field::BIRTH]), "19900101");
        assert_eq!(decode_field(&t[field::ID_NUMBER]), "35020319900101123X");
        assert_eq!(&t[122..124], &[b'3', 0x00]);
        assert_eq!(decode_field(&t[field::VALID_TO]), "长期");
        assert_eq!(decode_field(&t[field::VALID_FROM]), card.valid_from);
        assert!(t[field::RESERVED].chunks(2).all(|p| p == [0x20, 0x00]));
    }

    #[test]
    fn card_type_byte_at_248() {
        let mut card = SimCard::resident("810000199001011234", "陈大文");
        card.card_type = Some('J');
        let t = encode_text(&card);
        assert_eq!(t[248], b'J');
        assert_eq!(t[249], 0);
        assert_eq!(&t[246..248], &[0x20, 0x00]);
        assert_eq!(&t[250..252], &[0x20, 0x00]);
    }

    #[test]
    fn overlong_field_is_cut_not_spilled() {
        let card = SimCard::resident("35020319900101123X", "一二三四五六七八九十一二三四五六七");
        let t = encode_text(&card);
        assert_eq!(decode_field(&t[field::NAME]).chars().count(), 15);
        assert_eq!(decode_field(&t[field::SEX]), "1");
    }

    #[test]
    fn fillers_cannot_fake_a_preamble() {
        for block in [photo_filler(), fingerprint_filler()] {
            assert!(!block.windows(3).any(|w| w == [0xAA; 3]));
        }
    }
}
