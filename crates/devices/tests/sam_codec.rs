//! The SAM frame codec and card parser against the protocol text: command
//! frames byte for byte, the typical replies, every way a frame can be
//! damaged, and text blocks built from the layout table.

mod support;

use gate_core::{CardKind, CardValidTo, CivilDate, Sex};
use gate_devices::sam::{
    self, CardError, FrameDecoder, FrameError, Response, Status, cmd, encode_command, parse_base_info, parse_text_block,
};
use support::{PREAMBLE, RESIDENT_ID, base_info_payload, hex, layout, resident_text, sam_reply, text_block};

#[test]
fn command_frames_match_the_table() {
    let table = [
        (cmd::RESET, "AA AA AA 96 69 00 03 10 FF EC"),
        (cmd::SAM_STATUS, "AA AA AA 96 69 00 03 11 FF ED"),
        (cmd::READ_SAM_ID, "AA AA AA 96 69 00 03 12 FF EE"),
        (cmd::FIND_CARD, "AA AA AA 96 69 00 03 20 01 22"),
        (cmd::SELECT_CARD, "AA AA AA 96 69 00 03 20 02 21"),
        (cmd::READ_BASE, "AA AA AA 96 69 00 03 30 01 32"),
        ((0x30, 0x03), "AA AA AA 96 69 00 03 30 03 30"),
        (cmd::READ_BASE_FP, "AA AA AA 96 69 00 03 30 10 23"),
    ];
    for ((c, p), frame) in table {
        let expected = hex(frame);
        let encoded = encode_command(c, p, &[]);
        assert_eq!(encoded, expected, "command {c:02X} {p:02X}");
        // Round trip: the table's frame read back gives the same CMD PARA.
        assert_eq!(&encoded[..5], &sam::PREAMBLE);
        assert_eq!(usize::from(u16::from_be_bytes([encoded[5], encoded[6]])), encoded.len() - 7);
        assert_eq!((encoded[7], encoded[8]), (c, p));
    }
    // With data: LEN grows, the data is under the checksum.
    assert_eq!(encode_command(0x30, 0x01, &[0x05]), hex("AA AA AA 96 69 00 04 30 01 05 30"));
}

fn ok(sw3: u8, data: &[u8]) -> Result<Response, FrameError> {
    Ok(Response { sw1: 0, sw2: 0, sw3, data: data.to_vec() })
}

type Decoded = Vec<Result<Response, FrameError>>;

/// Pushes each chunk in turn and collects every result the decoder gives.
fn decode(chunks: &[&[u8]]) -> Decoded {
    let mut decoder = FrameDecoder::default();
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(item) = decoder.next_frame() {
            out.push(item);
        }
    }
    out
}

const FIND_OK: &str = "AA AA AA 96 69 00 08 00 00 9F 00 00 00 00 97";
const FIND_FAIL: &str = "AA AA AA 96 69 00 04 00 00 80 84";
const SELECT_OK: &str = "AA AA AA 96 69 00 0C 00 00 90 00 00 00 00 00 00 00 00 9C";

