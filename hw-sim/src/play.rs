//! Plays scenario steps on running simulators: `wait` and `loop` here, every
//! other step on the device it belongs to. Used by the `hw-sim` command line
//! and by tests that drive a device from a scenario file. Each step returns
//! one line of narration (payloads, plates and ID numbers masked).

use std::time::Duration;

use crate::faults::noise;
use crate::gate::GateHandle;
use crate::idcard::{IdCardHandle, SimCard};
use crate::mask_id;
use crate::plate::PlateHandle;
use crate::qr::{QrHandle, mask_payload};
use crate::script::{PassageDir, Step};

/// Name used when a step places a card without one.
pub const DEFAULT_NAME: &str = "测试";

/// A running simulator a scenario drives.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    IdCard(&'a IdCardHandle),
    Qr(&'a QrHandle),
    Plate(&'a PlateHandle),
    Gate(&'a GateHandle),
}

impl Target<'_> {
    /// The command-line name, used as the narration prefix.
    pub fn name(self) -> &'static str {
        match self {
            Target::IdCard(_) => "idcard",
            Target::Qr(_) => "qr",
            Target::Plate(_) => "plate",
            Target::Gate(_) => "gate",
        }
    }

    /// Applies one step that is not `wait` or `loop`; returns the narration.
    /// A step of another device (refused by `parse_script_for` before a
    /// scenario starts) is narrated as ignored.
    pub fn apply(self, step: &Step) -> String {
        let tag = self.name();
        let said = match self {
            Target::IdCard(h) => idcard(h, step),
            Target::Qr(h) => qr(h, step),
            Target::Plate(h) => plate(h, step),
            Target::Gate(h) => gate(h, step),
        };
        match said {
            Some(text) => format!("{tag}: {text}"),
            None => format!("{tag}: `{}` ignored (not a {tag} step)", step.keyword()),
        }
    }
}

/// Plays `steps` to the end (forever if they loop), narrating each through
/// `say`. `wait` sleeps, `loop` starts over.
pub async fn play(target: Target<'_>, steps: &[Step], mut say: impl FnMut(&str)) {
    let tag = target.name();
    let mut i = 0;
    while let Some(step) = steps.get(i) {
        i += 1;
        match step {
            Step::Wait(d) => {
                say(&format!("{tag}: wait {} ms", d.as_millis()));
                tokio::time::sleep(*d).await;
            }
            Step::Loop => {
                say(&format!("{tag}: loop"));
                i = 0;
            }
            other => say(&target.apply(other)),
        }
    }
}

