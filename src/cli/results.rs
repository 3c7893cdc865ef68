//! `paddock results [PACKAGE]`: what the recorder knows — packages with their
//! failing platforms, or one package's platforms with their latest result.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::Value;

use super::client::{Client, Remote, block_on, print_json, table};

#[derive(Debug, clap::Args)]
pub struct ResultsArgs {
    #[command(flatten)]
    remote: Remote,
    /// A package (job); without it, every package.
    package: Option<String>,
    /// Where the recorder is mounted on the daemon; `""` for a standalone recorder.
    #[arg(long, default_value = "/recorder")]
    recorder_path: String,
}

fn text(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn run(args: &ResultsArgs) -> Result<ExitCode> {
    block_on(async {
        let client = Client::new(&args.remote)?;
        let base = args.recorder_path.trim_end_matches('/');
        match &args.package {
            None => {
                let packages: Value = client.get(&format!("{base}/api/v1/packages")).await?;
                if args.remote.json {
                    print_json(&packages)?;
                    return Ok(ExitCode::SUCCESS);
                }
                let rows: Vec<Vec<String>> = packages
                    .as_array()
                    .map(|a| a.iter().map(|p| vec![text(p, "package"), text(p, "platforms"), text(p, "failing")]).collect())
                    .unwrap_or_default();
                table(&["package", "platforms", "failing"], &rows);
            }
            Some(p) => {
                let grid: Value = client.get(&format!("{base}/api/v1/packages/{p}/tagsets")).await?;
                if args.remote.json {
                    print_json(&grid)?;
                    return Ok(ExitCode::SUCCESS);
                }
                // The recorder lists failures first, then newest first.
                let rows: Vec<Vec<String>> = grid["tagsets"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|t| {
                                let ok = t["success"].as_bool().unwrap_or(false);
                                vec![
                                    text(t, "arch"),
                                    text(t, "host"),
                                    if ok { "success".into() } else { "FAILED".into() },
                                    text(t, "time_rfc3339"),
                                    text(t, "key"),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table(&["arch", "host", "latest", "at", "result"], &rows);
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
