//! Card-reader scenario scripts: parsing the one-step-per-line format into
//! steps, with line-numbered errors found before anything starts.

use std::fmt;
use std::time::Duration;

/// One scenario step.
#[derive(Clone, PartialEq, Eq)]
pub enum Step {
    /// Place a card (name optional).
    Place {
        /// ID number, as-is.
        id_number: String,
        /// Name; a default is used when absent.
        name: Option<String>,
    },
    /// Pause.
    Wait(Duration),
    /// Take the card away.
    Remove,
    /// Inject this many random bytes before the next reply.
    Garbage(usize),
    /// Corrupt the checksum of the next n replies.
    Corrupt(u32),
    /// Stop or resume answering.
    Silent(bool),
    /// Start again from the top.
    Loop,
}

impl fmt::Debug for Step {
    // Scripts hold personal data (test or not): never print it in clear.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Place { id_number, name } => f
                .debug_struct("Place")
                .field("id_number", &crate::mask_id(id_number))
                .field("name", &name.as_ref().map(|_| "<redacted>"))
                .finish(),
            Step::Wait(d) => f.debug_tuple("Wait").field(d).finish(),
            Step::Remove => f.write_str("Remove"),
            Step::Garbage(n) => f.debug_tuple("Garbage").field(n).finish(),
            Step::Corrupt(n) => f.debug_tuple("Corrupt").field(n).finish(),
            Step::Silent(on) => f.debug_tuple("Silent").field(on).finish(),
            Step::Loop => f.write_str("Loop"),
        }
    }
}

/// A script error, pointing at its line (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptError {
    /// 1-based line number; 0 for whole-script problems.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "script: {}", self.message)
        } else {
            write!(f, "script line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for ScriptError {}

/// Largest garbage burst accepted; more would only fill the pty buffer.
const MAX_GARBAGE: usize = 4096;

/// Parses a whole script. `#` starts a comment anywhere on a line.
pub fn parse_script(text: &str) -> Result<Vec<Step>, ScriptError> {
    let mut steps = Vec::new();
    let mut loop_line = None;
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let err = |message: String| ScriptError { line, message };
        if let Some(at) = loop_line {
            return Err(err(format!(
                "unreachable: `loop` on line {at} restarts the script"
            )));
        }
        let mut words = content.split_whitespace();
        let keyword = words.next().unwrap_or("");
        let args: Vec<&str> = words.collect();
        let step = match (keyword, args.as_slice()) {
            ("place", [id, name @ ..]) => Step::Place {
                id_number: (*id).to_string(),
                name: (!name.is_empty()).then(|| name.join(" ")),
            },
            ("place", []) => return Err(err("`place` needs an ID number".into())),
            ("wait", [ms]) => {
                Step::Wait(Duration::from_millis(ms.parse().map_err(|_| {
                    err(format!("`wait` needs milliseconds, got `{ms}`"))
                })?))
            }
            ("remove", []) => Step::Remove,
            ("garbage", [n]) => match n.parse::<usize>() {
                Ok(n) if (1..=MAX_GARBAGE).contains(&n) => Step::Garbage(n),
                _ => {
                    return Err(err(format!(
                        "`garbage` needs a count 1..={MAX_GARBAGE}, got `{n}`"
                    )));
                }
            },
            ("corrupt", [n]) => Step::Corrupt(
                n.parse()
                    .map_err(|_| err(format!("`corrupt` needs a count, got `{n}`")))?,
            ),
            ("silent", ["on"]) => Step::Silent(true),
            ("silent", ["off"]) => Step::Silent(false),
            ("silent", _) => return Err(err("`silent` takes `on` or `off`".into())),
            ("loop", []) => {
                loop_line = Some(line);
                Step::Loop
            }
            ("wait" | "remove" | "garbage" | "corrupt" | "loop", _) => {
                return Err(err(format!("wrong number of arguments for `{keyword}`")));
            }
            _ => return Err(err(format!("unknown step `{keyword}`"))),
        };
        steps.push(step);
    }
    if let Some(line) = loop_line {
        check_loop_waits(&steps).map_err(|message| ScriptError { line, message })?;
    }
    Ok(steps)
}

/// A looping scenario with no pause would spin a CPU core placing cards.
pub fn check_loop_waits(steps: &[Step]) -> Result<(), String> {
    let loops = steps.contains(&Step::Loop);
    let waits = steps
        .iter()
        .any(|s| matches!(s, Step::Wait(d) if !d.is_zero()));
    if loops && !waits {
        return Err("a looping script needs at least one non-zero `wait`".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let text = "\
# scenario
place 35020319900101123X 张三     # place a card (name optional)
wait 1500                        # milliseconds
remove

garbage 5
corrupt 2
silent on
silent off
place 35020319900101123X
loop                             # start again from the top
";
        let steps = parse_script(text).expect("valid script");
        assert_eq!(
            steps,
            vec![
                Step::Place {
                    id_number: "35020319900101123X".into(),
                    name: Some("张三".into())
                },
                Step::Wait(Duration::from_millis(1500)),
                Step::Remove,
                Step::Garbage(5),
                Step::Corrupt(2),
                Step::Silent(true),
                Step::Silent(false),
                Step::Place {
                    id_number: "35020319900101123X".into(),
                    name: None
                },
                Step::Loop,
            ]
        );
    }

    fn error_line(text: &str) -> usize {
        parse_script(text).expect_err("invalid script").line
    }

    #[test]
    fn errors_carry_line_numbers() {
        assert_eq!(error_line("remove\n\n# c\nfly away\n"), 4);
        assert_eq!(error_line("wait\n"), 1);
        assert_eq!(error_line("remove\nwait soon\n"), 2);
        assert_eq!(error_line("remove\nremove\ngarbage 0\n"), 3);
        assert_eq!(error_line("silent maybe\n"), 1);
        assert_eq!(error_line("place\n"), 1);
        assert_eq!(error_line("corrupt -1\n"), 1);
        assert_eq!(error_line("remove x\n"), 1);
        assert_eq!(error_line("wait 10\nloop\nremove\n"), 3);
    }

    #[test]
    fn loop_without_wait_is_rejected() {
        let e = parse_script("place 1\nremove\nloop\n").expect_err("would spin");
        assert_eq!(e.line, 3);
        assert!(e.to_string().starts_with("script line 3:"));
        assert!(parse_script("place 1\nwait 0\nloop\n").is_err());
        assert!(parse_script("place 1\nwait 5\nloop\n").is_ok());
    }

    #[test]
    fn debug_masks_personal_data() {
        let steps = parse_script("place 35020319900101123X 张三\n").expect("valid");
        let shown = format!("{steps:?}");
        assert!(
            !shown.contains("35020319900101123X") && !shown.contains("张三"),
            "{shown}"
        );
        assert!(shown.contains("350203********123X"));
    }
}
