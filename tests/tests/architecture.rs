//! ARCHITECTURE.md's dependency table against the crates' `Cargo.toml`: each
//! crate's workspace dependencies must be exactly the ones the table lists,
//! so the map stays true when a dependency is added or dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_owned()
}

/// Short name (`app`, `hw-sim`) of each workspace crate and its manifest.
fn manifests() -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("crates")).expect("crates/") {
        let dir = entry.expect("an entry").path();
        if dir.join("Cargo.toml").exists() {
            let name = dir.file_name().expect("a name").to_string_lossy().into_owned();
            found.insert(name, dir.join("Cargo.toml"));
        }
    }
    found.insert("hw-sim".to_owned(), root().join("hw-sim/Cargo.toml"));
    found
}

/// The workspace crates under `[dependencies]` (not dev or build), by
/// short name: `gate-store` is `store`, `hw-sim` stays.
fn workspace_deps(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).expect("read a manifest");
    let mut in_deps = false;
    let mut deps = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        let Some(name) = line.split(['=', '.', ' ']).next().filter(|_| in_deps) else { continue };
        if let Some(short) = name.strip_prefix("gate-") {
            deps.insert(short.to_owned());
        } else if name == "hw-sim" {
            deps.insert(name.to_owned());
        }
    }
    deps
}

/// The table's rows: `| \`crate\` | \`a\`, \`b\` |` ("—" for none).
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let start = text.find("| crate | depends on |").expect("the dependency table");
    let mut rows = BTreeMap::new();
    for line in text[start..].lines().skip(2) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() != 4 {
            break;
        }
        let name = cells[1].trim_matches('`').to_owned();
        let deps = cells[2].split(',').map(|d| d.trim().trim_matches('`').to_owned()).filter(|d| d != "—").collect();
        rows.insert(name, deps);
    }
    rows
}

#[test]
fn the_dependency_table_matches_every_manifest() {
    let table = documented();
    let manifests = manifests();
    let crates: BTreeSet<&String> = manifests.keys().collect();
    let rows: BTreeSet<&String> = table.keys().collect();
    assert_eq!(rows, crates, "ARCHITECTURE.md's table must list every workspace crate except the tests");
    for (name, manifest) in &manifests {
        assert_eq!(table[name], workspace_deps(manifest), "ARCHITECTURE.md's row for `{name}` against its Cargo.toml");
    }
}
