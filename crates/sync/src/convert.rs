//! Wire (protobuf) values to domain values, checking every field: an
//! unknown enum value or a malformed key refuses the whole message.

use gate_core::{AllowedGates, Category, CredentialKind, Mode, PersonRecord, PersonStatus, TimeWindow};
use gate_proto::v1 as pb;
use gate_store::NewPerson;

pub(crate) fn category_from_wire(raw: i32) -> Result<Category, String> {
    match pb::Category::try_from(raw) {
        Ok(pb::Category::Resident) => Ok(Category::Resident),
        Ok(pb::Category::Worker) => Ok(Category::Worker),
        Ok(pb::Category::Visitor) => Ok(Category::Visitor),
        _ => Err(format!("unknown category {raw}")),
    }
}

pub(crate) fn mode_from_wire(raw: i32) -> Result<Mode, String> {
    match pb::Mode::try_from(raw) {
        Ok(pb::Mode::Normal) => Ok(Mode::Normal),
        Ok(pb::Mode::Sporadic) => Ok(Mode::Sporadic),
        Ok(pb::Mode::Wartime) => Ok(Mode::Wartime),
        _ => Err(format!("unknown mode {raw}")),
    }
}

pub(crate) fn mode_to_wire(mode: Mode) -> pb::Mode {
    match mode {
        Mode::Normal => pb::Mode::Normal,
        Mode::Sporadic => pb::Mode::Sporadic,
        Mode::Wartime => pb::Mode::Wartime,
    }
}

fn status_from_wire(raw: i32) -> Result<PersonStatus, String> {
    match pb::PersonStatus::try_from(raw) {
        Ok(pb::PersonStatus::Active) => Ok(PersonStatus::Active),
        Ok(pb::PersonStatus::Suspended) => Ok(PersonStatus::Suspended),
        Ok(pb::PersonStatus::Blocked) => Ok(PersonStatus::Blocked),
        _ => Err(format!("unknown person status {raw}")),
    }
}

pub(crate) fn credential_from_wire(c: &pb::Credential) -> Result<(CredentialKind, [u8; 32]), String> {
    let kind = match pb::CredentialType::try_from(c.r#type) {
        Ok(pb::CredentialType::IdCard) => CredentialKind::IdNumber,
        Ok(pb::CredentialType::IcCard) => CredentialKind::IcCard,
        Ok(pb::CredentialType::QrCode) => CredentialKind::QrPass,
        Ok(pb::CredentialType::Plate) => CredentialKind::Plate,
        _ => return Err(format!("unknown credential type {}", c.r#type)),
    };
    let key: [u8; 32] =
        c.key.as_slice().try_into().map_err(|_| format!("credential key of {} bytes, not 32", c.key.len()))?;
    Ok((kind, key))
}

pub(crate) fn person_from_wire(p: pb::Person) -> Result<NewPerson, String> {
    if p.person_id.is_empty() || p.person_id.len() > 64 {
        return Err("person_id must be 1 to 64 bytes".into());
    }
    if p.valid_from_ms > p.valid_to_ms {
        return Err(format!("person {}: valid_from after valid_to", p.person_id));
    }
    let time_windows = p
        .time_windows
        .iter()
        .map(|w| {
            let ok =
                w.weekdays <= 0x7f && w.start_minute <= 1440 && w.end_minute <= 1440 && w.start_minute != w.end_minute;
            ok.then_some(TimeWindow {
                weekdays: w.weekdays as u8,
                start_min: w.start_minute as u16,
                end_min: w.end_minute as u16,
            })
            .ok_or_else(|| format!("person {}: bad time window", p.person_id))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let credentials = p.credentials.iter().map(credential_from_wire).collect::<Result<Vec<_>, _>>()?;
    Ok(NewPerson {
        person: PersonRecord {
            category: category_from_wire(p.category)?,
            status: status_from_wire(p.status)?,
            valid_from_ms: p.valid_from_ms,
            valid_to_ms: p.valid_to_ms,
            display_name: p.display_name,
            tags: p.tags,
            allowed_gates: if p.allowed_gates.is_empty() {
                AllowedGates::All
            } else {
                AllowedGates::Only(p.allowed_gates)
            },
            time_windows,
            person_id: p.person_id,
        },
        credentials,
    })
}
