//! `paddock serve`: run the daemon until SIGTERM or Ctrl-C; SIGHUP re-reads `fleet.toml`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use paddock::config::LoadError;
use paddock::daemon::{Daemon, ReloadError, ServeOptions};
use tokio::signal::unix::{SignalKind, signal};

pub fn run(config: &Path, listen: Option<SocketAddr>, demo: bool) -> anyhow::Result<ExitCode> {
    let fleet = paddock::config::load(config)?;
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async {
        // Installed before the daemon starts, so an early SIGHUP (a reload sent
        // by systemd right after start) does not kill the process.
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut daemon = Daemon::start(fleet, ServeOptions { listen, demo }).await?;
        // Tests read this line to find the port.
        println!("paddock listening on http://{}", daemon.addr);
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => reload(&mut daemon).await,
            }
        }
        tracing::info!("shutting down");
        daemon.stop().await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// One reload, logged: what changed, or every located error and that the
/// running configuration stays.
async fn reload(daemon: &mut Daemon) {
    let source = daemon.fleet().source.display().to_string();
    tracing::info!(file = %source, "SIGHUP: re-reading the fleet file");
    match daemon.reload().await {
        Ok(r) => tracing::info!(
            file = %source,
            added = ?r.jobs.added,
            removed = ?r.jobs.removed,
            changed = ?r.jobs.changed,
            scheduled = ?r.scheduled,
            "fleet file reloaded; runs under way keep the jobs they started with"
        ),
        Err(ReloadError::Invalid(LoadError::Invalid(errors))) => {
            for e in &errors {
                tracing::error!("{e}");
            }
            tracing::error!(file = %source, errors = errors.len(), "fleet file not reloaded: keeping the running configuration");
        }
        Err(e @ ReloadError::Schedule { .. }) => {
            tracing::error!(file = %source, error = %paddock::error::chain(&e), "fleet file reloaded, but not wholly");
        }
        Err(e) => {
            tracing::error!(file = %source, error = %paddock::error::chain(&e), "fleet file not reloaded: keeping the running configuration");
        }
    }
}
