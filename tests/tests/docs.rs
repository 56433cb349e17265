//! The documentation holds together: every relative link and every file a
//! document names in backticks exists in the repository, and no file of the
//! repository (docs, code, config, scripts) cites a `*.md` document that is
//! not in it.
//!
//! Plain string scanning, no Markdown parser: the docs are written so that a
//! path is always either a link target or a backticked span.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every file of the repository with one of `exts`, outside build output
/// and version control.
fn files(exts: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "node_modules") {
                    walk(&path, exts, out);
                }
            } else if exts.iter().any(|e| name.ends_with(e)) || (exts.contains(&"") && !name.contains('.')) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), exts, &mut out);
    out.sort();
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

/// Link targets of `[text](target)` in a Markdown text.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].trim().to_owned());
        }
    }
    out
}

/// The contents of single-backtick spans (code blocks are skipped: they hold
/// commands whose arguments are examples, such as `/tmp/idcard`).
fn backticked(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            continue;
        }
        let parts: Vec<&str> = line.split('`').collect();
        for (i, part) in parts.iter().enumerate() {
            if i % 2 == 1 && i + 1 < parts.len() {
                out.push((*part).to_owned());
            }
        }
    }
    out
}

/// Whether a backticked span names a file or folder of the repository: a
/// relative path with a known first folder, or a bare name with a known
/// document extension. Absolute paths, templates and globs are examples.
fn names_a_repo_file(span: &str) -> bool {
    const TOP: [&str; 9] = ["crates/", "hw-sim/", "tests/", "config/", "deploy/", "docs/", "proto/", "bench/", ".ci/"];
    let plain = !span.is_empty()
        && span.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        && !span.starts_with('/');
    plain && (TOP.iter().any(|t| span.starts_with(t)) || ["README.md", "ARCHITECTURE.md"].contains(&span))
}

fn exists_from(doc: &Path, target: &str) -> bool {
    let dir = doc.parent().unwrap_or(Path::new("."));
    dir.join(target).exists() || root().join(target).exists()
}

#[test]
fn every_relative_link_and_named_file_exists() {
    let mut missing = Vec::new();
    let docs = files(&[".md"]);
    assert!(docs.len() >= 5, "found only {docs:?}");
    for doc in &docs {
        let text = std::fs::read_to_string(doc).expect("read doc");
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            if file.is_empty() {
                // An anchor in the same document: its heading must exist.
                let headings: Vec<String> = text
                    .lines()
                    .filter(|l| l.starts_with('#'))
                    .map(|l| {
                        l.trim_start_matches('#')
                            .trim()
                            .to_lowercase()
                            .chars()
                            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-')
                            .map(|c| if c == ' ' { '-' } else { c })
                            .collect()
                    })
                    .collect();
                if !headings.iter().any(|h| h == anchor) {
                    missing.push(format!("{}: no heading for the link #{anchor}", rel(doc)));
                }
                continue;
            }
            if !exists_from(doc, file) {
                missing.push(format!("{}: link to {file}, which does not exist", rel(doc)));
            }
        }
        for span in backticked(&text) {
            let path = span.trim_end_matches('/');
            if names_a_repo_file(&span) && !exists_from(doc, path) {
                missing.push(format!("{}: names `{span}`, which does not exist", rel(doc)));
            }
        }
    }
    assert!(missing.is_empty(), "broken references in the docs:\n{}", missing.join("\n"));
}

#[test]
fn no_file_cites_a_document_outside_the_repository() {
    let present: Vec<String> =
        files(&[".md"]).iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
    let mut cited_elsewhere = Vec::new();
    for file in files(&[".md", ".rs", ".toml", ".sh", ".proto", ".service", ".rules", ".conf", ""]) {
        // This file names made-up documents to test its own scanners.
        if file.ends_with("tests/tests/docs.rs") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        for (n, line) in text.lines().enumerate() {
            // Every token ending in `.md`, upper- or lower-case.
            for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || "._-/".contains(c))) {
                let Some(name) = word.rsplit('/').next() else { continue };
                if name.len() > 3 && name.ends_with(".md") && !present.iter().any(|p| p == name) {
                    cited_elsewhere.push(format!("{}:{}: {word}", rel(&file), n + 1));
                }
            }
        }
    }
    assert!(cited_elsewhere.is_empty(), "documents cited but not in the repository:\n{}", cited_elsewhere.join("\n"));
}

#[test]
fn the_scanners_find_what_they_look_for() {
    // The helpers above must not pass vacuously.
    assert_eq!(link_targets("see [a](docs/X.md#y) and [b](http://e)"), ["docs/X.md#y", "http://e"]);
    assert_eq!(backticked("a `x/y` b\n```\n`no`\n```\n`z`"), ["x/y", "z"]);
    assert!(names_a_repo_file("config/gated.example.toml"));
    assert!(!names_a_repo_file("/etc/gated/gated.toml"));
    assert!(!names_a_repo_file("{prefix}/{site}/mode"));
    // A path built at run time, so no file of the repository names a missing document.
    let absent = ["docs/", "absent", ".md"].concat();
    assert!(!exists_from(&root().join("README.md"), &absent));
}
