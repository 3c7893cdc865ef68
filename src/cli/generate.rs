//! `paddock completions SHELL` and `paddock man DIR`: shell completions and man
//! pages generated from the CLI definition itself, so they cannot fall behind it.
//! The Debian package installs both (`scripts/build-deb.sh`).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use super::Args;

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    // Into a buffer first: clap_complete panics on a write error (a closed pipe).
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "paddock", &mut buf);
    std::io::stdout().write_all(&buf).context("writing the completions to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `paddock.1` and one `paddock-SUBCOMMAND.1` per visible subcommand into `dir`.
pub fn man(dir: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Args::command(), dir).with_context(|| format!("writing man pages into {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
