//! `paddock cancel RUN`: stop a queued, running or held run.

use std::process::ExitCode;

use anyhow::Result;
use paddock::api::wire::CancelOut;

use super::client::{Client, Remote, block_on, print_json};

pub fn run(remote: &Remote, id: &str) -> Result<ExitCode> {
    block_on(async {
        let out: CancelOut = Client::new(remote)?.post::<_, ()>(&format!("/api/v1/runs/{id}/cancel"), None).await?;
        if remote.json {
            print_json(&out)?;
        } else {
            outln!("cancel requested for {}", out.run);
        }
        Ok(ExitCode::SUCCESS)
    })
}
