//! Scenario scripts for the simulators: parsing the one-step-per-line format
//! into steps, with line-numbered errors found before anything starts
//! (including steps the chosen device does not understand).

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
    /// QR scanner: scan this payload (the rest of the line, verbatim).
    Scan(String),
    /// Plate camera: one read; all three fields are sent as written.
    Plate {
        plate: String,
        colour: String,
        /// Checked to be a number; kept as text so odd forms reach the wire.
        confidence: String,
    },
    /// QR scanner / plate camera: these bytes, as they are.
    Raw(Vec<u8>),
    /// Cut the next n replies (or sent frames) short.
    Truncate(u32),
    /// Delay every reply (or sent frame) by this much; zero ends it.
    Slow(Duration),
    /// The next reply carries this status (SAM SW3, or a Modbus exception
    /// code), optionally only for one kind of command, optionally until
    /// `status off`.
    Status(StatusFault),
    /// Cancel a pending or sticky `status`.
    StatusOff,
    /// Close the port and reopen it at the same link path after this long.
    Unplug(Duration),
    /// Gate: someone walks through this way (the passage input pulses).
    Passage(PassageDir),
    /// Gate: the tailgating beam is broken (on) or clear (off).
    Beam(bool),
    /// Gate: the fire alarm is raised (on) or cleared (off).
    Fire(bool),
    /// Gate: the door-forced / intrusion input.
    Intrusion(bool),
    /// Gate: any discrete input by address.
    Input { input: u16, on: bool },
}

/// Which way someone walks through the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassageDir {
    Entry,
    Exit,
}

/// Which replies a `status` step applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusTarget {
    /// SAM: reset (10 FF).
    Reset,
    /// SAM: SAM status (11 FF).
    SamStatus,
    /// SAM: read SAM ID (12 FF).
    SamId,
    /// SAM: find card (20 01).
    Find,
    /// SAM: select card (20 02).
    Select,
    /// SAM: read base info (30 01, 30 10, 30 03); gate: FC01 / FC02.
    Read,
    /// Gate: FC05 / FC0F.
    Write,
}

impl StatusTarget {
    const WORDS: [(&'static str, StatusTarget); 7] = [
        ("reset", StatusTarget::Reset),
        ("samstatus", StatusTarget::SamStatus),
        ("samid", StatusTarget::SamId),
        ("find", StatusTarget::Find),
        ("select", StatusTarget::Select),
        ("read", StatusTarget::Read),
        ("write", StatusTarget::Write),
    ];

    fn parse(word: &str) -> Option<StatusTarget> {
        Self::WORDS.iter().find(|(w, _)| *w == word).map(|&(_, t)| t)
    }

    /// Whether the SAM simulator answers `(CMD, PARA)` under this target.
    pub fn matches_sam(self, cmd: u8, para: u8) -> bool {
        match self {
            StatusTarget::Reset => cmd == 0x10,
            StatusTarget::SamStatus => cmd == 0x11,
            StatusTarget::SamId => cmd == 0x12,
            StatusTarget::Find => (cmd, para) == (0x20, 0x01),
            StatusTarget::Select => (cmd, para) == (0x20, 0x02),
            StatusTarget::Read => cmd == 0x30,
            StatusTarget::Write => false,
        }
    }

    /// Whether the IO board answers function code `fc` under this target.
    pub fn matches_modbus(self, fc: u8) -> bool {
        match self {
            StatusTarget::Read => matches!(fc, 0x01 | 0x02),
            StatusTarget::Write => matches!(fc, 0x05 | 0x0F),
            _ => false,
        }
    }
}

/// A status to put in replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusFault {
    /// SW3 for the SAM module, the exception code for the IO board.
    pub code: u8,
    /// Only replies to these commands; `None` for the very next reply.
    pub target: Option<StatusTarget>,
    /// Every matching reply until `status off`, not just the next one.
    pub sticky: bool,
}

