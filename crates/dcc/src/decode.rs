//! The transport layers of a QR payload: the `HC1:` prefix, base45, zlib.
//!
//! Everything here handles untrusted bytes before any signature is checked,
//! so every step is strict and bounded: a QR code cannot make us allocate
//! more than [`MAX_INFLATED_BYTES`].

use std::io::Read;

use crate::error::DccError;

/// The context identifier of version 1 health certificates.
pub const PREFIX: &str = "HC1:";

/// Longest base45 text we decode. A version 40 QR code holds 4,296
/// alphanumeric characters; twice that leaves room for any real scanner.
pub const MAX_BASE45_CHARS: usize = 8_192;

/// Largest inflated COSE message we accept. Real certificates are well under
/// 2 KiB; the bound stops a zip bomb (1 KiB of zlib can claim megabytes).
pub const MAX_INFLATED_BYTES: usize = 64 * 1024;

/// Strips the `HC1:` prefix. A trailing CR/LF that a scanner appended is
/// ignored (neither is a base45 character; a trailing space is, so spaces
/// are kept).
pub fn unprefix(qr: &str) -> Result<&str, DccError> {
    let qr = qr.trim_end_matches(['\r', '\n']);
    match qr.strip_prefix(PREFIX) {
        Some(rest) if !rest.is_empty() => Ok(rest),
        Some(_) => Err(DccError::Unprefix("nothing follows the HC1: prefix")),
        None if qr.len() >= 4 && qr.as_bytes()[3] == b':' => {
            Err(DccError::Unprefix("unsupported context identifier (want HC1:)"))
        }
        None => Err(DccError::Unprefix("no HC1: context identifier")),
    }
}

