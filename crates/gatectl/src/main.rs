//! `gatectl`, the technician's command-line tool: site keys, identity
//! import, configuration checks, and the running daemon through its control
//! socket (status, tail, lookup, open, selftest, outbox).

mod daemon;
mod import;
mod ports;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// EX_USAGE: the input (config or file) is wrong.
const EXIT_BAD_INPUT: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "gatectl", version, about = "Technician tool for the gate-control daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new site key file (64 hex characters, mode 0600).
    Keygen {
        /// Where to write the key; refuses to overwrite an existing file.
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// Validate a configuration file; exit status 64 on a bad file.
    CheckConfig {
        /// The configuration file to check.
        #[arg(value_name = "PATH", required_unless_present = "config")]
        path: Option<PathBuf>,
        /// The same file, named as the daemon's and the other commands'
        /// `--config` names it.
        #[arg(long = "config", value_name = "PATH", conflicts_with = "path")]
        config: Option<PathBuf>,
    },
    /// The local identity table.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// The site mode (normal, sporadic, wartime).
    Mode {
        #[command(subcommand)]
        command: ModeCommand,
    },
    /// Visitor QR passes (platform side, for demos, tests and commissioning).
    Pass {
        #[command(subcommand)]
        command: PassCommand,
    },
    /// The running daemon: mode, policy, identity version and last sync,
    /// broker, outbox, each device's health and counters, uptime, version.
    Status {
        /// The gate's configuration file (the daemon's socket, database and site key are found from it).
        #[arg(long, value_name = "PATH", default_value = "/etc/gated/gated.toml")]
        config: PathBuf,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Follows decisions and alarms as they happen (identities masked) until Ctrl-C.
    Tail {
        /// The gate's configuration file (the daemon's socket, database and site key are found from it).
        #[arg(long, value_name = "PATH", default_value = "/etc/gated/gated.toml")]
        config: PathBuf,
        /// One JSON object per line, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// What the gate would decide now for a credential, and why, with the
    /// person's validity dates and state. A dry run: nothing is recorded and
    /// the gate does not move. Exit status 0 for a pass, 1 for a block.
    Lookup {
        /// The gate's configuration file (the daemon's socket, database and site key are found from it).
        #[arg(long, value_name = "PATH", default_value = "/etc/gated/gated.toml")]
        config: PathBuf,
        #[command(flatten)]
        credential: CredentialArgs,
        /// entry or exit (default: the gate's usual side).
        #[arg(long)]
        side: Option<String>,
        /// Print one JSON object instead of text, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Unlocks the gate by hand. Recorded first as an event with your local
    /// user name and the reason.
    Open {
        /// The gate's configuration file (the daemon's socket, database and site key are found from it).
        #[arg(long, value_name = "PATH", default_value = "/etc/gated/gated.toml")]
        config: PathBuf,
        /// Why (kept with the event).
        #[arg(long)]
        reason: String,
        /// entry or exit (default: the gate's usual side).
        #[arg(long)]
        side: Option<String>,
    },
    /// Commissioning: checks each device (SAM replies, Modbus input reads,
    /// ports open), pulses each wired unlock output (recorded), and prints a
    /// PASS/FAIL line per device. Exit status 1 when any check fails.
    Selftest {
        /// The gate's configuration file (the daemon's socket, database and site key are found from it).
        #[arg(long, value_name = "PATH", default_value = "/etc/gated/gated.toml")]
        config: PathBuf,
        /// Do not pulse the unlock outputs.
        #[arg(long)]
        no_pulse: bool,
        /// Print one JSON object instead of text, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The serial ports present, with USB vendor/product ids and stable
    /// /dev/serial/by-id names, to fill in `[devices.*] port`. Needs no daemon.
    Ports,
    /// The outbox: events waiting for the broker, the oldest, by topic.
    Outbox {
        /// The gate's configuration file (the daemon's socket, database and site key are found from it).
        #[arg(long, value_name = "PATH", default_value = "/etc/gated/gated.toml")]
        config: PathBuf,
        /// Print one JSON object instead of text, for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// Exactly one credential for `lookup`.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct CredentialArgs {
    /// A resident ID number (sent to the daemon only; never printed in clear).
    #[arg(long, value_name = "N")]
    id_number: Option<String>,
    /// An IC card UID (hex).
    #[arg(long, value_name = "UID")]
    card: Option<String>,
    /// A vehicle plate.
    #[arg(long, value_name = "P")]
    plate: Option<String>,
}

impl CredentialArgs {
    fn into_credential(self) -> gate_control_proto::protocol::Credential {
        use gate_control_proto::protocol::Credential;
        match (self.id_number, self.card, self.plate) {
            (Some(n), _, _) => Credential::IdNumber(n),
            (_, Some(uid), _) => Credential::Card(uid),
            (_, _, Some(plate)) => Credential::Plate(plate),
            // clap's group makes one of them required.
            (None, None, None) => Credential::IdNumber(String::new()),
        }
    }
}

#[derive(Debug, Subcommand)]
enum ModeCommand {
    /// Show the mode in force and any scheduled change.
    Show {
        /// The gate's configuration file (the daemon's socket, database and site key are found from it).
        #[arg(long, value_name = "PATH", default_value = "/etc/gated/gated.toml")]
        config: PathBuf,
    },
    /// Override the mode now, as a technician (no platform key needed). Sent
    /// to the running daemon over its control socket, which records it as an
    /// event with your login (named from your uid, never $USER) and the
    /// reason, and follows it at its next decision; with the daemon stopped,
    /// written to its database directly. The platform's next mode message
    /// overrides it again.
    Set {
        /// The gate's configuration file (the daemon's socket, database and site key are found from it).
        #[arg(long, value_name = "PATH", default_value = "/etc/gated/gated.toml")]
        config: PathBuf,
        /// normal, sporadic or wartime.
        #[arg(value_name = "MODE")]
        mode: String,
        /// Why (kept with the event).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum PassCommand {
    /// Create an Ed25519 signing key (private key file, mode 0600) and print
    /// the `[platform] signing_keys` entry that makes gates trust it.
    Keygen {
        /// Where to write the private key (mode 0600); refuses to overwrite.
        #[arg(value_name = "PRIVATE_KEY_PATH")]
        path: PathBuf,
    },
    /// Seal a visitor pass in the platform's signed envelope and print its
    /// QR text (VP2....).
    Issue {
        /// The gate's config: gives the site and the site key for the
        /// visitor's ID-number hash.
        #[arg(long, value_name = "PATH", default_value = "/etc/gated/gated.toml")]
        config: PathBuf,
        /// The platform's private key file (readable by its owner only).
        #[arg(long, value_name = "PATH")]
        key: PathBuf,
        /// The key id the gates know this key by in `[platform]
        /// signing_keys` (default: the id `pass keygen` printed, derived
        /// from the key).
        #[arg(long, value_name = "ID")]
        key_id: Option<String>,
        /// The pass's id, unique on the platform (shown in events and used for revocation).
        #[arg(long)]
        pass_id: String,
        /// The host's person id.
        #[arg(long)]
        host: String,
        /// The visitor's ID number (hashed under the site key; never printed).
        #[arg(long)]
        visitor_id_number: String,
        /// Valid from, milliseconds since the epoch (default: now).
        #[arg(long)]
        from_ms: Option<i64>,
        /// Valid for this many hours (default 24).
        #[arg(long, default_value_t = 24)]
        hours: i64,
        /// Gates it is valid at (default: every gate of the site).
        #[arg(long, value_delimiter = ',')]
        gates: Vec<String>,
        /// How many passages (0 = unlimited).
        #[arg(long, default_value_t = 2)]
        uses: u32,
    },
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Import people from a CSV file with the header
    /// `person_id,category,id_number,name,valid_from,valid_to` (dates
    /// YYYY-MM-DD). All rows are checked first; one bad row and nothing is applied.
    Import {
        /// The gate's configuration (site key and database).
        #[arg(long, value_name = "PATH", default_value = "/etc/gated/gated.toml")]
        config: PathBuf,
        /// The file's text encoding. Without it: UTF-8 when the file is
        /// valid UTF-8, else GBK when it is valid GBK (and it says so).
        #[arg(long, value_enum, value_name = "ENCODING")]
        encoding: Option<import::Encoding>,
        /// The CSV file of people (ID numbers in clear: delete it afterwards).
        #[arg(value_name = "FILE.csv")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatectl: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    // The daemon commands first find the socket from the config.
    let target = |config: &std::path::Path| daemon::Target::from_config(config);
    match cli.command {
        Command::Status { config, json } => match target(&config) {
            Ok(t) => daemon::status(&t, json),
            Err(code) => Ok(code),
        },
        Command::Tail { config, json } => match target(&config) {
            Ok(t) => daemon::tail(&t, json),
            Err(code) => Ok(code),
        },
        Command::Lookup { config, credential, side, json } => match target(&config) {
            Ok(t) => daemon::lookup(&t, credential.into_credential(), side, json),
            Err(code) => Ok(code),
        },
        Command::Open { config, reason, side } => match target(&config) {
            Ok(t) => daemon::open(&t, reason, side),
            Err(code) => Ok(code),
        },
        Command::Selftest { config, no_pulse, json } => match target(&config) {
            Ok(t) => daemon::selftest(&t, !no_pulse, json),
            Err(code) => Ok(code),
        },
        Command::Outbox { config, json } => match target(&config) {
            Ok(t) => daemon::outbox(&t, json),
            Err(code) => Ok(code),
        },
        Command::Ports => {
            print!("{}", ports::render(&ports::list(std::path::Path::new("/sys"), std::path::Path::new("/dev"))));
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { path } => {
            gate_config::write_new_site_key(&path)?;
            println!("wrote a new site key to {} (mode 0600); keep it secret and back it up", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { path, config } => {
            // clap requires one of the two.
            let path = path.or(config).unwrap_or_default();
            Ok(if gate_config::check_and_report(&path) { ExitCode::SUCCESS } else { ExitCode::from(EXIT_BAD_INPUT) })
        }
        Command::Mode { command: ModeCommand::Show { config } } => {
            let config = load_config(&config)?;
            let store = open_store(&config)?;
            let now = now_ms();
            match store.mode_schedule()? {
                None => println!("mode: normal (never set)"),
                Some(s) => {
                    println!("mode: {}", s.at(now));
                    if s.effective_at_ms > now {
                        println!("scheduled: {} at {} ms (set by {})", s.after, s.effective_at_ms, s.origin.operator);
                    } else {
                        println!("set by: {} ({})", s.origin.operator, s.origin.reason);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Mode { command: ModeCommand::Set { config, mode, reason } } => {
            let Some(mode) = gate_core::Mode::parse(&mode) else {
                eprintln!("gatectl: expected normal, sporadic or wartime, found {mode:?}");
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            };
            if reason.trim().is_empty() {
                eprintln!("gatectl: --reason must say why");
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            }
            let config = load_config(&config)?;
            // Through the running daemon, which names the operator from this
            // connection's uid; only a stopped daemon is bypassed.
            let command = gate_control_proto::protocol::Command::SetMode {
                mode: mode.as_str().to_owned(),
                reason: reason.clone(),
                sudo_user: gate_control_proto::sudo_user(),
            };
            match gate_control_proto::client::request(&config.control.socket, command) {
                Ok(gate_control_proto::protocol::Reply::ModeSet(report)) => {
                    println!("mode set to {} by {} (event seq {})", report.mode, report.operator, report.seq);
                    return Ok(ExitCode::SUCCESS);
                }
                Ok(other) => {
                    eprintln!("gatectl: unexpected reply from gated: {other:?}");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) if e.is_not_running() => {
                    eprintln!("gatectl: {e}; writing the change to its database directly");
                }
                Err(e) => {
                    eprintln!("gatectl: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            }
            let mut store = open_store(&config)?;
            let operator = gate_control_proto::local_operator();
            let context = gate_sync::EventContext {
                site_id: config.site.id.to_string(),
                gate_id: config.gate.id.to_string(),
                lane: config.gate.lane,
                direction: config.gate.direction,
                policy_version: config.policy.version.clone(),
            };
            let seq = gate_sync::set_mode_by_technician(&mut store, &context, mode, &operator, &reason, now_ms())?;
            println!("mode set to {mode} by {operator} (event seq {seq})");
            Ok(ExitCode::SUCCESS)
        }
        Command::Pass { command: PassCommand::Keygen { path } } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut seed = [0u8; 32];
            rand::fill(&mut seed);
            let signer = gate_envelope::Signer::from_seed(seed);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            writeln!(file, "{}", hex::encode(seed))?;
            println!("private key: {} (mode 0600)", path.display());
            println!("public key (for [platform] signing_keys): {}", signer.key_spec().to_spec_string());
            Ok(ExitCode::SUCCESS)
        }
        Command::Pass {
            command:
                PassCommand::Issue { config, key, key_id, pass_id, host, visitor_id_number, from_ms, hours, gates, uses },
        } => {
            let config = load_config(&config)?;
            let site_key = gate_config::load_site_key(&config.identity.hmac_key_file)?;
            let mut signer = gate_envelope::Signer::from_file(&key)?;
            if let Some(id) = key_id {
                signer = signer.with_key_id(&id).map_err(|e| anyhow::anyhow!("--key-id {id:?}: {e}"))?;
            }
            let id = gate_core::IdNumber::parse(&visitor_id_number)
                .map_err(|e| anyhow::anyhow!("visitor ID number: {e}"))?;
            let from = from_ms.unwrap_or_else(now_ms);
            let pass = gate_pass::VisitorPass {
                kid: String::new(),
                site: config.site.id.to_string(),
                pass_id,
                host_person_id: host,
                visitor_id_hash: hex::encode(site_key.credential_key(gate_core::CredentialKind::IdNumber, id.expose())),
                valid_from_ms: from,
                valid_to_ms: from + hours * 3_600_000,
                gates,
                max_uses: uses,
            };
            println!("{}", gate_pass::seal(&pass, &signer, now_ms()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Identity { command: IdentityCommand::Import { config, encoding, file } } => {
            let config = match gate_config::load(&config) {
                Ok(config) => config,
                Err(errors) => {
                    eprintln!("{errors}");
                    return Ok(ExitCode::from(EXIT_BAD_INPUT));
                }
            };
            let key = gate_config::load_site_key(&config.identity.hmac_key_file)?;
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let decoded = match gate_config::people_csv::decode(&file, &bytes, encoding.map(Into::into)) {
                Ok(decoded) => decoded,
                Err(e) => {
                    eprintln!("{e}");
                    eprintln!("{}: nothing was imported", file.display());
                    return Ok(ExitCode::from(EXIT_BAD_INPUT));
                }
            };
            if let Some(note) = &decoded.note {
                eprintln!("{note}");
            }
            let people = match gate_config::people_csv::parse_people(&file, &decoded.text, &key, config.site.utc_offset)
            {
                Ok(rows) => rows.iter().map(import::new_person).collect::<Vec<_>>(),
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{e}");
                    }
                    eprintln!("{}: {} bad row(s); nothing was imported", file.display(), errors.len());
                    return Ok(ExitCode::from(EXIT_BAD_INPUT));
                }
            };
            if let Some(dir) = config.store.path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let mut store = gate_store::Store::open(&config.store.path)?;
            let summary = store.import_people(&people)?;
            // For `gatectl status`: when the table last changed, and how.
            store.note_local_import(&gate_store::LocalImport {
                at_ms: now_ms(),
                operator: gate_control_proto::local_operator(),
                people: summary.people as u64,
            })?;
            println!(
                "imported {} people ({} credentials) into {}",
                summary.people,
                summary.credentials,
                config.store.path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The error and its causes, each said once: a cause whose text its
/// wrapper already quotes (common with `thiserror`'s `{source}`) is not
/// repeated.
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn load_config(path: &std::path::Path) -> Result<gate_config::Config> {
    gate_config::load(path).map_err(|errors| anyhow::anyhow!("{}: bad configuration\n{errors}", path.display()))
}

/// The wall clock, read once per command.
fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Opens the gate database, creating its folder on a fresh box.
fn open_store(config: &gate_config::Config) -> Result<gate_store::Store> {
    if let Some(dir) = config.store.path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(gate_store::Store::open(&config.store.path)?)
}

#[cfg(test)]
mod cli_docs {
    /// The manual pages and completions in `deploy/` (installed by the
    /// Debian package) are what this definition generates, and every
    /// argument has help text.
    #[test]
    fn man_pages_and_completions_are_current() {
        use clap::CommandFactory;
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        if let Err(problems) = gate_clidoc::check(&super::Cli::command(), &deploy) {
            panic!("{problems}");
        }
    }
}
