//! Man pages and shell completions, generated from the clap definitions so they never
//! drift from `--help` (`xhubd man --out-dir DIR`, `xhubd completions SHELL`).

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> String {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "xhubd", &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

/// Writes `xhubd.1` and `xhubd-<subcommand>.1` into `dir`.
pub fn man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let command = Cli::command();
    write_page(dir, "xhubd", command.clone())?;
    for sub in command.get_subcommands() {
        let name = format!("xhubd-{}", sub.get_name());
        write_page(dir, &name, sub.clone().name(name.clone()))?;
    }
    Ok(())
}

fn write_page(dir: &Path, name: &str, command: clap::Command) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut out)
        .context("cannot render the man page")?;
    std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))
}
