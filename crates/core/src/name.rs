//! The masked form of a person's name: what the gate stores and shows
//! instead of the name itself (`陈*国`, `陈*`, `J*** S****`). Enough for a
//! technician to tell people apart on a screen, not enough to identify
//! anyone from a stolen disk.

/// Masks a name. A name written without spaces in Han (or other wide)
/// script keeps its first and last characters (`陈*国`, `欧**娜`; two
/// characters keep the first, `陈*`). Words of an alphabetic name each keep
/// their first letter (`J*** S****`). A single character is starred.
/// Separators (spaces, `·` between the parts of a transliterated name, `-`)
/// are kept. Already masked names come out unchanged, so masking twice is
/// harmless.
pub fn mask_name(name: &str) -> String {
    let name = name.trim();
    let mut out = String::with_capacity(name.len());
    let mut word = String::new();
    for c in name.chars() {
        if is_separator(c) {
            mask_word(&word, &mut out);
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    mask_word(&word, &mut out);
    out
}

fn is_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '·' | '•' | '-' | '.' | ',')
}

fn mask_word(word: &str, out: &mut String) {
    let chars: Vec<char> = word.chars().collect();
    let n = chars.len();
    match n {
        0 => {}
        1 => out.push('*'),
        _ if chars.iter().any(|c| is_wide(*c)) => {
            // 陈国 → 陈*; 陈建国 → 陈*国: the first and last characters of a
            // name of three or more, the surname alone of a name of two.
            out.push(chars[0]);
            let kept_last = n >= 3;
            let stars = if kept_last { n - 2 } else { n - 1 };
            out.extend(std::iter::repeat_n('*', stars));
            if kept_last {
                out.push(chars[n - 1]);
            }
        }
        _ => {
            out.push(chars[0]);
            out.extend(std::iter::repeat_n('*', n - 1));
        }
    }
}

/// Han, kana, hangul and the other scripts written without spaces between
/// words, where one character is a syllable rather than a letter.
fn is_wide(c: char) -> bool {
    matches!(c as u32,
        0x2E80..=0x9FFF      // CJK radicals, kana, CJK unified ideographs
        | 0xA960..=0xA97F    // hangul jamo extended
        | 0xAC00..=0xD7FF    // hangul syllables
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0x20000..=0x3FFFF) // CJK extensions B and beyond
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn han_names_keep_the_first_and_last_characters() {
        assert_eq!(mask_name("陈建国"), "陈*国");
        assert_eq!(mask_name("陈国"), "陈*");
        assert_eq!(mask_name("欧阳娜娜"), "欧**娜");
        assert_eq!(mask_name("陈"), "*");
        assert_eq!(mask_name(" 张三丰 "), "张*丰");
        assert_eq!(mask_name("𠀾建国"), "𠀾*国", "an extension B character counts as one");
    }

    #[test]
    fn alphabetic_and_transliterated_names_keep_each_words_initial() {
        assert_eq!(mask_name("John Smith"), "J*** S****");
        assert_eq!(mask_name("Anna-Lena  Ng"), "A***-L***  N*");
        assert_eq!(mask_name("J. R. Ewing"), "*. *. E****");
        assert_eq!(mask_name("阿卜杜拉·艾力"), "阿**拉·艾*");
        assert_eq!(mask_name("Müller"), "M*****");
    }

    #[test]
    fn masking_is_idempotent_and_never_keeps_the_middle() {
        for name in ["陈建国", "陈国", "欧阳娜娜", "John Smith", "阿卜杜拉·艾力", "x", "", "李 四"] {
            let once = mask_name(name);
            assert_eq!(mask_name(&once), once, "{name}");
            if name.chars().count() > 2 {
                assert_ne!(once, name, "{name}");
            }
        }
        assert_eq!(mask_name(""), "");
    }
}
