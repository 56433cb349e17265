//! The parts of the reliability report that are not a test binary of
//! their own (`tests/reliability/run` calls them):
//!
//! - `reliability outage --seconds S --json FILE`: a broker outage under load;
//! - `reliability disk-full --json FILE`: a full disk (needs root);
//! - `reliability privacy --dir DIR --json FILE`: the privacy scan of a
//!   crash-suite run's files;
//! - `reliability report --dir DIR`: every part's JSON into `report.json`
//!   and `report.markdown`.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn write_json(path: Option<String>, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    println!("{text}");
    if let Some(path) = path {
        std::fs::write(path, text)?;
    }
    Ok(())
}

fn main() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match args.first().map(String::as_str) {
        Some("outage") => {
            let seconds: f64 = arg(&args, "--seconds").context("--seconds")?.parse()?;
            let report = runtime.block_on(gate_tests::outage::run(Duration::from_secs_f64(seconds)))?;
            write_json(arg(&args, "--json"), &report)?;
            Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Some("disk-full") => {
            let report = runtime.block_on(gate_tests::diskfull::run(10))?;
            write_json(arg(&args, "--json"), &report)?;
            Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Some("privacy") => {
            let dir = PathBuf::from(arg(&args, "--dir").context("--dir")?);
            let (ids, names) = gate_tests::crash::test_people();
            let report = gate_tests::privacy::scan(&dir, &ids, &names);
            write_json(arg(&args, "--json"), &report)?;
            Ok(if report.hits.is_empty() && report.files > 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Some("report") => {
            let dir = PathBuf::from(arg(&args, "--dir").context("--dir")?);
            report(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!("usage: reliability outage|disk-full|privacy|report ..."),
    }
}

fn read(dir: &Path, name: &str) -> Value {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({ "missing": name }))
}

fn status(dir: &Path, part: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{part}.status")))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "not run".into())
}

fn report(dir: &Path) -> Result<()> {
    let parts = ["crash", "fuzz", "catalogue", "outage", "diskfull", "privacy"];
    let mut all = serde_json::Map::new();
    for part in parts {
        all.insert(
            part.to_owned(),
            json!({ "status": status(dir, part), "result": read(dir, &format!("{part}.json")) }),
        );
    }
    all.insert("settings".into(), read(dir, "settings.json"));
    let all = Value::Object(all);
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&all)?)?;

    let mut md = String::from("# Reliability report\n\n");
    md.push_str(&format!("Settings: `{}`\n\n", all["settings"]));
    md.push_str("| part | status |\n|---|---|\n");
    for part in parts {
        md.push_str(&format!("| {part} | {} |\n", all[part]["status"].as_str().unwrap_or("?")));
    }
    let crash = &all["crash"]["result"];
    md.push_str("\n## Crash suite\n\n");
    md.push_str(&format!(
        "trials {} / lost {} / duplicated seq {} / stray unlocks {} / corrupt {} / failed restarts {}\n\n",
        crash["trials"],
        crash["lost"],
        crash["duplicated_seq"],
        crash["stray_unlocks"],
        crash["corrupt"],
        crash["failed_restarts"]
    ));
    md.push_str(&format!(
        "seed {}, events recorded {} and delivered {}, unlocks {}, single-use pass honoured {} (beyond once {}), \
         identity versions in force after kills {}, mode changes {}, kills {}, {:.0} s\n",
        crash["seed"],
        crash["recorded"],
        crash["events"],
        crash["unlocks"],
        crash["pass_honoured"],
        crash["pass_reuse"],
        crash["identity_versions"],
        crash["mode_changes"],
        crash["kills"],
        crash["seconds"].as_f64().unwrap_or(0.0)
    ));
    md.push_str("\n## Fuzzing\n\n| target | execs | execs/s | seconds | crashes | hangs | classes |\n|---|---|---|---|---|---|---|\n");
    if let Some(targets) = all["fuzz"]["result"].as_array() {
        for t in targets {
            md.push_str(&format!(
                "| {} | {} | {:.0} | {:.1} | {} | {} | {} |\n",
                t["target"].as_str().unwrap_or("?"),
                t["execs"],
                t["execs_per_s"].as_f64().unwrap_or(0.0),
                t["seconds"].as_f64().unwrap_or(0.0),
                t["crashes"],
                t["hangs"],
                t["classes"]
            ));
        }
    }
    md.push_str("\n## Bad-input catalogue\n\n| input | counter moved | gate |\n|---|---|---|\n");
    if let Some(rows) = all["catalogue"]["result"]["rows"].as_array() {
        for r in rows {
            md.push_str(&format!(
                "| {} | {} | {} |\n",
                r["name"].as_str().unwrap_or("?"),
                r["counter"].as_str().unwrap_or("?"),
                r["gate"].as_str().unwrap_or("?")
            ));
        }
    }
    for (title, part) in [("Broker outage under load", "outage"), ("Full disk", "diskfull")] {
        md.push_str(&format!("\n## {title}\n\n| figure | value |\n|---|---|\n"));
        if let Some(figures) = all[part]["result"].as_object() {
            for (name, value) in figures {
                md.push_str(&format!("| {name} | {value} |\n"));
            }
        }
    }
    let privacy = &all["privacy"]["result"];
    md.push_str(&format!(
        "\n## Privacy scan\n\n{} files, {} bytes, {} needles (ID numbers and names, UTF-8, UTF-16LE, UTF-16BE): {} hits\n",
        privacy["files"],
        privacy["bytes"],
        privacy["needles"],
        privacy["hits"].as_array().map_or(0, Vec::len)
    ));
    if let Some(hits) = privacy["hits"].as_array().filter(|h| !h.is_empty()) {
        let mut by_place: std::collections::BTreeMap<(String, String, String), u64> = Default::default();
        for hit in hits {
            let file = hit["file"].as_str().unwrap_or("?");
            let file = file.strip_prefix(&format!("{}/", dir.join("files").display())).unwrap_or(file).to_owned();
            let key = (
                file,
                hit["kind"].as_str().unwrap_or("?").to_owned(),
                hit["encoding"].as_str().unwrap_or("?").to_owned(),
            );
            *by_place.entry(key).or_default() += 1;
        }
        md.push_str("\n| file | kind | encoding | hits |\n|---|---|---|---|\n");
        for ((file, kind, encoding), n) in by_place {
            md.push_str(&format!("| {file} | {kind} | {encoding} | {n} |\n"));
        }
    }
    std::fs::write(dir.join("report.markdown"), md)?;
    println!("wrote {} and {}", dir.join("report.markdown").display(), dir.join("report.json").display());
    Ok(())
}
