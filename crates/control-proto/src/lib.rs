//! The control socket between `gated` and `gatectl`: the JSON-lines
//! protocol ([`protocol`]), the live activity lines `tail` carries
//! ([`activity`]), the blocking client ([`client`]) and how a technician is
//! named ([`operator`]).
//!
//! A crate of its own so that the technician's tool links only this, not the
//! daemon's serial, Modbus and QR stacks.

pub mod activity;
pub mod client;
pub mod protocol;

use nix::unistd::{Uid, User};

/// The login of a uid from the user database (getpwuid), or `uid-N` when
/// the uid has no entry. Never from `$USER`, which any process can set.
pub fn login_of(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => format!("uid-{uid}"),
    }
}

/// A login as `sudo` reports it in `SUDO_USER`: accepted only when it looks
/// like a login (it ends up in events and logs).
fn plausible_login(claimed: Option<&str>) -> Option<&str> {
    claimed
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
}

/// Who acts, as `technician:<login>`: the login of `uid`; for root only, the
/// login behind `sudo` when there is one (root could claim anything anyway,
/// and "root" names nobody).
pub fn operator(uid: u32, sudo_user: Option<&str>) -> String {
    if uid == 0
        && let Some(login) = plausible_login(sudo_user)
        && login != "root"
    {
        return format!("technician:{login}");
    }
    format!("technician:{}", login_of(uid))
}

/// The operator of this process: its real uid, and for root the login
/// behind `sudo`.
pub fn local_operator() -> String {
    let sudo_user = std::env::var("SUDO_USER").ok();
    operator(nix::unistd::getuid().as_raw(), sudo_user.as_deref())
}

/// The login behind `sudo`, sent to the daemon so that a root client names
/// the technician; the daemon itself names non-root clients from their uid.
pub fn sudo_user() -> Option<String> {
    std::env::var("SUDO_USER").ok().filter(|u| plausible_login(Some(u)).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_are_named_from_their_uid_unless_root_says_who() {
        assert_eq!(operator(0, Some("alice")), "technician:alice");
        assert_eq!(operator(0, Some("root")), "technician:root");
        assert_eq!(operator(0, Some("bad name;")), "technician:root");
        assert_eq!(operator(65534, Some("alice")), "technician:nobody", "only root may name someone else");
        assert_eq!(operator(4_000_000, None), "technician:uid-4000000");
        assert_eq!(operator(0, None), "technician:root");
    }
}
