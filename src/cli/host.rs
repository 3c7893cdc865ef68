//! `paddock host check URI` (onboarding a donated host), `paddock host drain
//! NAME --reason` and `paddock host resume NAME` (over the daemon's API).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use paddock::api::wire::{HostBlockIn, HostOut};
use paddock::config::{self, Fleet};
use paddock::hosts::check;

use super::client::{Client, Remote, block_on, print_json};

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Connect to a host through libvirt and say whether paddock can use it.
    Check {
        /// A libvirt URI (qemu:///system, qemu+ssh://HOST/system, test:///default) or
        /// the name of a host in fleet.toml.
        uri: String,
        /// Judge the host against this fleet (its images, and its entry if the URI is in it).
        #[arg(long, short, env = "PADDOCK_CONFIG", default_value = "fleet.toml")]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop placing new VMs on a host; running work finishes.
    Drain {
        #[command(flatten)]
        remote: Remote,
        name: String,
        #[arg(long)]
        reason: String,
    },
    /// Place VMs on a drained or quarantined host again.
    Resume {
        #[command(flatten)]
        remote: Remote,
        name: String,
    },
}

pub fn run(cmd: &HostCommand) -> Result<ExitCode> {
    match cmd {
        HostCommand::Check { uri, config, json } => check_host(uri, config, *json),
        HostCommand::Drain { remote, name, reason } => block(remote, name, "drain", Some(reason.clone())),
        HostCommand::Resume { remote, name } => block(remote, name, "resume", None),
    }
}

fn check_host(arg: &str, path: &Path, json: bool) -> Result<ExitCode> {
    // The fleet is optional: a host can be checked before any fleet.toml exists.
    let fleet: Option<Fleet> = if path.exists() { Some(config::load(path)?) } else { None };
    let host = fleet.as_ref().and_then(|f| f.hosts.iter().find(|h| h.uri == arg || h.name == arg));
    let uri = host.map_or(arg.to_string(), |h| h.uri.clone());
    let images = fleet.as_ref().map(|f| f.images.clone()).unwrap_or_default();
    let files = check::local_files(&images);
    let probe = paddock::libvirt::probe(&uri).map_err(|e| paddock::libvirt::error_chain(&e));
    let lines = check::assess(&uri, probe.as_ref().map_err(Clone::clone), host, &images, &files);
    let verdict = check::verdict(&lines);
    if json {
        let v = serde_json::json!({
            "uri": uri,
            "verdict": verdict.to_string(),
            "lines": lines.iter().map(|l| serde_json::json!({
                "level": l.level.as_str().to_lowercase(), "topic": l.topic, "text": l.text, "fix": l.fix,
            })).collect::<Vec<_>>(),
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        outln!("{}", check::render(&uri, &lines).trim_end_matches('\n'));
    }
    Ok(if verdict == check::Verdict::NotReady { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn block(remote: &Remote, name: &str, action: &str, reason: Option<String>) -> Result<ExitCode> {
    block_on(async {
        let body = HostBlockIn { reason };
        let out: HostOut = Client::new(remote)?.post(&format!("/api/v1/hosts/{name}/{action}"), Some(&body)).await?;
        if remote.json {
            print_json(&out)?;
        } else {
            match &out.blocked {
                Some(b) => outln!("host {} is {}: {}", out.name, b.kind, b.reason),
                None => outln!("host {} takes new VMs again", out.name),
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
