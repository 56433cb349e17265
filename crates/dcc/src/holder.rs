//! Matching a certificate's holder against an identity read elsewhere (an ID card).
//!
//! Certificates carry the ICAO 9303 transliterated name (`ZHANG<SAN`) and a
//! birth date that may be partial (`1990`, `1990-05`): both comparisons are
//! deliberately forgiving about form and strict about content.

/// Whether the certificate's birth date (`YYYY`, `YYYY-MM` or `YYYY-MM-DD`)
/// agrees with a full date. A partial date agrees on the parts it has; an
/// empty or malformed one agrees with nothing, so it cannot open a gate.
pub fn birth_date_matches(cert_birth: &str, y: i32, m: u8, d: u8) -> bool {
    // Some issuers wrote a date-time; its date part is the birth date.
    let date = cert_birth.split('T').next().unwrap_or("");
    let mut parts = date.split('-');
    let year = parts.next().and_then(|p| (p.len() == 4).then(|| p.parse::<i32>().ok()).flatten());
    let Some(year) = year else {
        return false;
    };
    let mut rest = Vec::new();
    for part in parts {
        if part.len() != 2 {
            return false;
        }
        match part.parse::<u8>() {
            Ok(n) => rest.push(n),
            Err(_) => return false,
        }
    }
    year == y
        && match rest.as_slice() {
            [] => true,
            [month] => *month == m,
            [month, day] => *month == m && *day == d,
            _ => false,
        }
}

/// Letters of a name with case, spaces, `<` and `-` removed, the form both
/// sides are compared in (`ZHANG<SAN`, `Zhang San` and `ZHANGSAN` agree).
fn letters(name: &str) -> String {
    name.chars().filter(|c| !(c.is_whitespace() || *c == '<' || *c == '-')).flat_map(char::to_uppercase).collect()
}

/// Whether a certificate's standardised name (`fnt` or `gnt`) is the same
/// name as `other`, ignoring case, spaces and `<` / `-` separators. Empty
/// names match nothing.
pub fn std_name_matches(cert_std_name: &str, other: &str) -> bool {
    let a = letters(cert_std_name);
    !a.is_empty() && a == letters(other)
}

/// Whether a certificate's holder is the person whose card shows `card_name`:
/// the names as written (`fn` + `gn`, e.g. Chinese characters, compared
/// without spaces) or the ICAO forms (`fnt` + `gnt`) against a Latin-script
/// card name. Chinese names are written family name first, so both orders
/// of the ICAO parts are tried.
pub fn holder_name_matches(cert: &crate::VerifiedCertificate, card_name: &str) -> bool {
    let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace() && *c != '·').collect::<String>();
    let card = squeeze(card_name);
    if card.is_empty() {
        return false;
    }
    let written = squeeze(&format!("{}{}", cert.family_name, cert.given_name));
    if !written.is_empty() && written == card {
        return true;
    }
    let family_first = format!("{}{}", cert.family_name_std, cert.given_name_std);
    let given_first = format!("{}{}", cert.given_name_std, cert.family_name_std);
    std_name_matches(&family_first, card_name) || std_name_matches(&given_first, card_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_birth_dates_agree_on_what_they_have() {
        assert!(birth_date_matches("1990-05-17", 1990, 5, 17));
        assert!(birth_date_matches("1990-05", 1990, 5, 17));
        assert!(birth_date_matches("1990", 1990, 12, 1));
        assert!(birth_date_matches("1990-05-17T00:00:00", 1990, 5, 17));
        assert!(!birth_date_matches("1990-05-17", 1990, 5, 18));
        assert!(!birth_date_matches("1990-06", 1990, 5, 17));
        assert!(!birth_date_matches("1991", 1990, 5, 17));
        for bad in ["", "90", "1990-5-17", "1990-XX-XX", "abcd", "1990-05-17-01"] {
            assert!(!birth_date_matches(bad, 1990, 5, 17), "{bad:?}");
        }
    }

    #[test]
    fn standardised_names_ignore_form() {
        assert!(std_name_matches("ZHANG<SAN", "Zhang San"));
        assert!(std_name_matches("ZHANG<SAN", "zhangsan"));
        assert!(std_name_matches("MUSTERFRAU<GOESSINGER", "Musterfrau-Goessinger"));
        assert!(std_name_matches("OUYANG", " ouyang "));
        assert!(!std_name_matches("ZHANG<SAN", "ZHANG SHAN"));
        assert!(!std_name_matches("", ""));
        assert!(!std_name_matches("<<", " "));
    }
}
