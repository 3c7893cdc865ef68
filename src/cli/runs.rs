//! `paddock runs`: runs, newest first, with the API's filters.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use paddock::api::wire::RunOut;

use super::client::{Client, Remote, ago, block_on, opt, print_json, table};

#[derive(Debug, Clone, Args)]
pub struct Filters {
    #[arg(long)]
    job: Option<String>,
    #[arg(long)]
    image: Option<String>,
    /// queued, running, held, done, failed, ...
    #[arg(long)]
    state: Option<String>,
    /// RFC 3339 time, e.g. 2026-05-01T00:00:00Z.
    #[arg(long)]
    since: Option<String>,
    #[arg(long, default_value_t = 30)]
    limit: usize,
}

pub fn run(remote: &Remote, f: &Filters) -> Result<ExitCode> {
    block_on(async {
        let mut q = vec![format!("limit={}", f.limit)];
        for (k, v) in [("job", &f.job), ("image", &f.image), ("state", &f.state), ("since", &f.since)] {
            if let Some(v) = v {
                q.push(format!("{k}={}", encode(v)));
            }
        }
        let runs: Vec<RunOut> = Client::new(remote)?.get(&format!("/api/v1/runs?{}", q.join("&"))).await?;
        if remote.json {
            print_json(&runs)?;
            return Ok(ExitCode::SUCCESS);
        }
        let rows: Vec<Vec<String>> = runs
            .iter()
            .map(|r| {
                vec![
                    r.id.clone(),
                    r.job.clone(),
                    r.image.clone(),
                    r.state_label.clone(),
                    opt(&r.outcome),
                    r.trigger.clone(),
                    ago(r.created_at),
                ]
            })
            .collect();
        table(&["run", "job", "image", "state", "outcome", "trigger", "created"], &rows);
        Ok(ExitCode::SUCCESS)
    })
}

/// Percent-encodes a query value (times carry `+` and `:`).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
