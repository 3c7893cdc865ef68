//! `paddock access request|list|show|approve|deny|extend|revoke|ca` and
//! `paddock audit`, over the daemon's REST API.
//!
//! Issued certificates are written next to each other in `--out` (default:
//! the current folder) as `paddock-<grant>-<n>-cert.pub`, and the printed
//! `ssh` command names them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use paddock::api::wire::{AccessOut, AccessRequestIn, AuditOut, CaOut, DenyIn, ExtendIn, GrantOut};

use super::client::{Client, Remote, block_on, opt, print_json, table};

#[derive(Debug, Subcommand)]
pub enum AccessCommand {
    /// Ask for SSH access to a fresh VM of an image or to a held run's VM.
    Request {
        #[arg(long, conflicts_with = "run", required_unless_present = "run")]
        image: Option<String>,
        #[arg(long)]
        run: Option<String>,
        /// How long, e.g. `2h`.
        #[arg(long = "for")]
        duration: String,
        #[arg(long)]
        reason: String,
        /// Where certificates are written.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Access requests, newest first.
    List {
        #[arg(long)]
        state: Option<String>,
    },
    /// One access request.
    Show { id: String },
    /// Approve a pending request (admins).
    Approve {
        id: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Deny a pending request (admins).
    Deny {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Extend an active grant (capped by policy); writes fresh certificates.
    Extend {
        id: String,
        #[arg(long = "for")]
        duration: String,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// End a grant now.
    Revoke { id: String },
    /// The fleet CA's public key line, for images' `TrustedUserCAKeys`.
    Ca,
}

pub fn run(remote: &Remote, cmd: &AccessCommand) -> Result<ExitCode> {
    block_on(async {
        let c = Client::new(remote)?;
        match cmd {
            AccessCommand::Request { image, run, duration, reason, out } => {
                let body = AccessRequestIn { image: image.clone(), run: run.clone(), duration: duration.clone(), reason: reason.clone() };
                let g: GrantOut = c.post("/api/v1/access", Some(&body)).await?;
                show_grant(remote, &g, out)
            }
            AccessCommand::List { state } => {
                let path = match state {
                    Some(s) => format!("/api/v1/access?state={s}"),
                    None => "/api/v1/access".into(),
                };
                let rows: Vec<AccessOut> = c.get(&path).await?;
                if remote.json {
                    print_json(&rows)?;
                    return Ok(ExitCode::SUCCESS);
                }
                let rows: Vec<Vec<String>> = rows
                    .iter()
                    .map(|a| {
                        vec![
                            a.id.clone(),
                            a.user.clone(),
                            a.image.clone().or_else(|| a.run_id.as_ref().map(|r| format!("run {r}"))).unwrap_or_default(),
                            a.state.clone(),
                            paddock::config::duration::format(std::time::Duration::from_secs(a.duration_s.max(0) as u64)),
                            a.ends_at.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default(),
                            opt(&a.decided_by),
                            a.reason.clone(),
                        ]
                    })
                    .collect();
                table(&["id", "user", "for", "state", "duration", "ends", "decided by", "reason"], &rows);
                Ok(ExitCode::SUCCESS)
            }
            AccessCommand::Show { id } => {
                let g: GrantOut = c.get(&format!("/api/v1/access/{id}")).await?;
                show_grant(remote, &g, Path::new("."))
            }
            AccessCommand::Approve { id, out } => {
                let g: GrantOut = c.post::<_, ()>(&format!("/api/v1/access/{id}/approve"), None).await?;
                show_grant(remote, &g, out)
            }
            AccessCommand::Deny { id, reason } => {
                let g: GrantOut = c.post(&format!("/api/v1/access/{id}/deny"), Some(&DenyIn { reason: reason.clone() })).await?;
                show_grant(remote, &g, Path::new("."))
            }
            AccessCommand::Extend { id, duration, out } => {
                let body = ExtendIn { duration: duration.clone() };
                let g: GrantOut = c.post(&format!("/api/v1/access/{id}/extend"), Some(&body)).await?;
                show_grant(remote, &g, out)
            }
            AccessCommand::Revoke { id } => {
                let g: GrantOut = c.post::<_, ()>(&format!("/api/v1/access/{id}/revoke"), None).await?;
                show_grant(remote, &g, Path::new("."))
            }
            AccessCommand::Ca => {
                let ca: CaOut = c.get("/api/v1/access/ca").await?;
                outln!("{}", ca.public_key);
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// Prints a grant; writes its certificates (if any) and prints the ssh command naming them.
fn show_grant(remote: &Remote, g: &GrantOut, out: &Path) -> Result<ExitCode> {
    let mut files = Vec::new();
    for (n, c) in g.certificates.iter().enumerate() {
        let path = out.join(format!("paddock-{}-{}-cert.pub", g.id, n + 1));
        std::fs::write(&path, format!("{}\n", c.certificate)).with_context(|| format!("cannot write {}", path.display()))?;
        files.push(path);
    }
    // The VM's pinned host key: ssh checks it instead of asking to trust a new one.
    let known_hosts = match &g.known_hosts {
        Some(line) => {
            let path = out.join(format!("paddock-{}-known_hosts", g.id));
            std::fs::write(&path, format!("{line}\n")).with_context(|| format!("cannot write {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    if remote.json {
        print_json(g)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{} {} for {} ({})",
        g.id,
        g.state,
        g.user,
        g.image.clone().or(g.run_id.clone().map(|r| format!("run {r}"))).unwrap_or_default()
    );
    if let Some(d) = &g.detail {
        outln!("  {d}");
    }
    if let Some(line) = g.ends_at.and_then(|t| end_line(&g.state, t, chrono::Utc::now())) {
        outln!("  {line}");
    }
    for (c, f) in g.certificates.iter().zip(&files) {
        outln!("  certificate serial {} for key {}: {}", c.serial, c.key_fingerprint, f.display());
    }
    if let (Some(line), Some(path)) = (&g.known_hosts, &known_hosts) {
        outln!("  known_hosts ({}): {line}", path.display());
    }
    if let Some(cmd) = &g.ssh_command {
        let mut cmd = match files.first() {
            Some(f) => cmd.replace("CERT", &f.display().to_string()),
            None => cmd.clone(),
        };
        if let Some(path) = &known_hosts {
            cmd = cmd.replacen("ssh ", &format!("ssh -o UserKnownHostsFile={} ", path.display()), 1);
        }
        outln!("  {cmd}");
        outln!("  (KEY is your private key, e.g. ~/.ssh/id_ed25519)");
    }
    if g.state == "failed" {
        bail!("grant {} failed", g.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// When a grant in `state` ends or ended, `ends_at` being its planned end: a revoked, denied
/// or failed grant ended early, so its planned end is history, not a promise.
fn end_line(state: &str, ends_at: chrono::DateTime<chrono::Utc>, now: chrono::DateTime<chrono::Utc>) -> Option<String> {
    let at = ends_at.format("%Y-%m-%d %H:%M:%S UTC");
    let when = super::client::relative(ends_at, now);
    Some(match paddock::access::GrantState::parse(state)? {
        paddock::access::GrantState::Expired => format!("ended {at} ({when})"),
        s if s.is_final() => format!("ended early ({state}); was to end {at}"),
        _ => format!("ends {at} ({when})"),
    })
}

/// `paddock audit`: the newest audit entries (admins).
pub fn audit(remote: &Remote, limit: usize) -> Result<ExitCode> {
    block_on(async {
        let rows: Vec<AuditOut> = Client::new(remote)?.get(&format!("/api/v1/audit?limit={limit}")).await?;
        if remote.json {
            print_json(&rows)?;
            return Ok(ExitCode::SUCCESS);
        }
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|a| {
                vec![a.at.format("%Y-%m-%d %H:%M:%S").to_string(), a.actor.clone(), a.action.clone(), a.subject.clone(), a.detail.clone()]
            })
            .collect();
        table(&["at (UTC)", "actor", "action", "subject", "detail"], &rows);
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod end_line_tests {
    use super::end_line;
    use chrono::{TimeZone, Utc};

    #[test]
    fn a_live_grant_ends_and_a_revoked_one_ended_early() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 19, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 12, 1, 20, 0, 0).unwrap();
        assert_eq!(end_line("active", end, now).unwrap(), "ends 2026-12-01 20:00:00 UTC (in 1h)");
        assert_eq!(end_line("revoked", end, now).unwrap(), "ended early (revoked); was to end 2026-12-01 20:00:00 UTC");
        assert_eq!(end_line("expired", end, end + chrono::Duration::minutes(5)).unwrap(), "ended 2026-12-01 20:00:00 UTC (5m ago)");
        assert_eq!(end_line("no-such-state", end, now), None);
    }
}
