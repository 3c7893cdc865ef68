//! `paddock runs`: runs, newest first, with the API's filters.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use paddock::api::wire::RunListOut;

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
    /// Most runs to list [default: 30].
    #[arg(long)]
    limit: Option<usize>,
}

impl Filters {
    /// Whether no filter was given (`runs show` takes none).
    pub fn is_empty(&self) -> bool {
        [&self.job, &self.image, &self.state, &self.since].iter().all(|f| f.is_none()) && self.limit.is_none()
    }
}

pub fn run(remote: &Remote, f: &Filters) -> Result<ExitCode> {
    block_on(async {
        let mut q = vec![format!("limit={}", f.limit.unwrap_or(30))];
        for (k, v) in [("job", &f.job), ("image", &f.image), ("state", &f.state), ("since", &f.since)] {
            if let Some(v) = v {
                q.push(format!("{k}={}", encode(v)));
            }
        }
        let runs: Vec<RunListOut> = Client::new(remote)?.get(&format!("/api/v1/runs?{}", q.join("&"))).await?;
        if remote.json {
            print_json(&runs)?;
            return Ok(ExitCode::SUCCESS);
        }
        let rows: Vec<Vec<String>> = runs
            .iter()
            .map(|l| {
                let r = &l.run;
                vec![
                    r.id.clone(),
                    r.job.clone(),
                    r.image.clone(),
                    r.state_label.clone(),
                    opt(&r.outcome),
                    r.trigger.clone(),
                    ago(r.created_at),
                    retry_label(l),
                ]
            })
            .collect();
        table(&["run", "job", "image", "state", "outcome", "trigger", "created", "retry"], &rows);
        Ok(ExitCode::SUCCESS)
    })
}

/// A run's retry links as the table shows them: `attempt 2 of 3 (of RUN)` for a retry, `retried
/// as RUN` for a run an infrastructure failure re-ran, both for a retry that was retried again.
fn retry_label(l: &RunListOut) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &l.retry {
        parts.push(format!("attempt {} of {} (of {})", r.attempt, r.attempts, r.retry_of));
    }
    if let Some(by) = &l.retried_by {
        parts.push(format!("retried as {by}"));
    }
    if parts.is_empty() { "-".to_owned() } else { parts.join(", ") }
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
