//! `paddock recorder`: run the recorder standalone on its own database until SIGTERM or ctrl-c.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
    let config = RecorderConfig {
        tokens: args.tokens,
        private_reads: args.private_reads,
        stale_after: std::time::Duration::from_secs(args.stale_after_secs),
        missing_after: std::time::Duration::from_secs(args.missing_after_secs),
        ..RecorderConfig::default()
    };
    let rec = Recorder::open(&args.db, config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    // Tests and scripts read this line to learn the port.
    println!("listening on {addr}");
    std::io::stdout().flush().ok();
    tracing::info!(%addr, db = %args.db.display(), "recorder listening");
    let limits = paddock::listener::ListenerConfig {
        header_timeout: std::time::Duration::from_secs(args.header_timeout_secs.max(1)),
        request_timeout: std::time::Duration::from_secs(args.request_timeout_secs.max(1)),
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
    };
    paddock::listener::serve(listener, recorder::router(rec), limits, shutdown_signal()).await.context("serving HTTP")?;
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
