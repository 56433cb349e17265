//! The `gate-platform` binary: command line, logging, signals, exit codes
//! (64 bad configuration or usage, 69 PostgreSQL or broker unusable, 78 an
//! unusable key file).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use gate_platform::config::{self, DEFAULT_PATH, PlatformConfig};
use gate_platform::{db, downlink, fleet, health, identity, ingest, keys, progress, report, simulate};
use tokio_util::sync::CancellationToken;

const EXIT_USAGE: u8 = 64;
const EXIT_UNAVAILABLE: u8 = 69;
const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(name = "gate-platform", version, about = "The central platform of the gates: ingest, fleet, flows.")]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Checks the configuration file; every error with line and column (exit 64).
    CheckConfig,
    /// Applies the database migrations not applied yet.
    Migrate,
    /// Writes a new Ed25519 signing key (mode 0600); the last line of output
    /// is the "KEYID:HEX" string gated's `[platform] signing_keys` takes.
    Keygen { file: PathBuf },
    /// Runs one ingest replica until SIGTERM or SIGINT.
    Ingest {
        /// Appended to `[mqtt] client_id` (`{client_id}-{replica}`): each
        /// replica needs its own, stable across its restarts.
        #[arg(long)]
        replica: Option<String>,
        /// Overrides `[ingest] group` (the shared-subscription group).
        #[arg(long)]
        group: Option<String>,
    },
    /// Runs a simulated fleet against the configured broker and PostgreSQL
    /// with ingest replicas of its own (killing one mid-run) and prints
    /// events sent / stored / duplicated / lost, ingest rates and the
    /// decision-to-row lag. Not for a production broker.
    Simulate {
        /// Simulated gates.
        #[arg(long, default_value_t = 200)]
        gates: usize,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Events per second per gate.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Seconds per loaded phase (steady, then faults).
        #[arg(long, default_value_t = 30)]
        duration_s: u64,
        /// Events per gate published at once in the burst phase, drained by
        /// 1 and then by all replicas and compared with a raw COPY (0: skip).
        #[arg(long, default_value_t = 100)]
        burst: usize,
        /// Sites of real gated instances taking part: their events count too.
        #[arg(long = "real-site")]
        real_sites: Vec<String>,
    },
    /// Turns holes older than `[ingest] gap_timeout_s` into gaps now (the
    /// ingest also does it every few seconds).
    SweepGaps,
    /// Per gate: online, last event age, outbox, versions, open gaps and alarms.
    Fleet {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Reports for the grid workers.
    Report {
        #[command(subcommand)]
        report: ReportCommand,
    },
    /// The sites' identity tables: import from CSV, publish to the gates (signed).
    Identity {
        #[command(subcommand)]
        identity: IdentityCommand,
    },
    /// The site mode, sent to the gates signed and retained.
    Mode {
        #[command(subcommand)]
        mode: ModeCommand,
    },
    /// Trust lists for health certificates, sent to the gates signed and retained.
    Trust {
        #[command(subcommand)]
        trust: TrustCommand,
    },
    /// Health records, sent to the gates as signed, versioned batches.
    Health {
        #[command(subcommand)]
        health: HealthCommand,
    },
    /// The platform keys the gates trust.
    Keys {
        #[command(subcommand)]
        keys: KeysCommand,
    },
    /// Lets a site's gates take versions and counters lower than those they
    /// hold, once, signed: for a platform whose database was rebuilt. Follow
    /// it with `identity publish --snapshot` (and health publish) as needed.
    Reset {
        #[arg(long)]
        site: String,
        /// The gates take the next identity snapshot of any version.
        #[arg(long)]
        identity: bool,
        /// The gates take the next health batch of any version.
        #[arg(long)]
        health: bool,
        /// The gates forget the counters of every stream but keys and reset.
        #[arg(long)]
        counters: bool,
        /// Why (kept by the gates, shown to technicians).
        #[arg(long)]
        note: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Sends the site's gates a signed key rotation (retained): from then on
    /// they trust exactly the keys named, and no other. Signed with the key
    /// they trust now ([signing] key_file); switch key_file to a new key
    /// once the gates applied it.
    Rotate {
        #[arg(long)]
        site: String,
        /// A key to trust, as "KEYID:HEX" (as `keygen` prints it).
        #[arg(long = "key", value_name = "KEYID:HEX")]
        keys: Vec<String>,
        /// A signing key file whose public key to trust (as `keygen` writes it).
        #[arg(long = "key-file", value_name = "FILE")]
        key_files: Vec<PathBuf>,
        /// Also keep trusting the current [signing] key (a rotation in two steps).
        #[arg(long)]
        keep_current: bool,
        /// Why (kept by the gates, shown to technicians).
        #[arg(long, default_value = "")]
        note: String,
    },
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Imports the CSV gatectl takes (person_id,category,id_number,name,valid_from,valid_to)
    /// into the site's table; ID numbers are kept only as keyed hashes under the site key.
    Import {
        #[arg(long)]
        site: String,
        /// The site's HMAC key file (the gates' `[identity] hmac_key_file`), owner-only.
        #[arg(long)]
        hmac_key_file: PathBuf,
        /// The site's offset from UTC for the validity dates.
        #[arg(long, default_value = "+08:00")]
        utc_offset: String,
        #[arg(value_name = "FILE.csv")]
        file: PathBuf,
    },
    /// Sends the site's table to its gates: a delta from the last published
    /// version, or a snapshot the first time (or with --snapshot).
    Publish {
        #[arg(long)]
        site: String,
        #[arg(long)]
        snapshot: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ModeCommand {
    /// Sets the site mode: normal, sporadic or wartime.
    Set {
        #[arg(long)]
        site: String,
        mode: String,
        /// Why (shown at the gates and in their events).
        #[arg(long)]
        reason: String,
        /// When it takes effect: YYYY-MM-DDTHH:MM[:SS] with Z or +08:00, or
        /// Unix milliseconds. Default: now.
        #[arg(long)]
        at: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum HealthCommand {
    /// Sends the records of FILE.csv (person_id,colour,nat,nat_sampled_at,vaccine_doses,
    /// last_dose_at,travel_risk,assessed_at,expires_at) as the site's next batch.
    Publish {
        #[arg(long)]
        site: String,
        #[arg(value_name = "FILE.csv")]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TrustCommand {
    /// Publishes the trust list VERSION made of these DER certificates.
    Publish {
        #[arg(long)]
        site: String,
        #[arg(long)]
        version: u64,
        #[arg(value_name = "CERT.der", required = true)]
        certificates: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
    /// Entries and exits of one site and local day, per hour, gate and category.
    Flow {
        #[arg(long)]
        site: String,
        /// The local day, YYYY-MM-DD.
        #[arg(long)]
        day: String,
        /// Also draw the day's curve into this SVG file.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::CheckConfig => match config::load(&cli.config) {
            Ok(_) => {
                println!("{}: configuration is valid", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Keygen { file } => match keys::generate(&file) {
            Ok(key) => {
                println!("wrote a new signing key to {} (mode 0600)", file.display());
                println!("give gated this line in [platform] signing_keys:");
                println!("{}", keys::public_line(&key));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gate-platform: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        command => {
            let config = match config::load(&cli.config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("gate-platform: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(command, config, &cli.config))
        }
    }
}

async fn run(command: Command, config: PlatformConfig, config_path: &std::path::Path) -> ExitCode {
    let pool = match db::pool(&config.postgres) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("gate-platform: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let result: Result<(), String> = match command {
        Command::Migrate => db::migrate(&pool)
            .await
            .map(|(from, to)| println!("schema version {from} -> {to}"))
            .map_err(|e| e.to_string()),
        Command::Simulate { gates, replicas, rate, duration_s, burst, real_sites } => {
            let options = simulate::Options {
                platform_bin: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("gate-platform")),
                config_path: config_path.to_path_buf(),
                gates,
                replicas: replicas.max(1),
                rate,
                duration: std::time::Duration::from_secs(duration_s.max(1)),
                burst,
                extra_sites: real_sites,
            };
            simulate::run(&config, &pool, &options).await.map(|report| report.print(&options))
        }
        Command::Ingest { replica, group } => {
            let mut config = config;
            if let Some(group) = group {
                config.ingest.group = group;
            }
            let shutdown = CancellationToken::new();
            let signals = shutdown.clone();
            tokio::spawn(async move {
                let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                tracing::info!("stopping");
                signals.cancel();
            });
            let stats = Arc::new(ingest::IngestStats::default());
            let r = ingest::run_ingest(&config, pool, replica.as_deref(), stats.clone(), shutdown).await;
            tracing::info!(?stats, "ingest stopped");
            r.map_err(|e| e.to_string())
        }
        Command::SweepGaps => match db::migrate(&pool).await {
            // What the writers committed is applied first, as a replica's
            // progress round would (waiting for no replica's round).
            Ok(_) => match progress::apply_round(&pool, ingest::now_ms()).await {
                Ok(_) => ingest::sweep_once(&pool, config.ingest.gap_timeout, &config.routes, ingest::now_ms())
                    .await
                    .map(|n| println!("{n} gap(s) opened"))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        },
        Command::Fleet { json } => {
            fleet::print(&pool, &config.routes, json, ingest::now_ms()).await.map_err(|e| e.to_string())
        }
        Command::Report { report: ReportCommand::Flow { site, day, svg } } => {
            report::flow(&pool, &site, &day, svg.as_deref()).await.map_err(|e| e.to_string())
        }
        Command::Identity { identity: IdentityCommand::Import { site, hmac_key_file, utc_offset, file } } => {
            identity_import(&pool, &site, &hmac_key_file, &utc_offset, &file).await
        }
        Command::Identity { identity: IdentityCommand::Publish { site, snapshot } } => {
            let Some(signer) = signer(&config) else { return ExitCode::from(EXIT_CONFIG) };
            let d = downlink::Downlink { pool: &pool, signer: &signer, config: &config };
            match db::migrate(&pool).await {
                Err(e) => Err(e.to_string()),
                Ok(_) => downlink::identity_publish(&d, &site, snapshot, ingest::now_ms()).await.map(|p| match p {
                    downlink::Published::Snapshot { version, people, chunks } => {
                        println!("site {site}: snapshot of version {version} sent ({people} people, {chunks} chunk(s))")
                    }
                    downlink::Published::Delta { from, to, upserts, deletes } => {
                        println!("site {site}: delta {from} -> {to} sent ({upserts} upsert(s), {deletes} delete(s))")
                    }
                    downlink::Published::NothingNew { version } => {
                        println!("site {site}: version {version} is already published; nothing sent")
                    }
                }),
            }
        }
        Command::Mode { mode: ModeCommand::Set { site, mode, reason, at } } => {
            let Some(wire) = downlink::parse_mode(&mode) else {
                eprintln!("gate-platform: mode must be normal, sporadic or wartime, found {mode:?}");
                return ExitCode::from(EXIT_USAGE);
            };
            let now = ingest::now_ms();
            let at = match at.as_deref().map(downlink::parse_time).transpose() {
                Ok(at) => at.unwrap_or(now),
                Err(e) => {
                    eprintln!("gate-platform: --at: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            if reason.trim().is_empty() || reason.chars().count() > 200 {
                eprintln!("gate-platform: --reason must be 1 to 200 characters");
                return ExitCode::from(EXIT_USAGE);
            }
            let Some(signer) = signer(&config) else { return ExitCode::from(EXIT_CONFIG) };
            let d = downlink::Downlink { pool: &pool, signer: &signer, config: &config };
            match db::migrate(&pool).await {
                Err(e) => Err(e.to_string()),
                Ok(_) => downlink::mode_set(&d, &site, wire, &reason, at, now)
                    .await
                    .map(|counter| println!("site {site}: mode {mode} sent (counter {counter})")),
            }
        }
        Command::Trust { trust: TrustCommand::Publish { site, version, certificates } } => {
            let mut ders = Vec::new();
            for path in &certificates {
                match std::fs::read(path) {
                    Ok(der) => ders.push(der),
                    Err(e) => {
                        eprintln!("gate-platform: {}: {e}", path.display());
                        return ExitCode::from(EXIT_USAGE);
                    }
                }
            }
            let Some(signer) = signer(&config) else { return ExitCode::from(EXIT_CONFIG) };
            let d = downlink::Downlink { pool: &pool, signer: &signer, config: &config };
            match db::migrate(&pool).await {
                Err(e) => Err(e.to_string()),
                Ok(_) => downlink::trust_publish(&d, &site, version, ders, ingest::now_ms())
                    .await
                    .map(|counter| println!("site {site}: trust list version {version} sent (counter {counter})")),
            }
        }
        Command::Keys { keys: KeysCommand::Rotate { site, keys, key_files, keep_current, note } } => {
            let Some(signer) = signer(&config) else { return ExitCode::from(EXIT_CONFIG) };
            let mut trusted = Vec::new();
            for spec in &keys {
                match gate_envelope::parse_key_spec(spec) {
                    Ok(key) => trusted.push(key),
                    Err(e) => {
                        eprintln!("gate-platform: --key {spec:?}: {e}");
                        return ExitCode::from(EXIT_USAGE);
                    }
                }
            }
            for file in &key_files {
                match gate_envelope::Signer::from_file(file) {
                    Ok(key) => trusted.push(key.key_spec()),
                    Err(e) => {
                        eprintln!("gate-platform: --key-file: {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                }
            }
            if keep_current {
                trusted.push(signer.key_spec());
            }
            trusted.sort_by_key(|k| k.to_spec_string());
            trusted.dedup_by(|a, b| a.to_spec_string() == b.to_spec_string());
            if trusted.is_empty() {
                eprintln!("gate-platform: name the keys to trust: --key, --key-file or --keep-current");
                return ExitCode::from(EXIT_USAGE);
            }
            let d = downlink::Downlink { pool: &pool, signer: &signer, config: &config };
            let ids: Vec<String> = trusted.iter().map(|k| k.key_id.clone()).collect();
            match db::migrate(&pool).await {
                Err(e) => Err(e.to_string()),
                Ok(_) => downlink::keys_rotate(&d, &site, &trusted, &note, ingest::now_ms()).await.map(|counter| {
                    println!("site {site}: key rotation to {} sent (counter {counter})", ids.join(", "))
                }),
            }
        }
        Command::Reset { site, identity, health, counters, note } => {
            if !(identity || health || counters) {
                eprintln!("gate-platform: name what to reset: --identity, --health, --counters");
                return ExitCode::from(EXIT_USAGE);
            }
            let Some(signer) = signer(&config) else { return ExitCode::from(EXIT_CONFIG) };
            let d = downlink::Downlink { pool: &pool, signer: &signer, config: &config };
            let reset = gate_proto::v1::SiteReset { identity, health, counters, note };
            match db::migrate(&pool).await {
                Err(e) => Err(e.to_string()),
                Ok(_) => downlink::site_reset(&d, &site, &reset, ingest::now_ms())
                    .await
                    .map(|counter| println!("site {site}: reset sent (counter {counter})")),
            }
        }
        Command::Health { health: HealthCommand::Publish { site, file } } => {
            let records = match std::fs::read_to_string(&file)
                .map_err(|e| vec![format!("{}: {e}", file.display())])
                .and_then(|text| health::parse_records(&file, &text))
            {
                Ok(records) => records,
                Err(errors) => {
                    eprintln!("gate-platform: nothing sent:\n{}", errors.join("\n"));
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let Some(signer) = signer(&config) else { return ExitCode::from(EXIT_CONFIG) };
            let d = downlink::Downlink { pool: &pool, signer: &signer, config: &config };
            let count = records.len();
            match db::migrate(&pool).await {
                Err(e) => Err(e.to_string()),
                Ok(_) => health::publish_batch(&d, &site, records, ingest::now_ms())
                    .await
                    .map(|(from, to)| println!("site {site}: health batch {from} -> {to} sent ({count} record(s))")),
            }
        }
        Command::CheckConfig | Command::Keygen { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gate-platform: {e}");
            if e.starts_with("bad request:") { ExitCode::from(EXIT_USAGE) } else { ExitCode::from(EXIT_UNAVAILABLE) }
        }
    }
}

/// The signing key of `[signing] key_file`, or why not (printed).
fn signer(config: &PlatformConfig) -> Option<gate_envelope::Signer> {
    let Some(signing) = &config.signing else {
        eprintln!("gate-platform: this command signs what it sends: set [signing] key_file");
        return None;
    };
    match gate_envelope::Signer::from_file(&signing.key_file) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("gate-platform: {e}");
            None
        }
    }
}

async fn identity_import(
    pool: &deadpool_postgres::Pool,
    site: &str,
    key_file: &std::path::Path,
    utc_offset: &str,
    file: &std::path::Path,
) -> Result<(), String> {
    let offset = gate_core::UtcOffset::parse(utc_offset)
        .map_err(|e| format!("bad request: --utc-offset {utc_offset:?}: {e}"))?;
    let key = gate_config::load_site_key(key_file).map_err(|e| format!("bad request: {e}"))?;
    let bytes = std::fs::read(file).map_err(|e| format!("bad request: {}: {e}", file.display()))?;
    let decoded = gate_config::people_csv::decode(file, &bytes, None).map_err(|e| format!("bad request: {e}"))?;
    if let Some(note) = &decoded.note {
        eprintln!("{note}");
    }
    let people: Vec<_> = gate_config::people_csv::parse_people(file, &decoded.text, &key, offset)
        .map_err(|errors| format!("bad request: nothing imported:\n{}", errors.join("\n")))?
        .iter()
        .map(identity::person_of)
        .collect();
    db::migrate(pool).await.map_err(|e| e.to_string())?;
    let s = identity::import(pool, site, &people).await.map_err(|e| e.to_string())?;
    println!(
        "site {site}: {} new, {} changed, {} unchanged; identity version {} (published: {})",
        s.added, s.changed, s.unchanged, s.version, s.published
    );
    Ok(())
}