impl Step {
    /// The word that starts the step in a script.
    pub fn keyword(&self) -> &'static str {
        match self {
            Step::Place { .. } => "place",
            Step::Wait(_) => "wait",
            Step::Remove => "remove",
            Step::Garbage(_) => "garbage",
            Step::Corrupt(_) => "corrupt",
            Step::Silent(_) => "silent",
            Step::Loop => "loop",
            Step::Scan(_) => "scan",
            Step::Plate { .. } => "plate",
            Step::Raw(_) => "raw",
            Step::Truncate(_) => "truncate",
            Step::Slow(_) => "slow",
            Step::Status(_) | Step::StatusOff => "status",
            Step::Unplug(_) => "unplug",
            Step::Passage(_) => "passage",
            Step::Beam(_) => "beam",
            Step::Fire(_) => "fire",
            Step::Intrusion(_) => "intrusion",
            Step::Input { .. } => "input",
        }
    }
}

/// Which simulator a script drives; each understands its own steps plus
/// `wait` and `loop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// place / remove / garbage / corrupt / silent.
    IdCard,
    /// scan / raw.
    Qr,
    /// plate / raw.
    Plate,
    /// passage / beam / fire / intrusion / input / status read|write.
    Gate,
}

impl Device {
    /// As on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Device::IdCard => "idcard",
            Device::Qr => "qr",
            Device::Plate => "plate",
            Device::Gate => "gate",
        }
    }

    /// Whether this simulator can play `step`.
    pub fn understands(self, step: &Step) -> bool {
        match step {
            // Timing and every misbehaviour of the line or of its frames.
            Step::Wait(_)
            | Step::Loop
            | Step::Garbage(_)
            | Step::Corrupt(_)
            | Step::Truncate(_)
            | Step::Slow(_)
            | Step::Silent(_)
            | Step::Unplug(_) => true,
            Step::Place { .. } | Step::Remove => self == Device::IdCard,
            Step::Status(StatusFault { target: None, .. }) | Step::StatusOff => {
                matches!(self, Device::IdCard | Device::Gate)
            }
            Step::Status(StatusFault { target: Some(t), .. }) => match self {
                Device::IdCard => *t != StatusTarget::Write,
                Device::Gate => matches!(t, StatusTarget::Read | StatusTarget::Write),
                Device::Qr | Device::Plate => false,
            },
            Step::Scan(_) => self == Device::Qr,
            Step::Plate { .. } => self == Device::Plate,
            Step::Raw(_) => matches!(self, Device::Qr | Device::Plate),
            Step::Passage(_) | Step::Beam(_) | Step::Fire(_) | Step::Intrusion(_) | Step::Input { .. } => {
                self == Device::Gate
            }
        }
    }
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
            Step::Scan(payload) => f
                .debug_struct("Scan")
                .field("len", &payload.chars().count())
                .field("masked", &crate::qr::mask_payload(payload))
                .finish(),
            Step::Plate { plate, colour, confidence } => f
                .debug_struct("Plate")
                .field("plate", &crate::qr::mask_payload(plate))
                .field("colour", colour)
                .field("confidence", confidence)
                .finish(),
            Step::Raw(bytes) => f.debug_tuple("Raw").field(&bytes.len()).finish(),
            Step::Truncate(n) => f.debug_tuple("Truncate").field(n).finish(),
            Step::Slow(d) => f.debug_tuple("Slow").field(d).finish(),
            Step::Status(fault) => f.debug_tuple("Status").field(fault).finish(),
            Step::StatusOff => f.write_str("StatusOff"),
            Step::Unplug(d) => f.debug_tuple("Unplug").field(d).finish(),
            Step::Passage(dir) => f.debug_tuple("Passage").field(dir).finish(),
            Step::Beam(on) => f.debug_tuple("Beam").field(on).finish(),
            Step::Fire(on) => f.debug_tuple("Fire").field(on).finish(),
            Step::Intrusion(on) => f.debug_tuple("Intrusion").field(on).finish(),
            Step::Input { input, on } => f.debug_struct("Input").field("input", input).field("on", on).finish(),
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

