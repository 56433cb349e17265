//! The deployment files agree with each other and with the daemon: every file
//! the Debian package metadata names exists, the systemd unit runs the daemon
//! the way it expects (Type=notify, check-config first, serial ports
//! reachable), the shipped example config is valid and names the udev device
//! names. Building the package itself is `deploy/package-test.sh`.

use std::path::{Path, PathBuf};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn repo_file(path: &str) -> PathBuf {
    crate_dir().join("../..").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of `[package.metadata.deb]` in this crate's Cargo.toml, comment
/// lines left out.
fn deb_metadata() -> Vec<String> {
    let manifest = read(&crate_dir().join("Cargo.toml"));
    let mut lines = manifest.lines().skip_while(|line| line.trim() != "[package.metadata.deb]");
    assert!(lines.next().is_some(), "Cargo.toml has no [package.metadata.deb]");
    lines
        .take_while(|line| !line.starts_with('['))
        .filter(|line| !line.trim_start().starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Every double-quoted string in `lines`.
fn quoted(lines: &[String]) -> Vec<String> {
    lines.iter().flat_map(|line| line.split('"').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>()).collect()
}

/// The value of `key = "..."` anywhere in the metadata (inline tables too).
fn metadata_value(lines: &[String], key: &str) -> String {
    let needle = format!("{key} = \"");
    lines
        .iter()
        .find_map(|line| {
            let start = line.find(&needle)? + needle.len();
            let rest = &line[start..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .unwrap_or_else(|| panic!("no {key} in [package.metadata.deb]"))
}

/// The package names of the workspace members.
fn workspace_packages() -> Vec<String> {
    let root = read(&repo_file("Cargo.toml"));
    let members = root.split("members = [").nth(1).and_then(|rest| rest.split(']').next()).expect("workspace members");
    quoted(&[members.to_owned()])
        .iter()
        .filter_map(|member| {
            let manifest = std::fs::read_to_string(repo_file(member).join("Cargo.toml")).ok()?;
            let name = manifest.lines().find_map(|l| l.strip_prefix("name = \""))?;
            Some(name.trim_end_matches('"').to_owned())
        })
        .collect()
}

#[test]
fn every_file_the_package_names_exists() {
    let lines = deb_metadata();
    let packages = workspace_packages();
    let mut sources = 0;
    for source in quoted(&lines) {
        if let Some(binary) = source.strip_prefix("target/release/") {
            assert!(
                packages.iter().any(|p| p == binary),
                "asset {source}: no workspace package builds a binary {binary}"
            );
            sources += 1;
        } else if source.starts_with("../") {
            let path = crate_dir().join(&source);
            if let Some((dir, pattern)) = source.rsplit_once("/*") {
                let dir = crate_dir().join(dir);
                let matches = std::fs::read_dir(&dir)
                    .unwrap_or_else(|e| panic!("asset {source}: {}: {e}", dir.display()))
                    .filter_map(Result::ok)
                    .filter(|entry| entry.file_name().to_string_lossy().ends_with(pattern))
                    .count();
                assert!(matches > 0, "asset {source} matches no file");
            } else {
                assert!(path.exists(), "asset {source} does not exist");
            }
            sources += 1;
        }
    }
    assert!(sources >= 8, "only {sources} assets found: is the parser lost?");

    let scripts = crate_dir().join(metadata_value(&lines, "maintainer-scripts"));
    for script in ["postinst", "postrm"] {
        let path = scripts.join(script);
        let text = read(&path);
        assert!(text.starts_with("#!/bin/sh\n"), "{script}: not a sh script");
        assert_eq!(
            text.matches("#DEBHELPER#").count(),
            1,
            "{script}: cargo-deb replaces every #DEBHELPER#, comments included: exactly one"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).expect("metadata").permissions());
        assert!(mode & 0o111 != 0, "{script} is not executable");
    }
    let units = crate_dir().join(metadata_value(&lines, "unit-scripts"));
    assert!(units.join("gated.service").is_file(), "unit-scripts holds no gated.service");
}

#[test]
fn the_package_ships_an_example_config_not_a_live_one() {
    let lines = deb_metadata();
    let destinations = quoted(&lines);
    assert!(destinations.iter().any(|d| d == "etc/gated/gated.toml.example"));
    assert!(
        !destinations.iter().any(|d| d.trim_start_matches('/') == "etc/gated/gated.toml"),
        "a live /etc/gated/gated.toml would start the unit on a box not yet set up"
    );
    assert!(lines.iter().any(|l| l.contains("enable = false")));
}

#[test]
fn the_unit_runs_the_daemon_as_it_expects() {
    let unit = read(&repo_file("deploy/gated.service"));
    let directives: Vec<&str> =
        unit.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('[')).collect();
    for wanted in [
        "Type=notify",
        "WatchdogSec=30",
        "ExecStartPre=/usr/bin/gated check-config /etc/gated/gated.toml",
        "ExecStart=/usr/bin/gated --config /etc/gated/gated.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=gated",
        "SupplementaryGroups=dialout",
        "StateDirectory=gated",
        "ConfigurationDirectory=gated",
        "ReadWritePaths=/var/lib/gated",
        "ProtectSystem=strict",
        "DevicePolicy=closed",
        "DeviceAllow=char-ttyUSB rw",
        "DeviceAllow=char-ttyACM rw",
        "DeviceAllow=char-ttyS rw",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=15",
        "Restart=on-failure",
    ] {
        assert!(directives.contains(&wanted), "gated.service lacks {wanted}");
    }
    // It would hide the serial ports the daemon drives.
    assert!(!directives.iter().any(|d| d.starts_with("PrivateDevices=yes")), "PrivateDevices hides /dev/ttyUSB*");
}

#[test]
fn the_example_config_is_valid_and_uses_the_udev_names() {
    let example = repo_file("config/gated.example.toml");
    let config =
        gate_config::load(&example).unwrap_or_else(|errors| panic!("the shipped example does not load:\n{errors}"));
    let rules = read(&repo_file("deploy/99-gate.rules"));
    let rule_lines: Vec<&str> =
        rules.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')).collect();
    for line in &rule_lines {
        assert!(
            line.contains("GROUP=\"dialout\"") && line.contains("MODE=\"0660\""),
            "udev rule without dialout/0660: {line}"
        );
    }
    let names: Vec<String> = rule_lines
        .iter()
        .filter_map(|l| l.split("SYMLINK+=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(|name| format!("/dev/{name}"))
        .collect();
    for name in ["/dev/gate-idcard", "/dev/gate-io", "/dev/gate-qr", "/dev/gate-plate"] {
        assert!(names.iter().any(|n| n == name), "no udev rule names {name}");
    }
    let reader = config.devices.id_card.expect("the example has a reader");
    let io = config.devices.gate.expect("the example has an IO board");
    assert!(names.contains(&reader.port.display().to_string()));
    assert!(names.contains(&io.port.display().to_string()));
}
