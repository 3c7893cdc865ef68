//! Run endpoints: listing with filters, detail with steps, and the three
//! mutating calls (trigger, cancel, re-run), each checked and audited.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::records::outbox_out;
use super::wire::*;
use super::{Actor, ApiError, Reader, Shared};
use crate::runs::{RunState, Trigger};
use crate::store::{RunFilter, RunRow};

/// The largest page of runs one request may ask for.
const MAX_LIMIT: usize = 1000;

/// The longest id prefix a listing may filter by (run ids are about 20 bytes).
const MAX_ID_PREFIX: usize = 128;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    job: Option<String>,
    image: Option<String>,
    state: Option<String>,
    since: Option<String>,
    /// Runs whose id starts with this (`paddock runs show` resolves a short id with it).
    id_prefix: Option<String>,
    limit: Option<usize>,
}

pub async fn list(
    State(s): State<Shared>,
    _r: Reader,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<RunListOut>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if let Some(j) = &q.job
        && s.fleet().job(j).is_none()
    {
        return Err(ApiError::BadRequest(format!("filter job=`{j}`: no such job")));
    }
    if let Some(i) = &q.image
        && s.fleet().run_target(i).is_none()
    {
        return Err(ApiError::BadRequest(format!("filter image=`{i}`: no such image")));
    }
    // The accepted names come from the state enum itself, so they cannot drift.
    if let Some(st) = &q.state
        && !RunState::KINDS.iter().any(|k| k.kind_name() == st)
        && RunState::from_db(st).is_none()
    {
        let known: Vec<&str> = RunState::KINDS.iter().map(|k| k.kind_name()).collect();
        return Err(ApiError::BadRequest(format!("filter state=`{st}`: expected one of {}", known.join(", "))));
    }
    let since = match &q.since {
        None => None,
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|e| ApiError::BadRequest(format!("filter since=`{t}`: not an RFC 3339 time ({e})")))?
                .with_timezone(&Utc),
        ),
    };
    if let Some(p) = &q.id_prefix
        && (p.is_empty() || p.len() > MAX_ID_PREFIX)
    {
        return Err(ApiError::BadRequest(format!("filter id_prefix: must be 1 to {MAX_ID_PREFIX} bytes long")));
    }
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::BadRequest(format!("limit={limit}: must be between 1 and {MAX_LIMIT}")));
    }
    let filter = RunFilter { job: q.job, image: q.image, state: q.state, since, id_prefix: q.id_prefix, limit: Some(limit) };
    let rows = s.store.runs(filter).await?;
    let links = s.store.retry_links(rows.iter().map(|r| r.id.clone()).collect()).await?;
    let out = rows
        .iter()
        .map(|r| RunListOut {
            run: run_out(r),
            retry: links.iter().find(|l| l.run_id == r.id).map(|l| RetryOut {
                retry_of: l.retry_of.clone(),
                attempt: l.attempt,
                attempts: l.attempts,
                note: l.note.clone(),
            }),
            retried_by: links.iter().find(|l| l.retry_of == r.id).map(|l| l.run_id.clone()),
        })
        .collect();
    Ok(Json(out))
}

pub(crate) fn run_out(r: &RunRow) -> RunOut {
    let state = RunState::from_db(&r.state);
    RunOut {
        id: r.id.clone(),
        job: r.job.clone(),
        image: r.image.clone(),
        trigger: r.trigger.clone(),
        requested_by: r.requested_by.clone(),
        state: r.state.clone(),
        state_label: state.map(|s| s.to_string()).unwrap_or_else(|| r.state.clone()),
        terminal: state.is_some_and(finished),
        host: r.host.clone(),
        vm_name: r.vm_name.clone(),
        scheduled_at: r.scheduled_at,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        outcome: r.outcome.clone(),
        reason: r.reason.clone(),
    }
}

/// A run whose build is over: terminal, or held for a maintainer.
pub(crate) fn finished(s: RunState) -> bool {
    s.is_terminal() || s == RunState::Held
}

pub async fn detail(State(s): State<Shared>, _r: Reader, Path(id): Path<String>) -> Result<Json<RunDetailOut>, ApiError> {
    let row = find(&s, &id).await?;
    let outbox = s.store.outbox_for_run(&id).await?;
    let (retry, retried_by) = retry_facts(&s.store, &id).await?;
    Ok(Json(RunDetailOut {
        run: run_out(&row),
        steps: steps_of(&row),
        outbox: outbox.iter().map(outbox_out).collect(),
        retry,
        retried_by,
        log_path: row.log_path.clone(),
        console_tail: console_tail_of(&row),
        timings: timings_of(&row),
    }))
}

/// How the run started and how fast, from its result document's `extras.timings`, if any.
fn timings_of(r: &RunRow) -> Option<super::wire::TimingsOut> {
    let doc = serde_json::from_str::<serde_json::Value>(r.result_json.as_deref()?).ok()?;
    let t = doc.get("extras")?.get("timings")?;
    Some(super::wire::TimingsOut {
        start: t.get("start")?.as_str()?.to_string(),
        warm_fallback: t.get("warm_fallback").and_then(|v| v.as_str()).map(str::to_string),
        boot_s: t.get("boot_s").and_then(|v| v.as_f64()),
        banner_to_first_byte_s: t.get("banner_to_first_byte_s").and_then(|v| v.as_f64()),
        one_handshake: t.get("one_handshake").and_then(|v| v.as_bool()),
    })
}