#[test]
fn decodes_typical_replies_and_damage() {
    let find_ok = hex(FIND_OK);
    let find_fail = hex(FIND_FAIL);
    let mut bad_chk = find_ok.clone();
    bad_chk[14] = 0x98;
    let mut two = find_ok.clone();
    two.extend_from_slice(&find_fail);
    let mut noisy = vec![0x00, 0xAA, 0x55, 0xAA, 0xAA];
    noisy.extend_from_slice(&find_fail);
    let mut resync = bad_chk.clone();
    resync.extend_from_slice(&find_fail);
    let too_small = hex("AA AA AA 96 69 00 03 00 00 80 84");
    let zero = hex("AA AA AA 96 69 00 00 00");
    let too_large = hex("AA AA AA 96 69 10 01 00 00 90");
    let select_ok = hex(SELECT_OK);
    let largest = hex("AA AA AA 96 69 10 00 00 00 90");
    let mut after_length_error = too_small.clone();
    after_length_error.extend_from_slice(&find_fail);

    let cases: Vec<(&str, Vec<&[u8]>, Decoded)> = vec![
        ("find ok, 15 bytes", vec![&find_ok], vec![ok(0x9F, &[0, 0, 0, 0])]),
        ("find fail, 11 bytes", vec![&find_fail], vec![ok(0x80, &[])]),
        ("select ok, 19 bytes", vec![&select_ok], vec![ok(0x90, &[0; 8])]),
        ("checksum", vec![&bad_chk], vec![Err(FrameError::Checksum { expected: 0x97, found: 0x98 })]),
        ("declared too small", vec![&too_small], vec![Err(FrameError::Length { declared: 3 })]),
        ("declared zero", vec![&zero], vec![Err(FrameError::Length { declared: 0 })]),
        ("declared too large", vec![&too_large], vec![Err(FrameError::Length { declared: 4097 })]),
        ("garbage before a frame", vec![&noisy], vec![Err(FrameError::Garbage { skipped: 5 }), ok(0x80, &[])]),
        ("two frames in one push", vec![&two], vec![ok(0x9F, &[0, 0, 0, 0]), ok(0x80, &[])]),
        ("split in two", vec![&find_ok[..6], &find_ok[6..]], vec![ok(0x9F, &[0, 0, 0, 0])]),
        (
            "resync after a checksum error",
            vec![&resync],
            vec![
                Err(FrameError::Checksum { expected: 0x97, found: 0x98 }),
                // The rest of the damaged frame is noise before the next preamble.
                Err(FrameError::Garbage { skipped: 10 }),
                ok(0x80, &[]),
            ],
        ),
        (
            "resync after a length error",
            vec![&after_length_error],
            vec![Err(FrameError::Length { declared: 3 }), Err(FrameError::Garbage { skipped: 6 }), ok(0x80, &[])],
        ),
        ("incomplete", vec![&find_ok[..14]], vec![]),
        ("largest length accepted, waits for the rest", vec![&largest], vec![]),
    ];
    for (name, chunks, expected) in cases {
        assert_eq!(decode(&chunks), expected, "{name}");
    }
}

#[test]
fn every_damaged_byte_is_caught() {
    // Flip each bit of every checked byte (SW1..SW3, data, CHK): the decoder
    // must report a checksum error and never produce a frame. Damage to the
    // length bytes must never produce a frame either.
    let find_ok = hex(FIND_OK);
    for position in 5..find_ok.len() {
        for bit in 0..8 {
            let mut damaged = find_ok.clone();
            damaged[position] ^= 1 << bit;
            let results = decode(&[&damaged]);
            assert!(results.iter().all(Result::is_err), "byte {position} bit {bit}: {results:?}");
            if position >= 7 {
                assert!(
                    matches!(results.first(), Some(Err(FrameError::Checksum { expected, found }))
                        if expected != found),
                    "byte {position} bit {bit}: {results:?}"
                );
            }
        }
    }
}

#[test]
fn a_full_read_split_byte_by_byte_decodes() {
    let payload = base_info_payload(&resident_text(RESIDENT_ID, "长期"));
    let mut noisy = vec![0x13, 0x37];
    let frame = sam_reply(0x90, &payload);
    assert_eq!(frame.len(), 1295, "read base info is 1295 bytes");
    assert_eq!(&frame[5..7], &[0x05, 0x08]);
    noisy.extend_from_slice(&frame);
    let chunks: Vec<&[u8]> = noisy.chunks(1).collect();
    let results = decode(&chunks);
    assert_eq!(results, vec![Err(FrameError::Garbage { skipped: 2 }), ok(0x90, &payload)]);

    let Ok(response) = &results[1] else { unreachable!() };
    assert_eq!(response.status(), Status::Ok);
    let record = parse_base_info(&response.data, false).expect("card");
    assert_eq!(record.id_number.expose(), RESIDENT_ID);
}

