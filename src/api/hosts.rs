//! Host maintenance: drain (no new VMs; running work finishes) and resume,
//! admin only and audited. The store keeps the block across restarts; the VM
//! manager, which owns placement, is told at once.

use axum::Json;
use axum::extract::{Path, State};
use chrono::Utc;

use super::wire::{HostBlockIn, HostOut};
use super::{Actor, ApiError, Shared};
use crate::config::Role;
use crate::hosts::Block;
use crate::store::AuditEntry;

fn admin(actor: &Actor, what: &str) -> Result<(), ApiError> {
    match actor.role {
        Role::Admin => Ok(()),
        Role::Maintainer | Role::Viewer => {
            Err(ApiError::Forbidden(format!("`{}` is a {}; {what} a host needs an admin", actor.user, actor.role.as_str())))
        }
    }
}

async fn answer(s: &Shared, name: &str) -> Result<Json<HostOut>, ApiError> {
    let hosts = super::fleet::hosts_of(s).await?;
    hosts.into_iter().find(|h| h.name == name).map(Json).ok_or_else(|| ApiError::NotFound(format!("no host named `{name}`")))
}

fn known(s: &Shared, name: &str) -> Result<(), ApiError> {
    match s.fleet().host(name) {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound(format!(
            "no host named `{name}`; known: {}",
            s.fleet().hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

async fn tell_manager(s: &Shared, name: &str, block: Option<Block>) {
    if let Some(vms) = &s.vms
        && let Err(e) = vms.set_block(name, block).await
    {
        // The store has the block; the manager reads it again when it starts.
        tracing::warn!(host = %name, error = %super::chain(&e), "could not tell the VM manager about a host block");
    }
}

pub async fn drain(
    State(s): State<Shared>,
    actor: Actor,
    Path(name): Path<String>,
    Json(body): Json<HostBlockIn>,
) -> Result<Json<HostOut>, ApiError> {
    admin(&actor, "draining")?;
    known(&s, &name)?;
    let reason = body.reason.map(|r| r.trim().to_string()).filter(|r| !r.is_empty());
    let Some(reason) = reason else {
        return Err(ApiError::BadRequest("a drain needs a `reason` (shown on the dashboard)".into()));
    };
    let block = Block::Drained { reason: reason.clone(), by: actor.user.clone(), at: Utc::now() };
    let audit = AuditEntry { actor: actor.user.clone(), action: "host.drain".into(), subject: name.clone(), detail: reason };
    s.store.set_host_block(&name, Some(block.clone()), Some(audit)).await?;
    tracing::info!(host = %name, by = %actor.user, reason = %block.reason(), "host drained");
    tell_manager(&s, &name, Some(block)).await;
    answer(&s, &name).await
}

pub async fn resume(
    State(s): State<Shared>,
    actor: Actor,
    Path(name): Path<String>,
    body: Option<Json<HostBlockIn>>,
) -> Result<Json<HostOut>, ApiError> {
    admin(&actor, "resuming")?;
    known(&s, &name)?;
    let was = s.store.host_blocks().await?.into_iter().find(|(n, _)| *n == name).map(|(_, b)| b);
    let Some(was) = was else {
        return Err(ApiError::Conflict(format!("host `{name}` is neither drained nor quarantined")));
    };
    let note = body.and_then(|b| b.0.reason).unwrap_or_default();
    let detail = format!("was {}: {}{}", was.kind(), was.reason(), if note.is_empty() { String::new() } else { format!("; {note}") });
    let audit = AuditEntry { actor: actor.user.clone(), action: "host.resume".into(), subject: name.clone(), detail };
    s.store.set_host_block(&name, None, Some(audit)).await?;
    tracing::info!(host = %name, by = %actor.user, "host resumed");
    tell_manager(&s, &name, None).await;
    answer(&s, &name).await
}
