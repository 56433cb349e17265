//! Text a technician or another program writes: the configuration file
//! and the control socket's request lines.

use crate::rng::Rng;
use crate::{Target, class};
use std::path::{Path, PathBuf};

/// The repository's own configuration files, as seeds.
fn repo_configs() -> Vec<Vec<u8>> {
    let root = crate::fuzz_dir().join("../..");
    ["config/gated.example.toml", "config/demo.toml"].iter().filter_map(|p| std::fs::read(root.join(p)).ok()).collect()
}

/// `config`: a configuration file through the loader: parsed and validated
/// as text, and read from a file when it is not UTF-8 (the loader's own
/// check with line and column).
#[derive(Debug)]
pub struct ConfigTarget {
    dir: tempfile::TempDir,
    dictionary: Vec<Vec<u8>>,
}

impl Default for ConfigTarget {
    fn default() -> Self {
        let dir = crate::scratch_dir();
        // Every key and section name of the example, and TOML's punctuation.
        let mut dictionary: Vec<Vec<u8>> = Vec::new();
        for text in repo_configs() {
            for line in String::from_utf8_lossy(&text).lines() {
                let line = line.trim_start_matches(['#', ' ']);
                if line.starts_with('[') {
                    dictionary.push(format!("\n{}\n", line.split(']').next().unwrap_or("")).into_bytes());
                } else if let Some((key, _)) = line.split_once(" = ") {
                    dictionary.push(format!("\n{key} = ").into_bytes());
                }
            }
        }
        for token in [
            "\"",
            "'''",
            "[[",
            "]]",
            "{",
            "}",
            ",",
            "=",
            "true",
            "-1",
            "1e400",
            "0x10",
            "\"\\u0000\"",
            "\n[policy.wartime.health]\n",
        ] {
            dictionary.push(token.as_bytes().to_vec());
        }
        dictionary.sort();
        dictionary.dedup();
        ConfigTarget { dir, dictionary }
    }
}

impl Target for ConfigTarget {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        // The whole files, and each of their sections after the smallest
        // valid head: small inputs keep a run fast, and every section's
        // keys still get their turn.
        let head =
            "[site]\nid = \"sz-futian-01\"\n\n[gate]\nid = \"east-1\"\n\n[identity]\nhmac_key_file = \"site.key\"\n\n";
        let mut out = repo_configs();
        for text in repo_configs() {
            let text = String::from_utf8_lossy(&text).into_owned();
            let mut section = String::new();
            for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
                if line.starts_with('[') && !section.trim().is_empty() {
                    out.push(format!("{head}{section}").into_bytes());
                    section.clear();
                }
                section.push_str(line);
                section.push('\n');
            }
            out.push(format!("{head}{section}").into_bytes());
        }
        out.push(head.as_bytes().to_vec());
        out.push(Vec::new());
        out
    }

    fn dictionary(&self) -> Vec<Vec<u8>> {
        self.dictionary.clone()
    }

    fn run(&mut self, input: &[u8]) -> u64 {
        let source: PathBuf = self.dir.path().join("gated.toml");
        let result = match std::str::from_utf8(input) {
            Ok(text) => gate_config::parse(&source, text),
            Err(_) => {
                if std::fs::write(&source, input).is_err() {
                    return 0;
                }
                gate_config::load(&source)
            }
        };
        match result {
            Ok(_) => 1,
            Err(errors) => {
                // Every error must name the file; line and column when the
                // text has them is the loader's promise for syntax errors.
                let first = errors.0.first().map(|e| (e.key.clone(), e.line.is_some()));
                if errors.0.is_empty() {
                    panic!("the loader refused a file without saying why");
                }
                if errors.0.iter().any(|e| e.file.as_path() != Path::new(&source)) {
                    panic!("an error names another file than the one loaded");
                }
                class(&(errors.0.len().min(4), first))
            }
        }
    }
}

/// `control`: one request line as the daemon reads it from the control
/// socket, then the reply it would write, which must always be one line
/// of JSON that parses back.
#[derive(Debug, Default)]
pub struct Control;

impl Target for Control {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        [
            r#"{"v":1,"cmd":"status"}"#,
            r#"{"v":1,"cmd":"tail"}"#,
            r#"{"v":1,"cmd":"outbox"}"#,
            r#"{"v":1,"cmd":"lookup","credential":{"kind":"id_number","value":"11010519491231002X"},"side":"entry"}"#,
            r#"{"v":1,"cmd":"lookup","credential":{"kind":"plate","value":"闽D12345"},"side":null}"#,
            r#"{"v":1,"cmd":"open","reason":"delivery","side":"exit","sudo_user":"li"}"#,
            r#"{"v":1,"cmd":"selftest","pulse":true,"sudo_user":null}"#,
            r#"{"v":2,"cmd":"status"}"#,
            r#"{"cmd":"status"}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    fn generate(&mut self, rng: &mut Rng) -> Option<Vec<u8>> {
        let cmd = *rng.pick(&["status", "tail", "outbox", "lookup", "open", "selftest", "nope", ""]);
        let v = *rng.pick(&["1", "1", "0", "2", "-1", "4294967297", "1.0", "\"1\"", "null"]);
        let extra = match rng.below(4) {
            0 => format!(
                r#","credential":{{"kind":"{}","value":"{}"}}"#,
                rng.pick(&["id_number", "card", "plate", "x"]),
                rng.text()
            ),
            1 => format!(r#","reason":"{}","side":"{}""#, rng.text(), rng.pick(&["entry", "exit", "both", ""])),
            2 => format!(r#","pulse":{}"#, rng.pick(&["true", "false", "1", "null"])),
            _ => String::new(),
        };
        Some(format!(r#"{{"v":{v},"cmd":"{cmd}"{extra}}}"#).into_bytes())
    }

    fn dictionary(&self) -> Vec<Vec<u8>> {
        crate::tokens(&[
            b"{",
            b"}",
            b"\"",
            b":",
            b",",
            b"null",
            b"\\u0000",
            b"\"v\":1",
            b"\"cmd\":",
            b"[",
            b"]",
            b"1e999",
        ])
    }

    fn run(&mut self, input: &[u8]) -> u64 {
        let line = String::from_utf8_lossy(input);
        let reply = match gate_control_proto::protocol::parse_request(&line) {
            Ok(request) => {
                // What the client sent must survive the trip back to text.
                let again = serde_json::to_string(&request).unwrap_or_default();
                if gate_control_proto::protocol::parse_request(&again).as_ref() != Ok(&request) {
                    panic!("a parsed request does not survive serialising");
                }
                format!("{:?}", std::mem::discriminant(&request.command))
            }
            Err(message) => {
                // Only the two fixed refusals, never a piece of the line.
                let version_refusal = message
                    .strip_prefix("protocol version ")
                    .and_then(|rest| rest.split_once(' '))
                    .is_some_and(|(v, rest)| {
                        v.bytes().all(|b| b.is_ascii_digit()) && rest.ends_with("use the gatectl of the same release")
                    });
                if message != "malformed request" && !version_refusal {
                    panic!("an unexpected refusal: {message}");
                }
                let response =
                    gate_control_proto::protocol::Response::new(gate_control_proto::protocol::Reply::Error {
                        message: message.clone(),
                    });
                let text = serde_json::to_string(&response).unwrap_or_default();
                if text.contains('\n') || serde_json::from_str::<serde_json::Value>(&text).is_err() {
                    panic!("the error reply is not one line of JSON");
                }
                if version_refusal { "version".to_owned() } else { message }
            }
        };
        class(&reply)
    }
}
