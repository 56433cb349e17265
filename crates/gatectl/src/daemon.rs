//! The commands that talk to the running daemon over its control socket
//! (`status`, `tail`, `lookup`, `open`, `selftest`, `outbox`): each loads the
//! config only to find the socket (`[control] socket`), sends one request and
//! prints the reply, for people or (`--json`) for scripts.
//!
//! Nothing here prints a credential in clear: the daemon masks subjects, and
//! a typed-in ID number is only sent, never echoed.

use anyhow::Result;
use gate_control_proto::client::{self, ClientError};
use gate_control_proto::protocol::{Command, Credential, Reply, StatusReport};
use gate_core::UtcOffset;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// EX_UNAVAILABLE of sysexits.h: the daemon is not running.
const EXIT_NOT_RUNNING: u8 = 69;
/// EX_NOPERM of sysexits.h: not allowed to use the control socket.
const EXIT_NO_PERMISSION: u8 = 77;
/// EX_USAGE: the config file is bad.
const EXIT_BAD_INPUT: u8 = 64;

/// The socket and the site's UTC offset (for printing times), from the config.
pub struct Target {
    pub socket: PathBuf,
    pub offset: UtcOffset,
}

impl Target {
    pub fn from_config(path: &Path) -> Result<Target, ExitCode> {
        match gate_config::load(path) {
            Ok(config) => Ok(Target { socket: config.control.socket, offset: config.site.utc_offset }),
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("gatectl: {}: bad configuration; cannot find the daemon's socket", path.display());
                Err(ExitCode::from(EXIT_BAD_INPUT))
            }
        }
    }
}

/// Prints a client error and picks the exit status a script can act on.
fn failed(e: &ClientError) -> ExitCode {
    eprintln!("gatectl: {e}");
    if e.is_not_running() {
        ExitCode::from(EXIT_NOT_RUNNING)
    } else if e.is_permission() {
        ExitCode::from(EXIT_NO_PERMISSION)
    } else {
        ExitCode::FAILURE
    }
}

fn unexpected(reply: &Reply) -> ExitCode {
    eprintln!("gatectl: unexpected reply from gated: {reply:?}");
    ExitCode::FAILURE
}

fn json_line(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// `2026-03-04T12:34:56.789+08:00`: site time with the offset, exactly as
/// the daemon's log stamps its lines.
fn local_time(at_ms: i64, offset: UtcOffset) -> String {
    offset.timestamp(at_ms)
}

fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        3600..86_400 => format!("{} h {} min", secs / 3600, secs / 60 % 60),
        _ => format!("{} d {} h", secs / 86_400, secs / 3600 % 24),
    }
}

pub fn status(target: &Target, json: bool) -> Result<ExitCode> {
    let report = match client::request(&target.socket, Command::Status) {
        Ok(Reply::Status(report)) => report,
        Ok(other) => return Ok(unexpected(&other)),
        Err(e) => return Ok(failed(&e)),
    };
    if json {
        println!("{}", json_line(&report));
    } else {
        print!("{}", render_status(&report, target.offset, crate::now_ms()));
    }
    Ok(ExitCode::SUCCESS)
}

