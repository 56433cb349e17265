//! Every message `deploy/TECHNICIAN.md` quotes is the program's real text.
//!
//! The guide quotes log lines as `LEVEL message field=value …` (each with
//! its level) and `gatectl` output. For a log line, the message must be a
//! string literal of the code logged at that level (a fault the guide calls
//! a WARN is a `warn!` in the code, so `journalctl -p warning` shows it), and
//! every field name must be one the code logs. For other quoted output, each
//! piece between the guide's `…` elisions must appear in the code's string
//! literals. Values (ports, counts, addresses) are the guide's examples and
//! are not compared.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file of the daemon and its tools (not the tests: a string a
/// test expects is not proof the program prints it).
fn program_sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | "tests" | "benches" | ".git") {
                    walk(&path, out);
                }
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("crates"), &mut out);
    out
}

/// The string literals of a source text, with `{…}` placeholders kept,
/// line continuations joined, and each paired with the logging macro
/// (`info`, `warn`, `error`, `debug`) of the statement it is in, if any.
fn literals(source: &str) -> Vec<(String, Option<&'static str>)> {
    let bytes: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut last_macro: Option<(&'static str, usize)> = None;
    let mut depth_at_macro = 0usize;
    let mut depth = 0usize;
    while i < bytes.len() {
        let c = bytes[i];
        // Line comments hold prose, not output.
        if c == '/' && bytes.get(i + 1) == Some(&'/') {
            while i < bytes.len() && bytes[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '(' {
            depth += 1;
        } else if c == ')' {
            depth = depth.saturating_sub(1);
            if last_macro.is_some() && depth < depth_at_macro {
                last_macro = None;
            }
        }
        for level in ["info", "warn", "error", "debug", "trace"] {
            let word: Vec<char> = format!("{level}!(").chars().collect();
            if bytes[i..].starts_with(&word) && (i == 0 || !bytes[i - 1].is_alphanumeric()) {
                last_macro = Some((level, i));
                depth_at_macro = depth + 1;
            }
        }
        if c == '\'' && bytes.get(i + 2) == Some(&'\'') {
            // A char literal such as '"'.
            i += 3;
            continue;
        }
        if c == '"' {
            let mut text = String::new();
            i += 1;
            while i < bytes.len() && bytes[i] != '"' {
                if bytes[i] == '\\' && i + 1 < bytes.len() {
                    match bytes[i + 1] {
                        '\n' => {
                            // A continuation: skip the newline and the indent.
                            i += 2;
                            while i < bytes.len() && bytes[i].is_whitespace() {
                                i += 1;
                            }
                            continue;
                        }
                        'n' => text.push('\n'),
                        other => text.push(other),
                    }
                    i += 2;
                    continue;
                }
                text.push(bytes[i]);
                i += 1;
            }
            out.push((text, last_macro.map(|(level, _)| level)));
        }
        i += 1;
    }
    out
}

/// Backticked spans of the guide, each with the line it starts on. Outside
/// code blocks a span may run over a line break (a paragraph is joined
/// first); inside them, each log line is a quote.
fn quotes(guide: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut paragraph: Vec<(usize, &str)> = Vec::new();
    let flush = |paragraph: &mut Vec<(usize, &str)>, out: &mut Vec<(usize, String)>| {
        let mut open: Option<(usize, String)> = None;
        for (n, line) in paragraph.drain(..) {
            let parts: Vec<&str> = line.split('`').collect();
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    // A backtick: a span opens or closes here.
                    match open.take() {
                        Some(span) => out.push(span),
                        None => open = Some((n, String::new())),
                    }
                }
                if let Some((_, text)) = open.as_mut() {
                    text.push_str(part);
                }
            }
            if let Some((_, text)) = open.as_mut() {
                text.push(' ');
            }
        }
    };
    for (n, line) in guide.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            flush(&mut paragraph, &mut out);
            in_block = !in_block;
            continue;
        }
        if in_block {
            let t = line.trim();
            if ["INFO ", "WARN ", "ERROR ", "DEBUG "].iter().any(|l| t.starts_with(l)) {
                out.push((n + 1, t.to_owned()));
            }
        } else if line.trim().is_empty() {
            flush(&mut paragraph, &mut out);
        } else {
            paragraph.push((n + 1, line));
        }
    }
    flush(&mut paragraph, &mut out);
    out
}

