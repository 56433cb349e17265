//! Domain types of the gate daemon: identifiers, categories, credentials,
//! decisions and their reasons, the resident ID number and its masking,
//! the masked form of a name.
//!
//! Nothing here does I/O or reads a clock; every other crate builds on these
//! types, and converts them at its own boundary (SQL rows, protobuf, TOML).

mod date;
mod health;
pub mod id_number;
mod identity;
mod ids;
mod key;
mod mode;
mod name;
mod plate;
mod verdict;

pub use date::{CivilDate, DateError, UtcOffset};
pub use health::{HealthColour, HealthRecord, NatResult};
pub use id_number::{IdNumber, IdNumberError, check_character};
pub use identity::{
    AllowedGates, CardKind, CardRecord, CardValidTo, Category, Mode, PersonRecord, PersonStatus, Sex, TimeWindow,
};
pub use ids::{GateId, IdError, SiteId};
pub use key::{CredentialKind, KeyError, SiteKey};
pub use mode::{ModeOrigin, ModeSchedule};
pub use name::mask_name;
pub use plate::normalise_plate;
pub use verdict::{BlockReason, Decision, Direction, Lane, Verdict};

/// Milliseconds since the Unix epoch, UTC. Decision logic takes it as an
/// argument so tests control time.
pub type UnixMillis = i64;
