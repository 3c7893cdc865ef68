//! `paddock recorder`: run the recorder standalone on its own database until SIGTERM or ctrl-c.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use paddock::recorder::{self, Recorder, RecorderConfig, SubmitToken};

#[derive(Debug, clap::Args)]
pub struct RecorderArgs {
    /// Address to listen on; port 0 picks a free port. The bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The recorder's SQLite database (created if absent).
    #[arg(long)]
    db: PathBuf,
    /// A submitter allowed to post results, as NAME=SECRET. Repeatable; at least one (here or
    /// in --token-file) is needed: there is no anonymous submission.
    #[arg(long = "token", value_parser = parse_token, required_unless_present = "token_file")]
    tokens: Vec<SubmitToken>,
    /// A file of submitters, one NAME=SECRET a line (`#` comments); keeps secrets out of
    /// the process list. The systemd unit passes its `LoadCredential=` copy.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Reads need a token too (Bearer, `?token=`, or `/xmlrpc/<token>`).
    #[arg(long)]
    private_reads: bool,
    /// Seconds after which a platform's last result is stale (check_should_build says yes).
    #[arg(long, default_value_t = 86_400)]
    stale_after_secs: u64,
    /// Seconds of silence after which a platform is listed as missing.
    #[arg(long, default_value_t = 172_800)]
    missing_after_secs: u64,
    /// Seconds a client has to send a request's headers (and an idle connection stays open).
    #[arg(long, default_value_t = 15)]
    header_timeout_secs: u64,
    /// Seconds a client has to send a request's body after its headers (408 past it).
    #[arg(long, default_value_t = 60)]
    request_timeout_secs: u64,
    /// Connections served at once; one more gets 503 and is closed.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    #[command(flatten)]
    retention: RetentionArgs,
    #[command(flatten)]
    caps: CapArgs,
}

/// How long results are kept, as `[retention]` in fleet.toml says it for the embedded recorder.
/// Without any of `--keep-last`, `--max-age`, `--failure-max-age` everything is kept forever.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Retention (fleet.toml's [retention])")]
pub struct RetentionArgs {
    /// Each platform's newest N results are always kept (default 10 once retention is on).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_last: Option<u32>,
    /// Older passes go once older than this (e.g. 30d); without it, on count alone.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    max_age: Option<Duration>,
    /// Older failures go once older than this (at least --max-age; default --max-age).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    failure_max_age: Option<Duration>,
    /// How often the retention pass runs.
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "1h")]
    retention_every: Duration,
}

/// What one client may make the recorder keep, as `[limits]` in fleet.toml says it.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Caps (fleet.toml's [limits])")]
pub struct CapArgs {
    /// Largest submission body, either protocol (413 / a fault past it).
    #[arg(long, value_name = "SIZE", value_parser = size, default_value = "16MiB")]
    result_body: u64,
    /// Most steps one result may have.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    result_steps: u32,
    /// Most tags one result's client_info may have.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    result_tags: u32,
    /// Largest file one upload may attach.
    #[arg(long, value_name = "SIZE", value_parser = size, default_value = "16MiB")]
    file_size: u64,
    /// Most bytes of files one result may have, all uploads together.
    #[arg(long, value_name = "SIZE", value_parser = size, default_value = "64MiB")]
    result_files: u64,
    /// How long after its result an upload with the result's auth_key is accepted.
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "1d")]
    upload_window: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    paddock::config::duration::parse(s)
}

fn size(s: &str) -> Result<u64, String> {
    paddock::config::size::parse(s)
}

impl RetentionArgs {
    /// The policy these flags give; `None` when none of them asks for one.
    fn policy(&self) -> anyhow::Result<Option<recorder::Retention>> {
        if self.keep_last.is_none() && self.max_age.is_none() && self.failure_max_age.is_none() {
            return Ok(None);
        }
        if let (Some(pass), Some(fail)) = (self.max_age, self.failure_max_age) {
            anyhow::ensure!(
                fail >= pass,
                "--failure-max-age {} is shorter than --max-age {}: failures are kept at least as long as passes",
                paddock::config::duration::format(fail),
                paddock::config::duration::format(pass)
            );
        }
        Ok(Some(recorder::Retention {
            keep_last: self.keep_last.unwrap_or(10),
            max_age: self.max_age,
            failure_max_age: self.failure_max_age,
            every: self.retention_every,
        }))
    }
}

fn parse_token(s: &str) -> Result<SubmitToken, String> {
    match s.split_once('=') {
        Some((name, secret)) if !name.is_empty() && !secret.is_empty() => {
            Ok(SubmitToken { name: name.to_owned(), secret: secret.to_owned() })
        }
        _ => Err("expected NAME=SECRET".to_owned()),
    }
}

pub fn run(args: RecorderArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

/// Reads `NAME=SECRET` lines; a bad line is named by its number, never shown.
fn read_token_file(path: &std::path::Path) -> anyhow::Result<Vec<SubmitToken>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let t = parse_token(line).map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?;
        tokens.push(t);
    }
    Ok(tokens)
}

async fn serve(mut args: RecorderArgs) -> anyhow::Result<()> {
    if let Some(file) = &args.token_file {
        args.tokens.extend(read_token_file(file)?);
    }
    anyhow::ensure!(
        !args.tokens.is_empty(),
        "no submitter: give --token NAME=SECRET or a --token-file with at least one (there is no anonymous submission)"
    );
    let retention = args.retention.policy()?;
    let caps = &args.caps;
    let config = RecorderConfig {
        tokens: args.tokens,
        private_reads: args.private_reads,
        stale_after: Duration::from_secs(args.stale_after_secs),
        missing_after: Duration::from_secs(args.missing_after_secs),
        body_limit: usize::try_from(caps.result_body).unwrap_or(usize::MAX),
        max_steps: caps.result_steps as usize,
        max_tags: caps.result_tags as usize,
        file_limit: usize::try_from(caps.file_size).unwrap_or(usize::MAX),
        result_files_limit: caps.result_files,
        upload_window: caps.upload_window,
        retention,
        ..RecorderConfig::default()
    };
    let rec = Recorder::open(&args.db, config).await?;
    let (stop_retention, stopped) = tokio::sync::watch::channel(false);
    let retention_task = rec.spawn_retention(stopped);
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // Tests and scripts read this line to learn the port.
    println!("listening on {addr}");
    std::io::stdout().flush().ok();
    tracing::info!(%addr, db = %args.db.display(), "recorder listening");
    let limits = paddock::listener::ListenerConfig {
        header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
        request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
    };
    paddock::listener::serve(listener, recorder::router(rec), limits, shutdown_signal()).await.context("serving HTTP")?;
    stop_retention.send(true).ok();
    if let Some(task) = retention_task {
        task.await.ok();
    }
    tracing::info!("recorder stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
