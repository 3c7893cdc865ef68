//! `paddock jobs`: jobs, their schedule and next fire, and the last result per image.

use std::process::ExitCode;

use anyhow::Result;
use paddock::api::wire::JobOut;

use super::client::{Client, Remote, block_on, print_json, table};

pub fn run(remote: &Remote) -> Result<ExitCode> {
    block_on(async {
        let jobs: Vec<JobOut> = Client::new(remote)?.get("/api/v1/jobs").await?;
        if remote.json {
            print_json(&jobs)?;
            return Ok(ExitCode::SUCCESS);
        }
        let rows: Vec<Vec<String>> = jobs
            .iter()
            .map(|j| {
                vec![
                    j.name.clone(),
                    j.schedule.as_ref().map(|s| format!("{} {}", s.cron, s.timezone)).unwrap_or_else(|| "on request".into()),
                    j.next_fires.first().map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| "-".into()),
                    j.images
                        .iter()
                        .map(|i| {
                            let o = j.last.iter().find(|l| l.image == *i).map(|l| l.outcome.as_str()).unwrap_or("never");
                            format!("{i}:{o}")
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                ]
            })
            .collect();
        table(&["job", "schedule", "next", "last results"], &rows);
        Ok(ExitCode::SUCCESS)
    })
}