/// Parses a whole script, steps of every device. `#` starts a comment
/// anywhere on a line, except in `scan`, whose payload is the rest of the
/// line verbatim (after one space or tab).
pub fn parse_script(text: &str) -> Result<Vec<Step>, ScriptError> {
    Ok(parse_numbered(text)?.into_iter().map(|(_, step)| step).collect())
}

/// Parses a script for one simulator: a step it does not understand is an
/// error naming its line.
pub fn parse_script_for(text: &str, device: Device) -> Result<Vec<Step>, ScriptError> {
    let steps = parse_numbered(text)?;
    if let Some((line, step)) = steps.iter().find(|(_, step)| !device.understands(step)) {
        return Err(ScriptError {
            line: *line,
            message: format!("`{}` is not a step of the {} simulator", step.keyword(), device.name()),
        });
    }
    Ok(steps.into_iter().map(|(_, step)| step).collect())
}

/// A `plate` step from its three fields (script or command line).
pub fn plate_step(plate: &str, colour: &str, confidence: &str) -> Result<Step, String> {
    if plate.is_empty() || colour.is_empty() {
        return Err("`plate` needs PLATE COLOUR CONFIDENCE".into());
    }
    // A comma would split the line into other fields than the ones meant.
    if plate.contains(',') || colour.contains(',') {
        return Err("plate and colour cannot contain `,`".into());
    }
    // Any finite number, out-of-range ones included, so scripts can test
    // the daemon's refusal; a typo like `high` is caught here.
    if !confidence.parse::<f32>().is_ok_and(f32::is_finite) {
        return Err(format!("`plate` needs a numeric confidence, got `{confidence}`"));
    }
    Ok(Step::Plate { plate: plate.to_string(), colour: colour.to_string(), confidence: confidence.to_string() })
}

