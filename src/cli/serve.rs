//! `paddock serve`: run the daemon until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use paddock::daemon::{Daemon, ServeOptions};

pub fn run(config: &Path, listen: Option<SocketAddr>, demo: bool) -> anyhow::Result<ExitCode> {
    let fleet = paddock::config::load(config)?;
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async {
        let daemon = Daemon::start(fleet, ServeOptions { listen, demo }).await?;
        // Tests read this line to find the port.
        println!("paddock listening on http://{}", daemon.addr);
        wait_for_signal().await;
        tracing::info!("shutting down");
        daemon.stop().await?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