/// Value of one base45 character (RFC 9285 table 1), or `None`.
fn base45_value(c: u8) -> Option<u32> {
    let v = match c {
        b'0'..=b'9' => c - b'0',
        b'A'..=b'Z' => c - b'A' + 10,
        b' ' => 36,
        b'$' => 37,
        b'%' => 38,
        b'*' => 39,
        b'+' => 40,
        b'-' => 41,
        b'.' => 42,
        b'/' => 43,
        b':' => 44,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Decodes base45 text (RFC 9285).
///
/// Strict where the RFC is: only the 45 characters, groups of three worth at
/// most 65535, a final pair worth at most 255, no single trailing character.
/// (The `base45` crate accepts a final pair above 255 and truncates it, which
/// is why this is written here.)
pub fn base45_decode(text: &str) -> Result<Vec<u8>, DccError> {
    let b = text.as_bytes();
    if b.len() > MAX_BASE45_CHARS {
        return Err(DccError::Base45(format!(
            "{} characters, more than the {MAX_BASE45_CHARS} a QR code can hold",
            b.len()
        )));
    }
    let mut out = Vec::with_capacity(b.len() / 3 * 2 + 1);
    let value = |i: usize| {
        base45_value(b[i])
            .ok_or_else(|| DccError::Base45(format!("character at offset {i} is not in the base45 alphabet")))
    };
    let mut i = 0;
    while i + 3 <= b.len() {
        let n = value(i)? + value(i + 1)? * 45 + value(i + 2)? * 45 * 45;
        let pair =
            u16::try_from(n).map_err(|_| DccError::Base45(format!("group at offset {i} is worth more than 65535")))?;
        out.extend_from_slice(&pair.to_be_bytes());
        i += 3;
    }
    match b.len() - i {
        0 => {}
        2 => {
            let n = value(i)? + value(i + 1)? * 45;
            let byte =
                u8::try_from(n).map_err(|_| DccError::Base45("final pair is worth more than 255".to_string()))?;
            out.push(byte);
        }
        _ => {
            return Err(DccError::Base45("length leaves a single trailing character".to_string()));
        }
    }
    Ok(out)
}

/// Inflates a zlib stream (RFC 1950), refusing more than
/// [`MAX_INFLATED_BYTES`] of output, a broken or truncated stream, and
/// bytes after its end.
pub fn inflate(compressed: &[u8]) -> Result<Vec<u8>, DccError> {
    let mut decoder = flate2::read::ZlibDecoder::new(compressed);
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(2).min(MAX_INFLATED_BYTES));
    // Read one byte past the limit: reaching it proves the stream is too big
    // without inflating the rest of it.
    let limit = u64::try_from(MAX_INFLATED_BYTES + 1).unwrap_or(u64::MAX);
    (&mut decoder)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| DccError::Inflate(format!("not a valid zlib stream: {e}")))?;
    if out.len() > MAX_INFLATED_BYTES {
        return Err(DccError::Inflate(format!("inflates to more than {MAX_INFLATED_BYTES} bytes")));
    }
    if decoder.total_in() != compressed.len() as u64 {
        return Err(DccError::Inflate(format!(
            "{} bytes follow the end of the zlib stream",
            compressed.len() as u64 - decoder.total_in()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Step;

    #[test]
    fn prefix_must_be_hc1() {
        assert_eq!(unprefix("HC1:NCF").ok(), Some("NCF"));
        assert_eq!(unprefix("HC1:NCF \r\n").ok(), Some("NCF "));
        for bad in ["HC2:NCF", "HL0:NCF", "NCFOXN", "hc1:NCF", "HC1:", ""] {
            let err = unprefix(bad).err().map(|e| e.step());
            assert_eq!(err, Some(Step::Unprefix), "{bad:?}");
        }
    }

    #[test]
    fn base45_matches_rfc_9285_examples() {
        assert_eq!(base45_decode("BB8").ok().as_deref(), Some(&b"AB"[..]));
        assert_eq!(base45_decode("%69 VD92EX0").ok().as_deref(), Some(&b"Hello!!"[..]));
        assert_eq!(base45_decode("UJCLQE7W581").ok().as_deref(), Some(&b"base-45"[..]));
        assert_eq!(base45_decode("QED8WEX0").ok().as_deref(), Some(&b"ietf!"[..]));
        assert_eq!(base45_decode("").ok().as_deref(), Some(&b""[..]));
    }

    #[test]
    fn base45_refuses_what_the_rfc_refuses() {
        for bad in ["GGW", "ZZ", "A", "BB8A", "bb8", "BB8#", "BB8é"] {
            let err = base45_decode(bad).err().map(|e| e.step());
            assert_eq!(err, Some(Step::Base45), "{bad:?}");
        }
    }

    #[test]
    fn base45_agrees_with_the_base45_crate() {
        let data: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        for len in [0, 1, 2, 3, 100, 511, 512] {
            let encoded = base45::encode(&data[..len]);
            assert_eq!(base45_decode(&encoded).ok().as_deref(), Some(&data[..len]));
        }
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(data).expect("write to a Vec");
        enc.finish().expect("finish into a Vec")
    }

    #[test]
    fn inflate_round_trips_and_refuses_broken_streams() {
        let packed = zlib(b"hello hello hello");
        assert_eq!(inflate(&packed).ok().as_deref(), Some(&b"hello hello hello"[..]));
        let truncated = &packed[..packed.len() - 3];
        assert_eq!(inflate(truncated).err().map(|e| e.step()), Some(Step::Inflate));
        let mut trailing = packed.clone();
        trailing.push(0);
        assert_eq!(inflate(&trailing).err().map(|e| e.step()), Some(Step::Inflate));
        assert_eq!(inflate(b"\xd2\x84").err().map(|e| e.step()), Some(Step::Inflate));
    }

    #[test]
    fn inflate_stops_a_zip_bomb() {
        let at_limit = zlib(&vec![0u8; MAX_INFLATED_BYTES]);
        assert_eq!(inflate(&at_limit).map(|v| v.len()).ok(), Some(MAX_INFLATED_BYTES));
        let bomb = zlib(&vec![0u8; 16 * 1024 * 1024]);
        assert!(bomb.len() < 32 * 1024, "the bomb is small: {}", bomb.len());
        assert_eq!(inflate(&bomb).err().map(|e| e.step()), Some(Step::Inflate));
    }
}
