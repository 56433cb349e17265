//! `gatectl identity import`: the identity CSV, parsed and checked by
//! `gate_config::people_csv` (the one parser, shared with the platform's
//! import), turned into the store's people.

use gate_config::people_csv::{self, PersonRow};
use gate_core::{CredentialKind, PersonRecord, PersonStatus};
use gate_store::NewPerson;

/// The text encodings an identity file may come in (`--encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoding {
    /// UTF-8, with or without a byte-order mark.
    #[value(name = "utf-8", alias = "utf8")]
    Utf8,
    /// GBK, read as GB 18030 (its superset): what Excel saves on a Chinese
    /// Windows machine.
    #[value(name = "gbk", alias = "gb18030")]
    Gbk,
}

impl From<Encoding> for people_csv::Encoding {
    fn from(e: Encoding) -> Self {
        match e {
            Encoding::Utf8 => people_csv::Encoding::Utf8,
            Encoding::Gbk => people_csv::Encoding::Gbk,
        }
    }
}

/// A checked row as the store's new person, its one credential the ID
/// number's keyed hash.
pub fn new_person(row: &PersonRow) -> NewPerson {
    let mut person =
        PersonRecord::new(&row.person_id, row.category, PersonStatus::Active, row.valid_from_ms, row.valid_to_ms);
    person.display_name = row.display_name.clone();
    NewPerson { person, credentials: vec![(CredentialKind::IdNumber, row.id_number_key)] }
}