/// A quoted log line split into (level, message, field names).
fn parse_log_line(quote: &str) -> Option<(&'static str, String, Vec<String>)> {
    let (level, rest) = [("INFO ", "info"), ("WARN ", "warn"), ("ERROR ", "error"), ("DEBUG ", "debug")]
        .iter()
        .find_map(|(prefix, level)| quote.strip_prefix(prefix).map(|rest| (*level, rest)))?;
    // Drop the span prefix and the target (`…: gate_devices::idcard: `).
    let mut body = rest;
    while let Some(i) = body.find(": ") {
        let head = &body[..i];
        let is_prefix = head.contains("::")
            || head.contains('{')
            || head.starts_with("...")
            || head.starts_with('…')
            || head.ends_with("...")
            || head.ends_with('…')
            || head == "gated"
            || head.starts_with("gate_");
        if !is_prefix {
            break;
        }
        body = &body[i + 2..];
    }
    // The message runs up to the first ` name=` field.
    let mut message = body.to_owned();
    let mut fields = Vec::new();
    let words: Vec<&str> = body.split(' ').collect();
    let mut cut = None;
    for (k, word) in words.iter().enumerate() {
        if let Some((name, _)) = word.split_once('=')
            && !name.is_empty()
            && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            cut.get_or_insert(k);
            fields.push(name.to_owned());
        }
    }
    if let Some(k) = cut {
        message = words[..k].join(" ");
    }
    let message = message.trim_end_matches(['…', '.', ' ']).trim_end_matches("...").trim().to_owned();
    Some((level, message, fields))
}