#[test]
fn clear_forgets_partial_frames_and_noise() {
    let mut decoder = FrameDecoder::default();
    decoder.push(&[0x01, 0x02]);
    decoder.push(&hex(FIND_OK)[..9]);
    assert_eq!(decoder.next_frame(), Some(Err(FrameError::Garbage { skipped: 2 })));
    assert_eq!(decoder.next_frame(), None);
    decoder.clear();
    decoder.push(&hex(FIND_FAIL));
    assert_eq!(decoder.next_frame(), Some(ok(0x80, &[])));
    assert_eq!(decoder.next_frame(), None);
}

#[test]
fn status_words() {
    let table = [
        (0x90, Status::Ok),
        (0x91, Status::NoContent),
        (0x9F, Status::FindOk),
        (0x10, Status::ChecksumError),
        (0x11, Status::LengthError),
        (0x21, Status::CommandError),
        (0x23, Status::Unauthorised),
        (0x24, Status::Unrecognised),
        (0x31, Status::CardAuthSamFailed),
        (0x32, Status::SamAuthCardFailed),
        (0x33, Status::VerifyError),
        (0x40, Status::UnknownCardType),
        (0x41, Status::ReadFailed),
        (0x47, Status::RandomFailed),
        (0x60, Status::SamSelfTestFailed),
        (0x66, Status::SamNotAuthorised),
        (0x80, Status::NoCard),
        (0x81, Status::SelectFailed),
        (0x42, Status::Other(0x42)),
    ];
    for (code, status) in table {
        assert_eq!(Response { sw1: 0, sw2: 0, sw3: code, data: vec![] }.status(), status);
    }
}

// ---- text block ---------------------------------------------------------

fn date(y: i32, m: u8, d: u8) -> CivilDate {
    CivilDate::try_new(y, m, d).expect("date")
}

#[test]
fn resident_card() {
    let record = parse_text_block(&resident_text(RESIDENT_ID, "20350101")).expect("card");
    assert_eq!(record.kind, CardKind::ResidentId);
    assert_eq!(record.name, "张三");
    assert_eq!(record.sex, Sex::Male);
    assert_eq!(record.nation_code, "01");
    assert_eq!(record.birth_date, Some(date(1949, 12, 31)));
    assert_eq!(record.address, "北京市西城区某某胡同1号");
    assert_eq!(record.id_number.expose(), RESIDENT_ID);
    assert_eq!(record.issuer, "北京市公安局西城分局");
    assert_eq!(record.valid_from, Some(date(2015, 1, 1)));
    assert_eq!(record.valid_to, Some(CardValidTo::Date(date(2035, 1, 1))));
    // Debug output masks the personal fields.
    let debug = format!("{record:?}");
    assert!(!debug.contains("张三") && !debug.contains(RESIDENT_ID), "{debug}");
}

#[test]
fn long_term_validity() {
    let record = parse_text_block(&resident_text(RESIDENT_ID, "长期")).expect("card");
    assert_eq!(record.valid_to, Some(CardValidTo::LongTerm));
}

#[test]
fn a_validity_date_that_does_not_parse_is_unreadable_never_no_expiry() {
    // A reader answering a mutated date field: digits out of range, letters,
    // nothing at all.
    for mutated in ["20351341", "2035O101", "", "长", "99999999"] {
        let record = parse_text_block(&resident_text(RESIDENT_ID, mutated)).expect("card");
        assert_eq!(record.valid_to, Some(CardValidTo::Unreadable), "{mutated:?}");
    }
    // The "from" date unreadable makes the card's validity unreadable too.
    let mut text = resident_text(RESIDENT_ID, "20350101");
    text[188..192].copy_from_slice(&[b'X', 0, b'X', 0]);
    let record = parse_text_block(&text).expect("card");
    assert_eq!((record.valid_from, record.valid_to), (None, Some(CardValidTo::Unreadable)));
}

#[test]
fn nul_padding_is_trimmed_too() {
    let mut text = resident_text(RESIDENT_ID, "长期");
    // Pad the name with NULs instead of spaces.
    text[4..30].fill(0);
    assert_eq!(parse_text_block(&text).expect("card").name, "张三");
}

