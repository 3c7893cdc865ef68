//! `paddock status`: the fleet in one screen.

use std::process::ExitCode;

use anyhow::Result;
use paddock::api::wire::StatusOut;

use super::client::{Client, Remote, block_on, print_json};

pub fn run(remote: &Remote) -> Result<ExitCode> {
    block_on(async {
        let s: StatusOut = Client::new(remote)?.get("/api/v1/status").await?;
        if remote.json {
            print_json(&s)?;
        } else {
            outln!("paddock {} up {}s", s.version, s.uptime_s);
            outln!("hosts   {}/{} up", s.hosts_up, s.hosts);
            outln!("vms     {}", s.vms);
            outln!("runs    {} running, {} queued, {} held", s.runs_in_flight, s.runs_queued, s.runs_held);
            outln!("outbox  {} to forward", s.outbox_pending);
        }
        Ok(ExitCode::SUCCESS)
    })
}