/// Hex digits, pairs possibly separated by spaces: `0d0a`, `FF FE 0D`.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("`raw` needs pairs of hex digits, got `{text}`");
    let digits: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = digits
        .chunks(2)
        .map(|pair| match *pair {
            [hi, lo] => Some(hi.to_digit(16)? << 4 | lo.to_digit(16)?),
            _ => None,
        })
        .map(|byte| byte.and_then(|b| u8::try_from(b).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    if bytes.is_empty() {
        return Err(bad());
    }
    if bytes.len() > MAX_GARBAGE {
        return Err(format!("`raw` takes at most {MAX_GARBAGE} bytes"));
    }
    Ok(bytes)
}

/// The payload of a `scan` line, verbatim after one separating space or
/// tab; `Some("")` for a bare `scan`, `None` for any other line.
fn scan_payload(raw: &str) -> Option<&str> {
    let rest = raw.trim_start().strip_prefix("scan")?;
    let mut chars = rest.chars();
    match chars.next() {
        None => Some(""),
        Some(' ' | '\t') => Some(chars.as_str()),
        Some(_) => None,
    }
}

fn parse_numbered(text: &str) -> Result<Vec<(usize, Step)>, ScriptError> {
    let mut steps = Vec::new();
    let mut loop_line = None;
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let scan = scan_payload(raw);
        let content = raw.split('#').next().unwrap_or("").trim();
        if scan.is_none() && content.is_empty() {
            continue;
        }
        let err = |message: String| ScriptError { line, message };
        if let Some(at) = loop_line {
            return Err(err(format!("unreachable: `loop` on line {at} restarts the script")));
        }
        if let Some(payload) = scan {
            if payload.is_empty() {
                return Err(err("`scan` needs the payload text".into()));
            }
            steps.push((line, Step::Scan(payload.to_string())));
            continue;
        }
        let mut words = content.split_whitespace();
        let keyword = words.next().unwrap_or("");
        let args: Vec<&str> = words.collect();
        let step = match (keyword, args.as_slice()) {
            ("place", [id, name @ ..]) => {
                Step::Place { id_number: (*id).to_string(), name: (!name.is_empty()).then(|| name.join(" ")) }
            }
            ("place", []) => return Err(err("`place` needs an ID number".into())),
            ("wait", [ms]) => Step::Wait(Duration::from_millis(
                ms.parse().map_err(|_| err(format!("`wait` needs milliseconds, got `{ms}`")))?,
            )),
            ("remove", []) => Step::Remove,
            ("garbage", [n]) => match n.parse::<usize>() {
                Ok(n) if (1..=MAX_GARBAGE).contains(&n) => Step::Garbage(n),
                _ => {
                    return Err(err(format!("`garbage` needs a count 1..={MAX_GARBAGE}, got `{n}`")));
                }
            },
            ("corrupt", [n]) => {
                Step::Corrupt(n.parse().map_err(|_| err(format!("`corrupt` needs a count, got `{n}`")))?)
            }
            ("silent", ["on"]) => Step::Silent(true),
            ("silent", ["off"]) => Step::Silent(false),
            ("silent", _) => return Err(err("`silent` takes `on` or `off`".into())),
            ("loop", []) => {
                loop_line = Some(line);
                Step::Loop
            }
            ("plate", [plate, colour, confidence]) => plate_step(plate, colour, confidence).map_err(err)?,
            ("plate", _) => return Err(err("`plate` needs PLATE COLOUR CONFIDENCE".into())),
            ("raw", []) => return Err(err("`raw` needs hex bytes".into())),
            ("raw", hex) => Step::Raw(parse_hex(&hex.join(" ")).map_err(err)?),
            ("truncate", [n]) => {
                Step::Truncate(n.parse().map_err(|_| err(format!("`truncate` needs a count, got `{n}`")))?)
            }
            ("slow", [ms]) => Step::Slow(Duration::from_millis(
                ms.parse().map_err(|_| err(format!("`slow` needs milliseconds, got `{ms}`")))?,
            )),
            ("unplug", [ms]) => match ms.parse::<u64>() {
                Ok(ms) if ms <= MAX_UNPLUG_MS => Step::Unplug(Duration::from_millis(ms)),
                _ => return Err(err(format!("`unplug` needs milliseconds 0..={MAX_UNPLUG_MS}, got `{ms}`"))),
            },
            ("status", ["off"]) => Step::StatusOff,
            ("status", [code, rest @ ..]) if rest.len() <= 2 => Step::Status(status_step(code, rest).map_err(err)?),
            ("status", _) => return Err(err("`status` needs HEX [COMMAND] [always], or `off`".into())),
            ("passage", ["entry"]) => Step::Passage(PassageDir::Entry),
            ("passage", ["exit"]) => Step::Passage(PassageDir::Exit),
            ("passage", _) => return Err(err("`passage` takes `entry` or `exit`".into())),
            ("beam" | "fire" | "intrusion", [word]) => {
                let on = on_off(word).ok_or_else(|| err(format!("`{keyword}` takes `on` or `off`")))?;
                match keyword {
                    "beam" => Step::Beam(on),
                    "fire" => Step::Fire(on),
                    _ => Step::Intrusion(on),
                }
            }
            ("input", [n, word]) => {
                let input = n.parse().map_err(|_| err(format!("`input` needs an address 0..=65535, got `{n}`")))?;
                let on = on_off(word).ok_or_else(|| err("`input` needs N `on` or `off`".into()))?;
                Step::Input { input, on }
            }
            ("wait" | "remove" | "garbage" | "corrupt" | "loop" | "truncate" | "slow" | "unplug", _)
            | ("beam" | "fire" | "intrusion" | "input", _) => {
                return Err(err(format!("wrong number of arguments for `{keyword}`")));
            }
            _ => return Err(err(format!("unknown step `{keyword}`"))),
        };
        steps.push((line, step));
    }
    if let Some(line) = loop_line {
        let plain: Vec<Step> = steps.iter().map(|(_, step)| step.clone()).collect();
        check_loop_waits(&plain).map_err(|message| ScriptError { line, message })?;
    }
    Ok(steps)
}

/// Longest unplug accepted: a scenario is a test, not an outage.
const MAX_UNPLUG_MS: u64 = 600_000;

