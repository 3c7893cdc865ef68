//! `paddock logs RUN [-f] [--tail N]`: a run's log, or its live output.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use super::client::{Client, Remote, block_on};

pub fn run(remote: &Remote, id: &str, follow: bool, tail: Option<usize>) -> Result<ExitCode> {
    block_on(async {
        let c = Client::new(remote)?;
        if follow {
            super::run::follow_one(&c, id).await?;
            return Ok(ExitCode::SUCCESS);
        }
        let path = match tail {
            Some(n) => format!("/api/v1/runs/{id}/log?tail={n}"),
            None => format!("/api/v1/runs/{id}/log"),
        };
        let text = c.get_text(&path).await?;
        std::io::stdout().write_all(text.as_bytes())?;
        Ok(ExitCode::SUCCESS)
    })
}