fn render_status(s: &StatusReport, offset: UtcOffset, now: i64) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!("gated {} at {}/{}, up {}", s.version, s.site, s.gate, duration(s.uptime_s)));
    line(format!("mode:          {} (policy {})", s.mode, s.policy_version));
    let synced = |at: Option<i64>| match at {
        Some(at) => {
            format!("last sync {} ({} ago)", local_time(at, offset), duration(((now - at).max(0) / 1000) as u64))
        }
        None => "never synced from the platform".to_owned(),
    };
    let i = &s.identity;
    line(format!(
        "identity:      {} people ({} residents, {} workers, {} visitors); credentials: {} ID cards, {} IC cards, {} plates",
        i.people, i.residents, i.workers, i.visitors, i.id_cards, i.ic_cards, i.plates
    ));
    line(match (s.identity_changed_at_ms, &s.identity_changed_how) {
        (Some(at), Some(how)) => format!(
            "               last changed {} ({} ago): {how}",
            local_time(at, offset),
            duration(((now - at).max(0) / 1000) as u64)
        ),
        _ if i.people == 0 => "               never changed: empty until an import or a platform sync".to_owned(),
        // Filled by an import that did not record itself (an older gatectl).
        _ => "               last change not recorded".to_owned(),
    });
    line(format!("               platform version {}, {}", s.identity_version, synced(s.identity_synced_at_ms)));
    line(format!("health table:  version {}, {}", s.health_version, synced(s.health_synced_at_ms)));
    let b = &s.broker;
    line(format!(
        "broker:        {} {} (published {}, acknowledged {}, connections {}, connection errors {})",
        if b.connected { "connected to" } else { "NOT connected to" },
        b.address,
        b.published,
        b.acked,
        b.connections,
        b.connection_errors
    ));
    if let Some(error) = &b.last_error {
        line(format!("               last error: {error}"));
    }
    line(match s.platform_heartbeat_at_ms {
        Some(at) => format!(
            "platform:      last signed heartbeat {} ({} ago)",
            local_time(at, offset),
            duration(((now - at).max(0) / 1000) as u64)
        ),
        None => "platform:      no signed heartbeat since the daemon started".to_owned(),
    });
    for warning in &s.platform_warnings {
        line(format!("  WARNING {warning}"));
    }
    if !s.restart_needed.is_empty() {
        line(format!(
            "restart needed: {} changed in the file; running on the old values until `systemctl restart gated`",
            s.restart_needed.join(", ")
        ));
    }
    let oldest = s.outbox.oldest_age_s.map(|a| format!(", oldest {}", duration(a))).unwrap_or_default();
    line(format!("outbox:        {} queued{oldest}", s.outbox.depth));
    let failures: Vec<String> =
        s.store.errors.iter().filter(|(_, n)| *n > 0).map(|(class, n)| format!("{n} {class}")).collect();
    let failures = if failures.is_empty() { String::new() } else { format!("; failures: {}", failures.join(", ")) };
    let dropped = if s.store.outbox_dropped > 0 {
        format!("; {} unsent events dropped over capacity", s.store.outbox_dropped)
    } else {
        String::new()
    };
    let state = if s.store.state.is_empty() { "not checked yet" } else { s.store.state.as_str() };
    line(format!("store:         {state}, {} MB free{failures}{dropped}", s.store.disk_free_bytes / (1 << 20)));
    let d = &s.decisions;
    line(format!(
        "decisions:     {} passed, {} blocked, {} failed; {} passages; {} alerts",
        d.passed, d.blocked, d.failed, d.passages, d.alerts
    ));
    line(match s.decision_loop_age_ms {
        Some(ms) => format!("decision loop: last turn {:.1} s ago", ms as f64 / 1000.0),
        None => "decision loop: NOT STARTED".to_owned(),
    });
    if s.devices.is_empty() {
        line("devices:       none configured".to_owned());
    } else {
        line("devices:".to_owned());
    }
    for dev in &s.devices {
        line(format!(
            "  {:<12} {:<24} {:<13} frames {}, errors: checksum {}, length {}, timeouts {}, status {}, auth {}; \
             garbage bytes {}; reconnects {}",
            dev.name,
            dev.port,
            if dev.connected { "connected" } else { "NOT CONNECTED" },
            dev.frames_ok,
            dev.checksum_errors,
            dev.length_errors,
            dev.timeouts,
            dev.status_errors,
            dev.auth_errors,
            dev.garbage_bytes,
            dev.reconnects
        ));
        if let Some(e) = &dev.last_error {
            line(format!("  {:<12} last error: {e}", ""));
        }
    }
    out
}

pub fn tail(target: &Target, json: bool) -> Result<ExitCode> {
    let offset = target.offset;
    let stdout = std::io::stdout();
    let result = client::tail(
        &target.socket,
        || eprintln!("following decisions and alarms at {} (Ctrl-C to stop)", target.socket.display()),
        |missed| eprintln!("gatectl: {missed} line(s) dropped: this terminal was too slow"),
        |activity| {
            let text = if json {
                json_line(&activity)
            } else {
                format!("{} {}", local_time(activity.at_ms(), offset), activity.line())
            };
            // A closed pipe (`| head`) ends the tail quietly.
            let mut out = stdout.lock();
            writeln!(out, "{text}").and_then(|()| out.flush()).is_ok()
        },
    );
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Ok(failed(&e)),
    }
}

