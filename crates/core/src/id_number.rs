//! The resident ID number of GB 11643-1999: 18 characters, the last a check
//! character over the first 17 digits. Also used by residence permits
//! (region prefixes 810000 and 830000).
//!
//! An `IdNumber` is sensitive personal information: its `Debug` and
//! `Display` print only the masked form, so a stray log line cannot leak it.

use std::fmt;

const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHECK_CHARS: [char; 11] = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'];

/// Why a string is not a valid ID number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdNumberError {
    #[error("an ID number has 18 characters, this one has {0}")]
    Length(usize),
    #[error("character {position} must be a digit")]
    NotADigit { position: usize },
    #[error("the check character does not match the first 17 digits")]
    CheckCharacter,
}

/// The check character for the first 17 digits, or `None` if any of them is
/// not an ASCII digit.
pub fn check_character(first17: &str) -> Option<char> {
    if first17.len() != 17 {
        return None;
    }
    let mut sum = 0u32;
    for (c, w) in first17.chars().zip(WEIGHTS) {
        sum += c.to_digit(10)? * w;
    }
    Some(CHECK_CHARS[(sum % 11) as usize])
}

/// A validated 18-character ID number (check character verified, `x`
/// normalised to `X`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdNumber(String);

impl IdNumber {
    pub fn parse(raw: &str) -> Result<Self, IdNumberError> {
        let raw = raw.trim();
        let count = raw.chars().count();
        if count != 18 {
            return Err(IdNumberError::Length(count));
        }
        // Work on chars, not bytes: an 18-character string may hold
        // multi-byte characters, and slicing it by bytes would panic.
        let upper: Vec<char> = raw.chars().map(|c| c.to_ascii_uppercase()).collect();
        if let Some(position) = upper[..17].iter().position(|c| !c.is_ascii_digit()) {
            return Err(IdNumberError::NotADigit { position: position + 1 });
        }
        let last = upper[17];
        if !(last.is_ascii_digit() || last == 'X') {
            return Err(IdNumberError::NotADigit { position: 18 });
        }
        let upper: String = upper.into_iter().collect();
        if check_character(&upper[..17]) != Some(last) {
            return Err(IdNumberError::CheckCharacter);
        }
        Ok(Self(upper))
    }

    /// The number in clear. Only for hashing under the site key; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The masked form the platform and the logs see: region code and last
    /// four kept, the rest starred, as in `350203********1234`.
    pub fn masked(&self) -> String {
        mask_id_like(&self.0)
    }
}

/// Masks any ID-like string: the first six and last four characters are
/// kept, everything between becomes `*`. Short strings are starred entirely.
pub fn mask_id_like(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    if chars.len() < 12 {
        return "*".repeat(chars.len());
    }
    let n = chars.len();
    chars.iter().enumerate().map(|(i, c)| if i < 6 || i >= n - 4 { *c } else { '*' }).collect()
}

impl fmt::Debug for IdNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdNumber({})", self.masked())
    }
}

impl fmt::Display for IdNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_character_table() {
        // (number, valid?) — valid ones computed by hand from the GB 11643 weights.
        let cases = [
            ("11010519491231002X", true),
            ("11010519491231002x", true),
            ("110105194912310021", false),
            ("440524188001010014", true),
            ("440524188001010015", false),
            ("35020319900101123X", true),
            ("350203199001011237", false),
            ("350203199001011230", false),
            ("810000199408230021", true),
            ("830000199201300022", true),
            ("830000199201300023", false),
        ];
        for (raw, valid) in cases {
            assert_eq!(IdNumber::parse(raw).is_ok(), valid, "{raw}");
        }
    }

    #[test]
    fn shape_errors_are_specific() {
        assert_eq!(IdNumber::parse("1234"), Err(IdNumberError::Length(4)));
        assert_eq!(IdNumber::parse("11010519491231A02X"), Err(IdNumberError::NotADigit { position: 15 }));
        assert_eq!(IdNumber::parse("11010519491231002Y"), Err(IdNumberError::NotADigit { position: 18 }));
        assert_eq!(IdNumber::parse(&"x".repeat(18)).map(|_| ()), Err(IdNumberError::NotADigit { position: 1 }));
        // Multi-byte characters must be refused, not sliced through.
        assert_eq!(IdNumber::parse(&"长".repeat(18)).map(|_| ()), Err(IdNumberError::NotADigit { position: 1 }));
        assert_eq!(IdNumber::parse("11010519491231002长").map(|_| ()), Err(IdNumberError::NotADigit { position: 18 }));
    }

    #[test]
    fn masking_never_shows_the_middle() {
        let id = IdNumber::parse("35020319900101123x").expect("valid");
        assert_eq!(id.expose(), "35020319900101123X");
        assert_eq!(id.masked(), "350203********123X");
        assert_eq!(format!("{id}"), "350203********123X");
        assert_eq!(format!("{id:?}"), "IdNumber(350203********123X)");
        assert_eq!(mask_id_like("abc"), "***");
    }
}
