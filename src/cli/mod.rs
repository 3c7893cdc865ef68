//! Command-line subcommands; each lives in its own file and calls into the library.

mod check;
mod recorder;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "paddock", version, about = "VM-fleet orchestrator for CI labs")]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate fleet.toml and print a summary of hosts, images and jobs.
    Check {
        #[arg(long, short, env = "PADDOCK_CONFIG", default_value = "fleet.toml")]
        config: PathBuf,
    },
    /// Run the result recorder standalone (REST + pony-build XML-RPC + web pages).
    Recorder(recorder::RecorderArgs),
}

pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PADDOCK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Check { config } => check::run(&config),
        Command::Recorder(args) => recorder::run(args),
    }
}
