//! Command-line subcommands; each lives in its own file and calls into the library.

/// `println!` for command output: a closed stdout (`paddock runs | head -1`)
/// ends the command quietly, as it does for other Unix tools, instead of panicking.
macro_rules! outln {
    () => {
        $crate::cli::out_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::out_line(format_args!($($arg)*))
    };
}

mod access;
mod cancel;
mod check;
mod client;
mod generate;
mod host;
mod hosts;
mod jobs;
mod logs;
mod outbox;
mod recorder;
mod results;
mod run;
mod runs;
mod runs_show;
mod serve;
mod status;
mod templates;
mod token;
mod vms;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "paddock",
    version,
    about = "VM-fleet orchestrator for CI labs",
    long_about = "VM-fleet orchestrator for CI labs: `paddock serve` boots disposable libvirt guests, runs jobs in them \
                  over SSH and records the results; the other subcommands talk to a running daemon. The configuration \
                  is fleet.toml (/etc/paddock/fleet.toml when installed from the Debian package), described key by key \
                  in /usr/share/doc/paddock/fleet.toml.md."
)]
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
    /// The fleet in one screen (from the daemon's API).
    Status(client::Remote),
    /// Hypervisor hosts: health and capacity.
    Hosts(client::Remote),
    /// One host: onboarding check, drain, resume.
    Host {
        #[command(subcommand)]
        command: host::HostCommand,
    },
    /// VMs paddock made: state, host, run, port, age.
    Vms(client::Remote),
    /// Warm-start templates: image, host, key, state (building/ready/stale), size, clones.
    Templates(client::Remote),
    /// Jobs: schedule, next fire, last result per image.
    Jobs(client::Remote),
    /// Runs, newest first; `runs show RUN` shows one in full.
    Runs {
        #[command(flatten)]
        remote: client::Remote,
        #[command(flatten)]
        filters: runs::Filters,
        #[command(subcommand)]
        command: Option<runs_show::RunsCommand>,
    },
    /// Start a job (all its images, or one); `--follow` streams it and exits with its success.
    Run {
        #[command(flatten)]
        remote: client::Remote,
        job: String,
        #[arg(long)]
        image: Option<String>,
        #[arg(long, short)]
        follow: bool,
    },
    /// A run's log; `-f` follows it live until the run ends.
    Logs {
        #[command(flatten)]
        remote: client::Remote,
        run: String,
        #[arg(long, short)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
    },
    /// Cancel a queued, running or held run.
    Cancel {
        #[command(flatten)]
        remote: client::Remote,
        run: String,
    },
    /// Results waiting to reach their recorders.
    Outbox(client::Remote),
    /// Results the recorder holds: packages, or one package's platforms (failures first).
    Results(results::ResultsArgs),
    /// SSH access for named users: request, approve, extend, revoke.
    Access {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        command: access::AccessCommand,
    },
    /// The audit trail, newest first.
    Audit {
        #[command(flatten)]
        remote: client::Remote,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// API tokens, on the daemon's store file.
    Token {
        #[arg(long, short, env = "PADDOCK_CONFIG", default_value = "fleet.toml", global = true)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: token::TokenCommand,
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
    /// Print shell completions (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (paddock.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PADDOCK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).init();
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Check { config } => check::run(&config),
        Command::Status(r) => status::run(&r),
        Command::Hosts(r) => hosts::run(&r),
        Command::Host { command } => host::run(&command),
        Command::Vms(r) => vms::run(&r),
        Command::Templates(r) => templates::run(&r),
        Command::Jobs(r) => jobs::run(&r),
        Command::Runs { remote, filters, command: None } => runs::run(&remote, &filters),
        Command::Runs { remote, filters, command: Some(c) } => runs_show::run(&remote, &filters, &c),
        Command::Run { remote, job, image, follow } => run::run(&remote, &job, image.as_deref(), follow),
        Command::Logs { remote, run, follow, tail } => logs::run(&remote, &run, follow, tail),
        Command::Cancel { remote, run } => cancel::run(&remote, &run),
        Command::Outbox(r) => outbox::run(&r),
        Command::Results(a) => results::run(&a),
        Command::Access { remote, command } => access::run(&remote, &command),
        Command::Audit { remote, limit } => access::audit(&remote, limit),
        Command::Token { config, json, command } => token::run(&config, &command, json),
        Command::Serve { config, listen, demo } => serve::run(&config, listen, demo),
        Command::Recorder(args) => recorder::run(args),
        Command::Completions { shell } => generate::completions(shell),
        Command::Man { dir } => generate::man(&dir),
    }
}

/// Writes one line of command output. Once stdout is closed nobody reads the
/// rest: the command ends with success. Any other write error is reported and
/// the command fails.
pub(crate) fn out_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }
}
