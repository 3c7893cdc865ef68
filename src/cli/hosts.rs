//! `paddock hosts`: health and capacity per hypervisor.

use std::process::ExitCode;

use anyhow::Result;
use paddock::api::wire::HostOut;

use super::client::{Client, Remote, block_on, print_json, table};

pub fn run(remote: &Remote) -> Result<ExitCode> {
    block_on(async {
        let hosts: Vec<HostOut> = Client::new(remote)?.get("/api/v1/hosts").await?;
        if remote.json {
            print_json(&hosts)?;
            return Ok(ExitCode::SUCCESS);
        }
        let rows: Vec<Vec<String>> = hosts
            .iter()
            .map(|h| {
                vec![
                    h.name.clone(),
                    match h.up {
                        Some(true) => "up".into(),
                        Some(false) => "DOWN".into(),
                        None => "?".into(),
                    },
                    h.accelerator.clone(),
                    format!("{}/{}", h.used.vms, h.capacity.vms),
                    format!("{}/{}", h.used.memory_mib, h.capacity.memory_mib),
                    format!("{}/{}", h.used.vcpus, h.capacity.vcpus),
                    h.uri.clone(),
                    h.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table(&["host", "health", "accel", "vms", "mem MiB", "vcpus", "uri", "error"], &rows);
        Ok(ExitCode::SUCCESS)
    })
}