/// The console tail a finished run's result document keeps (`extras.console_tail`), if any.
fn console_tail_of(r: &RunRow) -> Option<String> {
    let doc = serde_json::from_str::<serde_json::Value>(r.result_json.as_deref()?).ok()?;
    doc.get("extras")?.get("console_tail")?.as_str().filter(|t| !t.trim().is_empty()).map(str::to_string)
}

/// Which run run `id` re-runs (with its note), and which run re-runs it.
pub(crate) async fn retry_facts(store: &crate::store::Store, id: &str) -> Result<(Option<RetryOut>, Option<String>), ApiError> {
    let retry =
        store.retry_of(id).await?.map(|l| RetryOut { retry_of: l.retry_of, attempt: l.attempt, attempts: l.attempts, note: l.note });
    let retried_by = store.retried_by(id).await?.map(|l| l.run_id);
    Ok((retry, retried_by))
}

pub(crate) async fn find(s: &Shared, id: &str) -> Result<RunRow, ApiError> {
    s.store.run(id).await?.ok_or_else(|| ApiError::NotFound(format!("no run `{id}`")))
}

/// The steps of a finished run, read from its result document's `results`.
/// A document that does not parse gives no steps rather than an error: the
/// run's other fields are still worth showing.
pub(crate) fn steps_of(r: &RunRow) -> Vec<StepOut> {
    let Some(doc) = r.result_json.as_deref().and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok()) else {
        return Vec::new();
    };
    let Some(results) = doc.get("results").and_then(|v| v.as_array()) else {
        return Vec::new();
    };
    let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
    results
        .iter()
        .map(|v| StepOut {
            name: text(v, "name"),
            kind: text(v, "type"),
            status: v.get("status").and_then(|x| x.as_i64()),
            duration_s: v.get("duration").and_then(|x| x.as_f64()),
            timed_out: v.get("timed_out").and_then(|x| x.as_bool()).unwrap_or(false),
            skipped: v.get("skipped").and_then(|x| x.as_bool()).unwrap_or(false),
            output: text(v, "output"),
            errout: text(v, "errout"),
        })
        .collect()
}

/// Records a mutating call and how it ended. An audit write that fails is
/// logged, not returned: the action itself has already happened.
async fn audit<T>(s: &Shared, actor: &Actor, action: &str, subject: &str, res: &Result<T, ApiError>, ok: String) {
    let detail = match res {
        Ok(_) => ok,
        Err(e) => format!("refused: {e}"),
    };
    if let Err(e) = s.store.audit(&actor.user, action, subject, &detail).await {
        tracing::error!(error = %super::chain(&e), action, subject, "could not write the audit trail");
    }
}

pub async fn trigger(
    State(s): State<Shared>,
    actor: Actor,
    body: Result<Json<TriggerIn>, JsonRejection>,
) -> Result<(StatusCode, Json<TriggerOut>), ApiError> {
    let Json(req) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let res = trigger_checked(&s, &actor, &req).await;
    let ok = match &res {
        Ok(ids) => format!("started {}", ids.join(", ")),
        Err(_) => String::new(),
    };
    let subject = match &req.image {
        Some(i) => format!("{}/{i}", req.job),
        None => req.job.clone(),
    };
    audit(&s, &actor, "run.trigger", &subject, &res, ok).await;
    Ok((StatusCode::CREATED, Json(TriggerOut { runs: res? })))
}

async fn trigger_checked(s: &Shared, actor: &Actor, req: &TriggerIn) -> Result<Vec<String>, ApiError> {
    let fleet = s.fleet();
    let Some(job) = fleet.job(&req.job) else {
        let known = fleet.jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>().join(", ");
        return Err(ApiError::NotFound(format!("no job named `{}`; known: {known}", req.job)));
    };
    actor.may_run(job)?;
    Ok(s.runs.trigger(&req.job, req.image.as_deref(), Trigger::Manual { by: actor.user.clone() }).await?)
}

pub async fn cancel(State(s): State<Shared>, actor: Actor, Path(id): Path<String>) -> Result<Json<CancelOut>, ApiError> {
    let res = async {
        let row = find(&s, &id).await?;
        job_of(&s, &row).and_then(|j| actor.may_run(&j))?;
        s.runs.cancel(&id, &actor.user).await?;
        Ok::<_, ApiError>(())
    }
    .await;
    audit(&s, &actor, "run.cancel", &id, &res, "cancel requested".into()).await;
    res?;
    Ok(Json(CancelOut { run: id, cancel_requested: true }))
}

pub async fn rerun(State(s): State<Shared>, actor: Actor, Path(id): Path<String>) -> Result<(StatusCode, Json<TriggerOut>), ApiError> {
    let res = async {
        let row = find(&s, &id).await?;
        job_of(&s, &row).and_then(|j| actor.may_run(&j))?;
        let trigger = Trigger::Rerun { of: id.clone(), by: actor.user.clone() };
        Ok::<_, ApiError>(s.runs.trigger(&row.job, Some(&row.image), trigger).await?)
    }
    .await;
    let ok = match &res {
        Ok(ids) => format!("started {}", ids.join(", ")),
        Err(_) => String::new(),
    };
    audit(&s, &actor, "run.rerun", &id, &res, ok).await;
    Ok((StatusCode::CREATED, Json(TriggerOut { runs: res? })))
}

fn job_of(s: &Shared, row: &RunRow) -> Result<crate::config::Job, ApiError> {
    s.fleet()
        .job(&row.job)
        .cloned()
        .ok_or_else(|| ApiError::Conflict(format!("run `{}` belongs to job `{}`, no longer in fleet.toml", row.id, row.job)))
}