#[test]
fn hong_kong_macao_taiwan_permit() {
    use layout::*;
    let text = text_block(
        &[
            (NAME, "陈大文"),
            (SEX, "2"),
            (BIRTH, "19940823"),
            (ADDRESS, "广东省深圳市福田区"),
            (ID_NUMBER, "810000199408230021"),
            (ISSUER, "深圳市公安局"),
            (VALID_FROM, "20200101"),
            (VALID_TO, "20250101"),
            (PASS_NUMBER, "H12345678"),
            (ISSUE_COUNT, "01"),
        ],
        Some('J'),
    );
    let record = parse_text_block(&text).expect("permit");
    assert_eq!(record.kind, CardKind::HkMacaoTaiwanPermit);
    assert_eq!(record.id_number.expose(), "810000199408230021");
    assert_eq!(record.nation_code, "");
    assert_eq!(record.sex, Sex::Female);
    assert_eq!(record.valid_to, Some(CardValidTo::Date(date(2025, 1, 1))));
}

#[test]
fn foreigner_cards_are_refused_with_a_reason() {
    let mut text = resident_text(RESIDENT_ID, "长期");
    text[layout::TYPE_BYTE] = b'Y';
    let err = parse_text_block(&text).expect_err("2023 card");
    assert_eq!(err, CardError::UnsupportedCardType { type_byte: b'Y' });
    assert!(err.to_string().contains("not public"), "{err}");

    // 2017 card: 15-character number at 122-151, outside GB 11643.
    let text = text_block(
        &[((0, 119), "SMITH JOHN"), ((120, 121), "1"), ((122, 151), "USA110079060101"), ((152, 157), "USA")],
        Some('I'),
    );
    assert_eq!(parse_text_block(&text), Err(CardError::UnsupportedCardType { type_byte: b'I' }));
}

#[test]
fn bad_check_character_is_refused_masked() {
    let err = parse_text_block(&resident_text("110105194912310021", "长期")).expect_err("bad check");
    assert_eq!(err, CardError::InvalidIdNumber { masked: "110105********0021".into() });
    assert!(!err.to_string().contains("110105194912310021"));
    // An empty number field is refused too, not taken as a card.
    assert!(matches!(parse_text_block(&resident_text("", "长期")), Err(CardError::InvalidIdNumber { .. })));
}

#[test]
fn base_info_payloads() {
    let text = resident_text(RESIDENT_ID, "长期");
    let good = base_info_payload(&text);
    assert_eq!(parse_base_info(&good, false).map(|r| r.kind), Ok(CardKind::ResidentId));

    // With fingerprint: a third length field and 1024 more bytes.
    let mut with_fp = vec![0x01, 0x00, 0x04, 0x00, 0x04, 0x00];
    with_fp.extend_from_slice(&good[4..]);
    with_fp.extend_from_slice(&[0x5A; 1024]);
    assert_eq!(sam_reply(0x90, &with_fp).len(), 2321, "with fingerprint is 2321 bytes");
    assert_eq!(parse_base_info(&with_fp, true).map(|r| r.kind), Ok(CardKind::ResidentId));

    let mut bad_text_len = good.clone();
    bad_text_len[0..2].copy_from_slice(&[0x00, 0x80]);
    let cases: Vec<(&str, &[u8], bool)> = vec![
        ("empty", &[], false),
        ("one byte", &[0x01], false),
        ("header only", &good[..4], false),
        ("text cut short", &good[..100], false),
        ("photo cut short", &good[..good.len() - 1], false),
        ("fingerprint header missing", &good[..5], true),
        ("fingerprint declared but absent", &with_fp[..with_fp.len() - 10], true),
        ("bad text length", &bad_text_len, false),
    ];
    for (name, data, fp) in cases {
        assert!(matches!(parse_base_info(data, fp), Err(CardError::Malformed(_))), "{name}");
    }
}

#[test]
fn preamble_in_support_matches_the_crate() {
    assert_eq!(PREAMBLE, sam::PREAMBLE);
}
