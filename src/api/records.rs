//! Read endpoints over the daemon's records: outbox, audit trail, events and
//! access requests.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;

use super::wire::*;
use super::{ApiError, Reader, Shared};
use crate::access::GrantState;
use crate::store::{AccessRow, OutboxEntry};

#[derive(Debug, Deserialize)]
pub struct LimitQuery {
    limit: Option<usize>,
    kind: Option<String>,
    state: Option<String>,
}

fn query(q: Result<Query<LimitQuery>, QueryRejection>) -> Result<(LimitQuery, usize), ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::BadRequest(format!("limit={limit}: must be between 1 and 1000")));
    }
    Ok((q, limit))
}

pub(crate) fn outbox_out(e: &OutboxEntry) -> OutboxOut {
    OutboxOut {
        id: e.id,
        run_id: e.run_id.clone(),
        recorder: e.recorder.clone(),
        created_at: e.created_at,
        attempts: e.attempts,
        next_attempt_at: e.next_attempt_at,
        last_error: e.last_error.clone(),
        delivered_at: e.delivered_at,
    }
}

/// Entries not yet delivered, oldest first.
pub async fn outbox(State(s): State<Shared>, _r: Reader) -> Result<Json<Vec<OutboxOut>>, ApiError> {
    Ok(Json(s.store.outbox_pending().await?.iter().map(outbox_out).collect()))
}

pub async fn audit(
    State(s): State<Shared>,
    _r: Reader,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditOut>>, ApiError> {
    let (_, limit) = query(q)?;
    let rows = s.store.audit_entries(limit).await?;
    Ok(Json(
        rows.into_iter()
            .map(|a| AuditOut { id: a.id, at: a.at, actor: a.actor, action: a.action, subject: a.subject, detail: a.detail })
            .collect(),
    ))
}

pub async fn events(
    State(s): State<Shared>,
    _r: Reader,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> Result<Json<Vec<EventOut>>, ApiError> {
    let (q, limit) = query(q)?;
    let rows = s.store.events(q.kind.as_deref(), limit).await?;
    Ok(Json(rows.into_iter().map(|e| EventOut { at: e.at, kind: e.kind, subject: e.subject, detail: e.detail }).collect()))
}

pub async fn access(
    State(s): State<Shared>,
    _r: Reader,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> Result<Json<Vec<AccessOut>>, ApiError> {
    let (q, limit) = query(q)?;
    // The accepted names come from the state enum itself, so they cannot drift.
    if let Some(st) = &q.state
        && GrantState::parse(st).is_none()
    {
        let known: Vec<&str> = GrantState::ALL.iter().map(|g| g.as_str()).collect();
        return Err(ApiError::BadRequest(format!("filter state=`{st}`: expected one of {}", known.join(", "))));
    }
    let rows = s.store.access_requests(q.state.as_deref()).await?;
    Ok(Json(rows.iter().take(limit).map(access_out).collect()))
}

pub(crate) fn access_out(a: &AccessRow) -> AccessOut {
    AccessOut {
        id: a.id.clone(),
        user: a.user.clone(),
        image: a.image.clone(),
        run_id: a.run_id.clone(),
        duration_s: a.duration_s,
        reason: a.reason.clone(),
        state: a.state.clone(),
        decided_by: a.decided_by.clone(),
        created_at: a.created_at,
        starts_at: a.starts_at,
        ends_at: a.ends_at,
        vm_name: a.vm_name.clone(),
    }
}