fn on_off(word: &str) -> Option<bool> {
    match word {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

/// `status HEX [COMMAND] [always]`: the code in hex (`31`, `0x31`).
fn status_step(code: &str, rest: &[&str]) -> Result<StatusFault, String> {
    let hex = code.strip_prefix("0x").unwrap_or(code);
    let code = match u8::from_str_radix(hex, 16) {
        Ok(code) if !hex.is_empty() && hex.len() <= 2 => code,
        _ => return Err(format!("`status` needs a hex byte, got `{code}`")),
    };
    let mut fault = StatusFault { code, target: None, sticky: false };
    for word in rest {
        match (*word, StatusTarget::parse(word)) {
            ("always", _) if !fault.sticky => fault.sticky = true,
            (_, Some(target)) if fault.target.is_none() && !fault.sticky => fault.target = Some(target),
            _ => {
                return Err(format!(
                    "`status` takes a command (reset, samstatus, samid, find, select, read, write) then `always`, \
                     got `{word}`"
                ));
            }
        }
    }
    Ok(fault)
}

/// A looping scenario with no pause would spin a CPU core placing cards.
pub fn check_loop_waits(steps: &[Step]) -> Result<(), String> {
    let loops = steps.contains(&Step::Loop);
    let waits = steps.iter().any(|s| matches!(s, Step::Wait(d) if !d.is_zero()));
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
                Step::Place { id_number: "35020319900101123X".into(), name: Some("张三".into()) },
                Step::Wait(Duration::from_millis(1500)),
                Step::Remove,
                Step::Garbage(5),
                Step::Corrupt(2),
                Step::Silent(true),
                Step::Silent(false),
                Step::Place { id_number: "35020319900101123X".into(), name: None },
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
        assert!(!shown.contains("35020319900101123X") && !shown.contains("张三"), "{shown}");
        assert!(shown.contains("350203********123X"));
    }

    #[test]
    fn scan_plate_and_raw_steps() {
        let text = "\
scan HC1:6BF OXN%TS3 # not a comment
  scan\t ]Q1 spaced  
plate 闽D12345 blue 0.93   # a comment
plate 粤B·D12345 GREEN 1.5
raw 0d 0A
raw FFfe00
wait 100
loop
";
        let steps = parse_script(text).expect("valid script");
        assert_eq!(
            steps,
            vec![
                Step::Scan("HC1:6BF OXN%TS3 # not a comment".into()),
                Step::Scan(" ]Q1 spaced  ".into()),
                Step::Plate { plate: "闽D12345".into(), colour: "blue".into(), confidence: "0.93".into() },
                Step::Plate { plate: "粤B·D12345".into(), colour: "GREEN".into(), confidence: "1.5".into() },
                Step::Raw(vec![0x0D, 0x0A]),
                Step::Raw(vec![0xFF, 0xFE, 0x00]),
                Step::Wait(Duration::from_millis(100)),
                Step::Loop,
            ]
        );
        // `scanner` is not `scan`.
        assert_eq!(error_line("wait 1\nscanner x\n"), 2);
    }

    #[test]
    fn new_step_errors_carry_line_numbers() {
        assert_eq!(error_line("wait 1\nscan\n"), 2);
        assert_eq!(error_line("scan x\nscan \n"), 2);
        assert_eq!(error_line("plate 闽D12345 blue\n"), 1);
        assert_eq!(error_line("plate 闽D12345 blue high\n"), 1);
        assert_eq!(error_line("plate 闽D12345 blue NaN\n"), 1);
        assert_eq!(error_line("plate 闽D,12345 blue 0.9\n"), 1);
        assert_eq!(error_line("wait 1\n\nraw\n"), 3);
        assert_eq!(error_line("raw 0\n"), 1);
        assert_eq!(error_line("raw zz\n"), 1);
        assert_eq!(error_line("raw é1\n"), 1);
        assert_eq!(error_line("wait 1\nloop\nscan x\n"), 3);
        assert!(parse_script("scan x\nloop\n").is_err(), "loop needs a wait");
    }

    #[test]
    fn a_device_refuses_steps_it_does_not_understand() {
        let text = "wait 10\nscan ABC\nplate 闽D12345 blue 0.9\nraw 0d\nplace 1\n";
        let cases = [(Device::IdCard, 2), (Device::Qr, 3), (Device::Plate, 2)];
        for (device, line) in cases {
            let e = parse_script_for(text, device).expect_err("mixed script");
            assert_eq!(e.line, line, "{device:?}: {e}");
            assert!(e.to_string().contains(device.name()), "{e}");
        }
        assert!(parse_script_for("scan A\nraw 0d\nwait 5\nloop\n", Device::Qr).is_ok());
        assert!(parse_script_for("plate 闽D12345 blue 0.9\nraw 0d\n", Device::Plate).is_ok());
        let e = parse_script_for("place 1\nremove\nraw 00\n", Device::IdCard).expect_err("raw is not an idcard step");
        assert_eq!(e.to_string(), "script line 3: `raw` is not a step of the idcard simulator");
    }

    #[test]
    fn gate_steps_and_misbehaviour() {
        let text = "\
passage entry
passage exit   # the other way
beam on
fire on
intrusion off
input 7 on
truncate 2
slow 150
status 31
status 0x02 write always
status 41 read
status off
unplug 500
wait 10
";
        let steps = parse_script(text).expect("valid script");
        let status = |code, target, sticky| Step::Status(StatusFault { code, target, sticky });
        assert_eq!(
            steps,
            vec![
                Step::Passage(PassageDir::Entry),
                Step::Passage(PassageDir::Exit),
                Step::Beam(true),
                Step::Fire(true),
                Step::Intrusion(false),
                Step::Input { input: 7, on: true },
                Step::Truncate(2),
                Step::Slow(Duration::from_millis(150)),
                status(0x31, None, false),
                status(0x02, Some(StatusTarget::Write), true),
                status(0x41, Some(StatusTarget::Read), false),
                Step::StatusOff,
                Step::Unplug(Duration::from_millis(500)),
                Step::Wait(Duration::from_millis(10)),
            ]
        );
        for bad in [
            "passage left\n",
            "beam maybe\n",
            "fire\n",
            "input x on\n",
            "input 1\n",
            "truncate -1\n",
            "slow soon\n",
            "status\n",
            "status zz\n",
            "status 123\n",
            "status 31 sideways\n",
            "status 31 always read\n",
            "status 31 read read\n",
            "unplug\n",
            "unplug 9999999\n",
        ] {
            assert_eq!(error_line(bad), 1, "{bad:?}");
        }
    }

    #[test]
    fn each_device_takes_its_own_steps_and_every_misbehaviour() {
        let common = "garbage 3\ncorrupt 1\ntruncate 1\nslow 20\nsilent on\nunplug 100\nwait 5\n";
        for device in [Device::IdCard, Device::Qr, Device::Plate, Device::Gate] {
            assert!(parse_script_for(common, device).is_ok(), "{device:?}");
        }
        assert!(parse_script_for("passage entry\nbeam on\nfire off\nstatus 4 write\n", Device::Gate).is_ok());
        assert!(parse_script_for("status 31 read always\nstatus off\nplace 1\n", Device::IdCard).is_ok());
        let refused = [
            (Device::IdCard, "status 31 write\n"),
            (Device::Gate, "status 31 find\n"),
            (Device::Gate, "place 1\n"),
            (Device::Qr, "status 31\n"),
            (Device::Plate, "fire on\n"),
            (Device::IdCard, "passage exit\n"),
        ];
        for (device, text) in refused {
            let e = parse_script_for(text, device).expect_err(text);
            assert!(e.to_string().contains(device.name()), "{e}");
        }
    }

    #[test]
    fn debug_masks_payloads_and_plates() {
        let steps = parse_script("scan HC1:SECRETPAYLOAD\nplate 闽D12345 blue 0.9\n").expect("valid");
        let shown = format!("{steps:?}");
        assert!(!shown.contains("SECRET") && !shown.contains("D12345"), "{shown}");
        assert!(shown.contains("HC…AD") && shown.contains("闽D…45"), "{shown}");
    }
}
