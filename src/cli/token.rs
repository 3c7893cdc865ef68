//! `paddock token create USER | revoke ID | list`: API tokens, managed on the
//! daemon's store file directly (`<state_dir>/paddock.db`), so the first
//! admin token can be made before anyone can call the API.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use paddock::store::Store;

use super::client::{block_on, table};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token for a user of fleet.toml; it is printed once.
    Create { user: String },
    /// Revoke a token by its id (the part after `pdk_`).
    Revoke { id: String },
    /// List tokens (ids and users, never secrets).
    List,
}

pub fn run(config: &Path, cmd: &TokenCommand, json: bool) -> Result<ExitCode> {
    let fleet = paddock::config::load(config)?;
    let db = fleet.daemon.state_dir.join("paddock.db");
    block_on(async {
        std::fs::create_dir_all(&fleet.daemon.state_dir).with_context(|| format!("cannot create {}", fleet.daemon.state_dir.display()))?;
        let store = Store::open(&db).await?;
        match cmd {
            TokenCommand::Create { user } => {
                let Some(u) = fleet.user(user) else {
                    let known = fleet.users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>().join(", ");
                    bail!("no user `{user}` in {}; known: {known}", config.display());
                };
                let t = store.create_token(&u.name).await?;
                store.audit("cli", "token.create", &t.id, &format!("for {} ({})", u.name, u.role.as_str())).await?;
                if json {
                    outln!("{}", serde_json::json!({"id": t.id, "user": u.name, "token": t.token}));
                } else {
                    eprintln!("token {} for {} ({}); it is shown only now:", t.id, u.name, u.role.as_str());
                    outln!("{}", t.token);
                }
            }
            TokenCommand::Revoke { id } => {
                if !store.revoke_token(id).await? {
                    bail!("no live token `{id}`");
                }
                store.audit("cli", "token.revoke", id, "").await?;
                outln!("revoked {id}");
            }
            TokenCommand::List => {
                let tokens = store.tokens().await?;
                if json {
                    let v: Vec<_> = tokens
                        .iter()
                        .map(|t| serde_json::json!({"id": t.id, "user": t.user, "created_at": t.created_at, "revoked_at": t.revoked_at}))
                        .collect();
                    outln!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    let rows: Vec<Vec<String>> = tokens
                        .iter()
                        .map(|t| {
                            vec![
                                t.id.clone(),
                                t.user.clone(),
                                t.created_at.format("%Y-%m-%d %H:%M").to_string(),
                                t.revoked_at.map(|r| format!("revoked {}", r.format("%Y-%m-%d %H:%M"))).unwrap_or_else(|| "live".into()),
                            ]
                        })
                        .collect();
                    table(&["id", "user", "created", "state"], &rows);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