#[test]
fn every_quoted_message_is_the_programs_text() {
    let guide = std::fs::read_to_string(root().join("deploy/TECHNICIAN.md")).expect("TECHNICIAN.md");
    let sources = program_sources();
    assert!(sources.len() > 20, "found only {} source files", sources.len());
    let literals: Vec<(String, Option<&'static str>)> = sources.iter().flat_map(|(_, s)| literals(s)).collect();
    let code: String = sources.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>().join("\n");
    let mut wrong = Vec::new();
    let mut log_lines = 0;
    for (line, quote) in quotes(&guide) {
        if let Some((level, message, fields)) = parse_log_line(&quote) {
            log_lines += 1;
            // The message may itself hold placeholders in the code.
            let found: Vec<&Option<&str>> = literals
                .iter()
                .filter(|(lit, _)| template_matches(lit, &message))
                .map(|(_, macro_level)| macro_level)
                .collect();
            if found.is_empty() {
                wrong.push(format!("line {line}: no log message {message:?} in the code"));
            } else if !found.iter().any(|l| **l == Some(level)) {
                wrong.push(format!(
                    "line {line}: {message:?} is logged at {:?}, the guide says {}",
                    found.iter().flat_map(|l| **l).collect::<Vec<_>>(),
                    level.to_uppercase()
                ));
            }
            for field in fields {
                if !code.contains(&format!("{field} =")) && !code.contains(&format!("{field},")) {
                    wrong.push(format!("line {line}: the code logs no field {field:?}"));
                }
            }
        } else if let Some(output) = program_output(&quote) {
            for piece in output.split(['…']).flat_map(|p| p.split("...")).map(str::trim) {
                if piece.len() >= 4 && !literals.iter().any(|(lit, _)| within_output_of(lit, piece)) {
                    wrong.push(format!("line {line}: {piece:?} is not in the code's text"));
                }
            }
        }
    }
    assert!(log_lines >= 15, "only {log_lines} log lines quoted: is the guide parsed right?");
    assert!(wrong.is_empty(), "TECHNICIAN.md quotes text the program does not print:\n{}", wrong.join("\n"));
}

/// The program output (not log lines) the guide quotes: `gatectl` and
/// `gated` messages, marked in the guide by starting with one of these.
fn program_output(quote: &str) -> Option<&str> {
    const OUTPUT: [&str; 10] = [
        "gated is not running",
        "identity: ",
        "broker: ",
        "outbox: ",
        "decisions: ",
        "id_card ",
        "gate ",
        "cannot start: ",
        "permission denied",
        "PASS ",
    ];
    OUTPUT.iter().any(|p| quote.starts_with(p)).then_some(quote)
}

/// Whether `text` is what the code literal `template` prints, its `{…}`
/// placeholders standing for any text (and a text that is a whole literal
/// without placeholders matches it too).
fn template_matches(template: &str, text: &str) -> bool {
    if template == text {
        return true;
    }
    let parts: Vec<&str> = template.split('{').map(|p| p.split_once('}').map_or(p, |(_, after)| after)).collect();
    // A template that is mostly placeholders (`{}: {}`) matches anything
    // and proves nothing.
    let fixed: usize = parts.iter().map(|p| p.trim().chars().count()).sum();
    if parts.len() == 1 || fixed < 8 {
        return false;
    }
    // Anchored at both ends: each literal part in order.
    let mut rest = text;
    for (k, part) in parts.iter().enumerate() {
        if k == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if k == parts.len() - 1 {
            return part.is_empty() || rest.ends_with(part);
        } else if !part.is_empty() {
            match rest.find(part) {
                Some(i) => rest = &rest[i + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Whether `piece` (with its runs of spaces collapsed, as the guide writes
/// aligned output) can be part of what the template `template` prints: some
/// stretch of the template, its `{…}` placeholders standing for any text,
/// matches the whole piece. A piece of fewer than three letters proves
/// nothing.
fn within_output_of(template: &str, piece: &str) -> bool {
    fn collapse(s: &str) -> Vec<char> {
        let mut out: Vec<char> = Vec::new();
        for c in s.chars() {
            if !(c == ' ' && out.last() == Some(&' ')) {
                out.push(c);
            }
        }
        out
    }
    // Template tokens: Some(char) for fixed text, None for a placeholder.
    let mut tokens: Vec<Option<char>> = Vec::new();
    let mut in_placeholder = false;
    for c in collapse(template) {
        match c {
            '{' => {
                in_placeholder = true;
                tokens.push(None);
            }
            '}' if in_placeholder => in_placeholder = false,
            _ if in_placeholder => {}
            c => tokens.push(Some(c)),
        }
    }
    let piece = collapse(piece);
    let letters = piece.iter().filter(|c| c.is_alphabetic()).count();
    if letters < 3 {
        return false;
    }
    // reach[j]: the most letters of the piece read so far that fixed
    // template text matched, ending just before token j (or inside the
    // placeholder j - 1); any start is allowed. Letters a placeholder
    // swallows are values, not proof, so most letters must be fixed text.
    let m = tokens.len();
    let mut reach: Vec<Option<usize>> = vec![Some(0); m + 1];
    for &c in &piece {
        let mut next: Vec<Option<usize>> = vec![None; m + 1];
        let mut offer = |k: usize, n: usize| next[k] = Some(next[k].map_or(n, |old: usize| old.max(n)));
        for j in 0..=m {
            let Some(n) = reach[j] else { continue };
            if j > 0 && tokens[j - 1].is_none() {
                offer(j, n);
            }
            if j < m {
                match tokens[j] {
                    Some(t) if t == c => offer(j + 1, n + usize::from(c.is_alphabetic())),
                    None => offer(j + 1, n),
                    Some(_) => {}
                }
            }
        }
        reach = next;
        if reach.iter().all(Option::is_none) {
            return false;
        }
    }
    reach.iter().flatten().any(|&fixed| fixed >= 3 && fixed * 2 >= letters)
}

#[test]
fn the_helpers_parse_what_the_guide_writes() {
    assert!(within_output_of("identity:      {} people ({} residents", "identity: 0 people"));
    assert!(within_output_of("decisions:     {} passed, {} blocked, {} failed", "decisions: 0 passed,"));
    assert!(within_output_of("gated is not running (no socket at {})", "gated is not running"));
    assert!(!within_output_of("identity:      {} people ({} residents", "identity: version 0, never synced"));
    assert!(!within_output_of("{}: {}", "anything at all"));
    let (level, message, fields) = parse_log_line(
        "WARN ...:gate_io{port=/dev/gate-io}:...: gate_devices::gate_io: gate IO board lost; gate stays locked error=writing coil 0 = false",
    )
    .expect("a log line");
    assert_eq!(
        (level, message.as_str(), fields),
        ("warn", "gate IO board lost; gate stays locked", vec!["error".to_owned()])
    );
    assert!(parse_log_line("gatectl status").is_none());
    assert_eq!(
        quotes("a `WARN x\ny=1` b `c`\n\n```\nINFO z\n`no`\n```\n"),
        [(1, "WARN x y=1".to_owned()), (2, "c".to_owned()), (5, "INFO z".to_owned())]
    );
    assert!(template_matches("gated {} at {}/{}, up {}", "gated 0.1.0 at a/b, up 3 s"));
    assert!(!template_matches("gated {} at {}/{}, up {}", "gated 0.1.0 at a"));
    let lits = literals(
        "fn f() { warn!(error = %e, \"gate IO board lost; gate stays locked\"); info!(\"x {y}\"); let s = \"plain\"; }",
    );
    assert_eq!(
        lits,
        [
            ("gate IO board lost; gate stays locked".to_owned(), Some("warn")),
            ("x {y}".to_owned(), Some("info")),
            ("plain".to_owned(), None)
        ]
    );
}
