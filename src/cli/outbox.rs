//! `paddock outbox`: results still waiting to reach their recorders.

use std::process::ExitCode;

use anyhow::Result;
use paddock::api::wire::OutboxOut;

use super::client::{Client, Remote, ago, block_on, opt, print_json, table};

pub fn run(remote: &Remote) -> Result<ExitCode> {
    block_on(async {
        let entries: Vec<OutboxOut> = Client::new(remote)?.get("/api/v1/outbox").await?;
        if remote.json {
            print_json(&entries)?;
            return Ok(ExitCode::SUCCESS);
        }
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                vec![e.id.to_string(), e.run_id.clone(), e.recorder.clone(), ago(e.created_at), e.attempts.to_string(), opt(&e.last_error)]
            })
            .collect();
        table(&["id", "run", "recorder", "queued", "attempts", "last error"], &rows);
        Ok(ExitCode::SUCCESS)
    })
}
