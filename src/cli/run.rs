//! `paddock run JOB [--image I] [--follow]`: start a job; with `--follow`, show
//! each run's states and live output and exit with the runs' success.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use paddock::api::wire::{TriggerIn, TriggerOut};

use super::client::{Client, Follow, Remote, block_on, print_json, tty};

pub fn run(remote: &Remote, job: &str, image: Option<&str>, follow: bool) -> Result<ExitCode> {
    block_on(async {
        let c = Client::new(remote)?;
        let body = TriggerIn { job: job.into(), image: image.map(str::to_string) };
        let out: TriggerOut = c.post("/api/v1/runs", Some(&body)).await?;
        if remote.json && !follow {
            print_json(&out)?;
            return Ok(ExitCode::SUCCESS);
        }
        for id in &out.runs {
            eprintln!("started {id}");
        }
        if !follow {
            for id in &out.runs {
                outln!("{id}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        let mut all_ok = true;
        for id in &out.runs {
            let end = follow_one(&c, id).await?;
            all_ok &= end.outcome.as_deref() == Some("success");
        }
        Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}

/// Streams one run: states to stderr (bold on a terminal, plain lines
/// otherwise), output to stdout. Returns the run's final state.
pub async fn follow_one(c: &Client, id: &str) -> Result<paddock::api::wire::FollowState> {
    let colour = tty();
    let state_line = |label: &str| {
        if colour {
            eprintln!("\x1b[1;34m==> {id}: {label}\x1b[0m");
        } else {
            eprintln!("{id}: {label}");
        }
    };
    let end = c
        .follow(id, |ev| match ev {
            Follow::State(s) => state_line(&s.state_label),
            Follow::Log(text) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            Follow::End => {}
        })
        .await?;
    let outcome = end.outcome.clone().unwrap_or_else(|| end.state.clone());
    let reason = end.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    state_line(&format!("finished, {outcome}{reason}"));
    Ok(end)
}
