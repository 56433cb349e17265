//! Vehicle plates: the one normal form under which plates are read,
//! stored (keyed by HMAC) and looked up.

/// Province abbreviations that open a civil plate.
const PROVINCES: &str = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼";

/// Characters allowed as the last one of a plate: trailer, learner, police,
/// Hong Kong and Macau crossing plates.
const SUFFIXES: [char; 5] = ['挂', '学', '警', '港', '澳'];

fn is_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '.' | '·' | '•' | '・' | '･' | '‧' | '．' | '-' | '‐' | '‑' | '–' | '—' | '－')
}

/// Full-width Latin letters and digits (some OCR engines emit them) to ASCII.
fn fold_fullwidth(c: char) -> char {
    match c {
        'Ａ'..='Ｚ' | 'ａ'..='ｚ' | '０'..='９' => char::from_u32(u32::from(c) - 0xFEE0).unwrap_or(c),
        _ => c,
    }
}

/// Upper-cases and removes spaces, dots and dashes (`"粤B·D12345"` →
/// `"粤BD12345"`), then checks the shape: 6 to 8 characters, the first a
/// province character or a letter, the rest letters and digits, the last
/// possibly one of 挂 学 警 港 澳. `None` when the shape does not fit.
pub fn normalise_plate(raw: &str) -> Option<String> {
    let chars: Vec<char> =
        raw.chars().filter(|&c| !is_separator(c)).map(|c| fold_fullwidth(c).to_ascii_uppercase()).collect();
    if !(6..=8).contains(&chars.len()) {
        return None;
    }
    let (&first, rest) = chars.split_first()?;
    if !(PROVINCES.contains(first) || first.is_ascii_uppercase()) {
        return None;
    }
    let body = match rest.split_last() {
        Some((last, body)) if SUFFIXES.contains(last) => body,
        _ => rest,
    };
    body.iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()).then(|| chars.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plates_normalise() {
        let cases = [
            ("闽d 12345", Some("闽D12345")),
            ("粤B·D12345", Some("粤BD12345")),
            ("京A-F0236", Some("京AF0236")),
            ("闽D1234学", Some("闽D1234学")),
            ("12", None),
            ("闽D12#45", None),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise_plate(raw).as_deref(), want, "{raw}");
        }
    }
}