pub fn lookup(target: &Target, credential: Credential, side: Option<String>, json: bool) -> Result<ExitCode> {
    let report = match client::request(&target.socket, Command::Lookup { credential, side }) {
        Ok(Reply::Lookup(report)) => report,
        Ok(other) => return Ok(unexpected(&other)),
        Err(e) => return Ok(failed(&e)),
    };
    // A block exits 1, so a script can branch on the verdict.
    let code = if report.decision == "pass" { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    if json {
        println!("{}", json_line(&report));
        return Ok(code);
    }
    let verdict = match &report.reason {
        Some(reason) => format!("{} ({reason})", report.decision.to_uppercase()),
        None => report.decision.to_uppercase(),
    };
    println!("{} {} at the {} side: {verdict}", report.credential, report.subject, report.side);
    if let Some(person) = &report.person_id {
        let name = report.name.as_deref().map(|n| format!(", {n}")).unwrap_or_default();
        println!("person:   {person} ({}{name})", report.category.as_deref().unwrap_or("?"));
    }
    if let (Some(from), Some(to)) = (&report.valid_from, &report.valid_to) {
        println!("valid:    {from} to {to}");
    }
    if let Some(state) = &report.state {
        println!("state:    {state}");
    }
    println!("why:");
    for reason in &report.why {
        println!("  - {reason}");
    }
    println!("(a dry run: nothing was recorded and the gate did not move)");
    Ok(code)
}

pub fn open(target: &Target, reason: String, side: Option<String>) -> Result<ExitCode> {
    if reason.trim().is_empty() {
        eprintln!("gatectl: --reason must say why the gate is opened");
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    let command = Command::Open { reason, side, sudo_user: gate_control_proto::sudo_user() };
    let report = match client::request(&target.socket, command) {
        Ok(Reply::Opened(report)) => report,
        Ok(other) => return Ok(unexpected(&other)),
        Err(e) => return Ok(failed(&e)),
    };
    println!(
        "manual open of the {} side recorded as event #{} by {}; {}",
        report.side, report.seq, report.operator, report.detail
    );
    Ok(if report.confirmed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn selftest(target: &Target, pulse: bool, json: bool) -> Result<ExitCode> {
    if pulse {
        eprintln!(
            "selftest: watching each device for a few seconds, then pulsing each unlock output (each pulse is recorded)"
        );
    } else {
        eprintln!("selftest: watching each device for a few seconds (outputs not pulsed)");
    }
    let report = match client::request(
        &target.socket,
        Command::Selftest { pulse, sudo_user: gate_control_proto::sudo_user() },
    ) {
        Ok(Reply::Selftest(report)) => report,
        Ok(other) => return Ok(unexpected(&other)),
        Err(e) => return Ok(failed(&e)),
    };
    if json {
        println!("{}", json_line(&report));
    } else if report.checks.is_empty() {
        println!("no devices configured: nothing to test");
    }
    let mut all = true;
    for check in &report.checks {
        all &= check.passed;
        if !json {
            let verdict = match (check.skipped, check.passed) {
                (true, _) => "SKIP",
                (false, true) => "PASS",
                (false, false) => "FAIL",
            };
            println!("{verdict} {}: {}", check.device, check.checked);
        }
    }
    Ok(if all { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn outbox(target: &Target, json: bool) -> Result<ExitCode> {
    let report = match client::request(&target.socket, Command::Outbox) {
        Ok(Reply::Outbox(report)) => report,
        Ok(other) => return Ok(unexpected(&other)),
        Err(e) => return Ok(failed(&e)),
    };
    if json {
        println!("{}", json_line(&report));
        return Ok(ExitCode::SUCCESS);
    }
    match report.oldest_age_s {
        Some(age) => println!("outbox: {} queued, oldest {}", report.depth, duration(age)),
        None => println!("outbox: empty"),
    }
    for topic in &report.topics {
        println!("  {:<48} {:>6} queued, oldest {}", topic.topic, topic.depth, duration(topic.oldest_age_s));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_in_the_site_offset() {
        // 2024-01-01T00:00:00Z is 08:00 in China.
        assert_eq!(local_time(1_704_067_200_000, UtcOffset::CHINA), "2024-01-01T08:00:00.000+08:00");
        assert_eq!(local_time(1_704_067_199_000, UtcOffset::UTC), "2023-12-31T23:59:59.000+00:00");
        assert_eq!(duration(59), "59 s");
        assert_eq!(duration(3_725), "1 h 2 min");
    }
}
