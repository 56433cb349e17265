//! Manual pages (`clap_mangen`) and bash, zsh and fish completions
//! (`clap_complete`) of `gated`, `gatectl` and `hw-sim`, generated from each
//! tool's clap definition. Each tool's tests call [`check`]: the files in
//! `deploy/man` and `deploy/completions` must equal what its current
//! definition generates (the Debian package installs those files), and
//! every argument must have help text. `GATE_REGENERATE_DOCS=1` rewrites
//! the files instead of comparing.

use clap::Command;
use clap_complete::Shell;
use std::path::Path;

/// One generated file: its path under `deploy/` and its bytes.
#[derive(Debug)]
pub struct Generated {
    pub path: String,
    pub bytes: Vec<u8>,
}

/// A manual page for the tool and one for every subcommand, at any depth
/// (`gatectl-identity-import.1`), as `man gatectl-identity-import` finds it.
pub fn man_pages(cmd: &Command) -> Vec<Generated> {
    let mut cmd = cmd.clone();
    cmd.build();
    let mut out = Vec::new();
    add_pages(&cmd, cmd.get_name(), &mut out);
    out
}

fn add_pages(cmd: &Command, page: &str, out: &mut Vec<Generated>) {
    // clap takes names as `&'static str` without its `string` feature; a
    // few short strings per generation run are leaked rather than rebuilding
    // clap with another feature set for every crate.
    let name: &'static str = Box::leak(page.to_owned().into_boxed_str());
    let named = cmd.clone().name(name).bin_name(page.replace('-', " "));
    let mut bytes = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = clap_mangen::Man::new(named).render(&mut bytes);
    out.push(Generated { path: format!("man/{page}.1"), bytes });
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help" && !s.is_hide_set()) {
        add_pages(sub, &format!("{page}-{}", sub.get_name()), out);
    }
}

/// Completion scripts, named as each shell's vendor folder expects them.
pub fn completions(cmd: &Command) -> Vec<Generated> {
    let name = cmd.get_name().to_owned();
    [
        (Shell::Bash, format!("completions/bash/{name}")),
        (Shell::Zsh, format!("completions/zsh/_{name}")),
        (Shell::Fish, format!("completions/fish/{name}.fish")),
    ]
    .into_iter()
    .map(|(shell, path)| {
        let mut cmd = cmd.clone();
        let mut bytes = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut bytes);
        Generated { path, bytes }
    })
    .collect()
}

/// Every argument (options, flags, positionals) of the tool and its
/// subcommands that has no help text, as `gatectl lookup --json`.
pub fn undocumented(cmd: &Command) -> Vec<String> {
    let mut cmd = cmd.clone();
    cmd.build();
    let mut out = Vec::new();
    walk_args(&cmd, cmd.get_name(), &mut out);
    out
}

fn walk_args(cmd: &Command, path: &str, out: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        let builtin = matches!(arg.get_id().as_str(), "help" | "version");
        if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() && !arg.is_hide_set() {
            let name = arg.get_long().map_or_else(|| format!("<{}>", arg.get_id()), |l| format!("--{l}"));
            out.push(format!("{path} {name}"));
        }
    }
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        if sub.get_about().is_none() && sub.get_long_about().is_none() {
            out.push(format!("{path} {} (the subcommand itself)", sub.get_name()));
        }
        walk_args(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

/// Compares the generated pages and completions with the files under
/// `deploy` (or writes them when `GATE_REGENERATE_DOCS=1`), and checks
/// that every argument has help. Returns every problem found.
pub fn check(cmd: &Command, deploy: &Path) -> Result<(), String> {
    let mut problems: Vec<String> = undocumented(cmd).into_iter().map(|a| format!("{a}: no help text")).collect();
    let regenerate = std::env::var("GATE_REGENERATE_DOCS").is_ok_and(|v| v == "1");
    for file in man_pages(cmd).into_iter().chain(completions(cmd)) {
        let path = deploy.join(&file.path);
        if regenerate {
            let written =
                path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&path, &file.bytes));
            if let Err(e) = written {
                problems.push(format!("{}: {e}", path.display()));
            }
            continue;
        }
        match std::fs::read(&path) {
            Ok(bytes) if bytes == file.bytes => {}
            Ok(_) => problems.push(format!("{} is out of date", path.display())),
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{}\n(after changing a command's arguments: GATE_REGENERATE_DOCS=1 cargo test -p {} and commit deploy/)",
            problems.join("\n"),
            cmd.get_name()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Arg;

    fn tool() -> Command {
        Command::new("tool")
            .about("A tool")
            .subcommand(
                Command::new("run")
                    .about("Runs")
                    .arg(Arg::new("path").help("Where"))
                    .arg(Arg::new("json").long("json")),
            )
            .subcommand(Command::new("quiet"))
    }

    #[test]
    fn finds_arguments_and_subcommands_without_help() {
        assert_eq!(undocumented(&tool()), ["tool run --json", "tool quiet (the subcommand itself)"]);
    }

    #[test]
    fn pages_for_every_subcommand_and_three_shells() {
        let pages: Vec<String> = man_pages(&tool()).into_iter().map(|g| g.path).collect();
        assert_eq!(pages, ["man/tool.1", "man/tool-run.1", "man/tool-quiet.1"]);
        let page = &man_pages(&tool())[1].bytes;
        assert!(String::from_utf8_lossy(page).contains("tool\\-run"), "{}", String::from_utf8_lossy(page));
        let shells: Vec<String> = completions(&tool()).into_iter().map(|g| g.path).collect();
        assert_eq!(shells, ["completions/bash/tool", "completions/zsh/_tool", "completions/fish/tool.fish"]);
        assert!(completions(&tool()).iter().all(|g| !g.bytes.is_empty()));
    }
}
