//! Simulated checkpoint hardware on pseudo-terminals (SAM ID-card module,
//! Modbus RTU gate IO board, QR scanner, plate camera), written from the
//! protocol text in docs/PROTOCOLS.md and deliberately not from the daemon's
//! codecs, so the two cannot share a bug.

pub mod camera;
pub mod faults;
pub mod gate;
pub mod idcard;
pub mod plate;
pub mod platform;
pub mod play;
pub mod pty;
pub mod qr;
pub mod script;

pub use gate::{CoilWrite, GateEvent, GateHandle, GateSim, GateSimConfig};
pub use idcard::{IdCardEvent, IdCardHandle, IdCardSim, SimCard};
pub use plate::{PlateHandle, PlateSim};
pub use pty::{Line, SimPty};
pub use qr::{QrHandle, QrSim, SimTerminator};
pub use script::{PassageDir, StatusFault, StatusTarget};

/// Masks an ID number for display: first 6 and last 4 characters kept, the
/// rest starred. Anything of 10 characters or fewer is starred entirely, since
/// keeping 6 + 4 would show it in clear.
pub fn mask_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 10 {
        return "*".repeat(chars.len());
    }
    let (head, rest) = chars.split_at(6);
    let (middle, tail) = rest.split_at(rest.len() - 4);
    let mut out: String = head.iter().collect();
    out.extend(std::iter::repeat_n('*', middle.len()));
    out.extend(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::mask_id;

    #[test]
    fn mask_keeps_six_and_four() {
        assert_eq!(mask_id("35020319900101123X"), "350203********123X");
        assert_eq!(mask_id("12345678901"), "123456*8901");
        assert_eq!(mask_id("1234567890"), "**********");
        assert_eq!(mask_id(""), "");
    }
}