fn ms(d: &Duration) -> u128 {
    d.as_millis()
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

fn idcard(h: &IdCardHandle, step: &Step) -> Option<String> {
    Some(match step {
        Step::Place { id_number, name } => {
            h.place(SimCard::resident(id_number, name.as_deref().unwrap_or(DEFAULT_NAME)));
            format!("placed card {}", mask_id(id_number))
        }
        Step::Remove => {
            h.remove();
            "removed card".to_owned()
        }
        Step::Garbage(n) => {
            h.inject_garbage(noise(*n));
            format!("{n} garbage bytes before the next reply")
        }
        Step::Corrupt(n) => {
            h.corrupt_next_replies(*n);
            format!("corrupting the next {n} replies")
        }
        Step::Truncate(n) => {
            h.truncate_next_replies(*n);
            format!("cutting the next {n} replies short")
        }
        Step::Slow(d) => {
            h.set_slow(*d);
            format!("replies delayed by {} ms", ms(d))
        }
        Step::Silent(on) => {
            h.set_silent(*on);
            format!("silent {}", on_off(*on))
        }
        Step::Status(fault) => {
            h.inject_status(*fault);
            status_text(fault.code, fault.target.map(|t| format!("{t:?}")), fault.sticky)
        }
        Step::StatusOff => {
            h.clear_status();
            "status injection off".to_owned()
        }
        Step::Unplug(d) => {
            h.unplug(*d);
            format!("unplugged for {} ms", ms(d))
        }
        _ => return None,
    })
}

fn status_text(code: u8, target: Option<String>, sticky: bool) -> String {
    let which = target.map_or("the next reply".to_owned(), |t| format!("replies to {t}"));
    let how = if sticky { " until `status off`" } else { " (once)" };
    format!("status {code:02X} on {which}{how}")
}

fn qr(h: &QrHandle, step: &Step) -> Option<String> {
    Some(match step {
        Step::Scan(text) => {
            h.scan(text);
            format!("scanned {} chars {}", text.chars().count(), mask_payload(text))
        }
        Step::Raw(bytes) => {
            h.send_raw(bytes.clone());
            format!("sent {} raw bytes", bytes.len())
        }
        Step::Garbage(n) => {
            h.inject_garbage(*n);
            format!("{n} garbage bytes")
        }
        Step::Corrupt(n) => {
            h.corrupt_next_scans(*n);
            format!("corrupting the next {n} scans")
        }
        Step::Truncate(n) => {
            h.truncate_next_scans(*n);
            format!("cutting the next {n} scans short")
        }
        Step::Slow(d) => {
            h.set_slow(*d);
            format!("scans delayed by {} ms", ms(d))
        }
        Step::Silent(on) => {
            h.set_silent(*on);
            format!("silent {}", on_off(*on))
        }
        Step::Unplug(d) => {
            h.unplug(*d);
            format!("unplugged for {} ms", ms(d))
        }
        _ => return None,
    })
}

fn plate(h: &PlateHandle, step: &Step) -> Option<String> {
    Some(match step {
        Step::Plate { plate, colour, confidence } => {
            h.read_text(plate, colour, confidence);
            format!("read {} {colour} {confidence}", mask_payload(plate))
        }
        Step::Raw(bytes) => {
            h.send_raw(bytes.clone());
            format!("sent {} raw bytes", bytes.len())
        }
        Step::Garbage(n) => {
            h.inject_garbage(*n);
            format!("{n} garbage bytes")
        }
        Step::Corrupt(n) => {
            h.corrupt_next_reads(*n);
            format!("corrupting the next {n} reads")
        }
        Step::Truncate(n) => {
            h.truncate_next_reads(*n);
            format!("cutting the next {n} reads short")
        }
        Step::Slow(d) => {
            h.set_slow(*d);
            format!("reads delayed by {} ms", ms(d))
        }
        Step::Silent(on) => {
            h.set_silent(*on);
            format!("silent {}", on_off(*on))
        }
        Step::Unplug(d) => {
            h.unplug(*d);
            format!("unplugged for {} ms", ms(d))
        }
        _ => return None,
    })
}

fn gate(h: &GateHandle, step: &Step) -> Option<String> {
    Some(match step {
        Step::Passage(dir) => {
            h.passage(*dir);
            let dir = match dir {
                PassageDir::Entry => "entry",
                PassageDir::Exit => "exit",
            };
            format!("passage {dir}")
        }
        Step::Beam(on) => {
            h.set_beam(*on);
            format!("beam {}", if *on { "broken" } else { "clear" })
        }
        Step::Fire(on) => {
            if h.set_fire_alarm(*on) {
                format!("fire alarm {}", on_off(*on))
            } else {
                "fire alarm ignored: no fire input configured (--fire-input)".to_owned()
            }
        }
        Step::Intrusion(on) => {
            h.set_intrusion(*on);
            format!("intrusion {}", on_off(*on))
        }
        Step::Input { input, on } => {
            h.set_input(*input, *on);
            format!("input {input} {}", on_off(*on))
        }
        Step::Garbage(n) => {
            h.inject_garbage(noise(*n));
            format!("{n} garbage bytes before the next reply")
        }
        Step::Corrupt(n) => {
            h.corrupt_next_replies(*n);
            format!("bad CRC on the next {n} replies")
        }
        Step::Truncate(n) => {
            h.truncate_next_replies(*n);
            format!("cutting the next {n} replies short")
        }
        Step::Slow(d) => {
            h.set_slow(*d);
            format!("replies delayed by {} ms", ms(d))
        }
        Step::Silent(on) => {
            h.set_silent(*on);
            format!("silent {}", on_off(*on))
        }
        Step::Status(fault) => {
            h.inject_status(*fault);
            status_text(fault.code, fault.target.map(|t| format!("{t:?}")), fault.sticky)
        }
        Step::StatusOff => {
            h.clear_status();
            "exception injection off".to_owned()
        }
        Step::Unplug(d) => {
            h.unplug(*d);
            format!("unplugged for {} ms", ms(d))
        }
        _ => return None,
    })
}
