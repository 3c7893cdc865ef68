//! Command-line subcommands; each lives in its own file and calls into the library.

mod check;
mod serve;
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
    /// Run the daemon: VMs, schedules, runs, recorder, API and dashboard.
    Serve {
        #[arg(long, short, env = "PADDOCK_CONFIG", default_value = "fleet.toml")]
        config: PathBuf,
        /// Listen here instead of `daemon.listen` (e.g. 127.0.0.1:0).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Trigger every job once at start.
        #[arg(long)]
        demo: bool,
    },
    /// Run the result recorder standalone (REST + pony-build XML-RPC + web pages).
    Recorder(recorder::RecorderArgs),
}

pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PADDOCK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Check { config } => check::run(&config),
        Command::Serve { config, listen, demo } => serve::run(&config, listen, demo),
        Command::Recorder(args) => recorder::run(args),
    }
}
