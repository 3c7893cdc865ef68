//! `paddock vms`: every VM paddock made, with its state, host, run, port and pinned host key.

use std::process::ExitCode;

use anyhow::Result;
use paddock::api::wire::VmOut;

use super::client::{Client, Remote, ago, block_on, opt, print_json, table};

pub fn run(remote: &Remote) -> Result<ExitCode> {
    block_on(async {
        let vms: Vec<VmOut> = Client::new(remote)?.get("/api/v1/vms").await?;
        if remote.json {
            print_json(&vms)?;
            return Ok(ExitCode::SUCCESS);
        }
        let rows: Vec<Vec<String>> = vms
            .iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    v.state.clone(),
                    opt(&v.host),
                    v.image.clone(),
                    opt(&v.run_id),
                    v.ssh_port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    ago(v.created_at),
                    opt(&v.host_key_sha256),
                ]
            })
            .collect();
        table(&["vm", "state", "host", "image", "run", "port", "created", "host key"], &rows);
        Ok(ExitCode::SUCCESS)
    })
}
