//! Access endpoints: request, approve, deny, extend, revoke a grant, and the
//! fleet CA's public key. The policy lives in `access`; this file only checks
//! the token, converts wire types, and maps errors to statuses.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::wire::*;
use super::{Actor, ApiError, Reader, Shared};
use crate::access::{Access, AccessError, Grant, GrantAnswer, GrantState, Target};

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::UnknownImage(_) | AccessError::UnknownRun(_) | AccessError::UnknownGrant(_) => ApiError::NotFound(e.to_string()),
            AccessError::UnknownUser(_) | AccessError::Forbidden(_) => ApiError::Forbidden(e.to_string()),
            AccessError::Invalid(_) => ApiError::BadRequest(e.to_string()),
            AccessError::WrongState { .. } => ApiError::Conflict(e.to_string()),
            AccessError::Provision { .. } | AccessError::Certificate { .. } => ApiError::Grant(Box::new(e)),
            AccessError::Store(s) => ApiError::Store(s),
            AccessError::Stopped => ApiError::AccessStopped,
        }
    }
}

fn service(s: &Shared) -> Result<&Access, ApiError> {
    s.access.as_ref().ok_or(ApiError::AccessStopped)
}

pub(crate) fn grant_out(g: &Grant) -> GrantOut {
    let (image, run_id) = match &g.target {
        Target::Image(i) => (Some(i.clone()), None),
        Target::Run(r) => (None, Some(r.clone())),
    };
    GrantOut {
        id: g.id.clone(),
        user: g.user.clone(),
        image,
        run_id,
        duration_s: g.duration.as_secs(),
        reason: g.reason.clone(),
        state: g.state.as_str().into(),
        decided_by: g.decided_by.clone(),
        created_at: g.created_at,
        starts_at: g.starts_at,
        ends_at: g.ends_at,
        vm_name: g.vm_name.clone(),
        detail: g.detail.clone(),
        ssh: g.endpoint.as_ref().map(|e| EndpointOut { host: e.host.clone(), port: e.port, user: e.user.clone() }),
        certificates: Vec::new(),
        ssh_command: None,
        known_hosts: None,
    }
}

/// The grant with its certificates, and a `known_hosts` line when paddock pinned the
/// VM's host key, so the user checks what they connect to.
async fn answer_out(s: &Shared, a: GrantAnswer) -> Result<GrantOut, ApiError> {
    let mut out = grant_out(&a.grant);
    add_known_hosts(s, &mut out).await?;
    out.certificates = a
        .certificates
        .into_iter()
        .map(|c| CertificateOut { serial: c.serial, key_fingerprint: c.key_fingerprint, key: c.key, certificate: c.certificate })
        .collect();
    out.ssh_command = a.ssh_command;
    Ok(out)
}

async fn add_known_hosts(s: &Shared, out: &mut GrantOut) -> Result<(), ApiError> {
    if let (Some(ep), Some(vm)) = (&out.ssh, &out.vm_name)
        && let Some(key) = s.store.vm_host_key(vm).await?
    {
        out.known_hosts = Some(crate::access::known_hosts_line(&ep.host, ep.port, &key));
    }
    Ok(())
}

fn duration(s: &str) -> Result<std::time::Duration, ApiError> {
    crate::config::duration::parse(s).map_err(|e| ApiError::BadRequest(format!("duration `{s}`: {e}")))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| ApiError::BadRequest(e.body_text()))
}

/// A refused access decision gets an audit line (`refused: why`), as a refused run trigger does;
/// decisions that happen are audited by the access service with the grant's own transition.
async fn audited<T>(s: &Shared, actor: &Actor, action: &str, subject: &str, res: Result<T, ApiError>) -> Result<T, ApiError> {
    if let Err(e) = &res
        && let Err(err) = s.store.audit(&actor.user, action, subject, &format!("refused: {e}")).await
    {
        tracing::error!(error = %super::chain(&err), action, subject, "could not write the audit trail");
    }
    res
}

/// 201 with certificates when approved at once, 202 when it waits for an admin.
pub async fn request(
    State(s): State<Shared>,
    actor: Actor,
    b: Result<Json<AccessRequestIn>, JsonRejection>,
) -> Result<(StatusCode, Json<GrantOut>), ApiError> {
    let subject = match &b {
        Ok(Json(r)) => r.image.clone().or_else(|| r.run.clone()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    let res = request_checked(&s, &actor, b).await;
    audited(&s, &actor, "access.request", &subject, res).await
}

async fn request_checked(
    s: &Shared,
    actor: &Actor,
    b: Result<Json<AccessRequestIn>, JsonRejection>,
) -> Result<(StatusCode, Json<GrantOut>), ApiError> {
    let req = body(b)?;
    let target = match (req.image, req.run) {
        (Some(i), None) => Target::Image(i),
        (None, Some(r)) => Target::Run(r),
        _ => return Err(ApiError::BadRequest("give exactly one of `image` and `run`".into())),
    };
    let d = duration(&req.duration)?;
    let a = service(s)?.request(&actor.user, target, d, &req.reason).await?;
    let status = if a.grant.state == GrantState::Pending { StatusCode::ACCEPTED } else { StatusCode::CREATED };
    Ok((status, Json(answer_out(s, a).await?)))
}

pub async fn detail(State(s): State<Shared>, r: Reader, Path(id): Path<String>) -> Result<Json<GrantOut>, ApiError> {
    let g = service(&s)?.get(&id).await?;
    // Viewers and other maintainers see that a grant exists, not where it leads.
    let mut out = grant_out(&g);
    if let Some(a) = &r.0
        && a.role != crate::config::Role::Admin
        && a.user != g.user
    {
        out.ssh = None;
    }
    add_known_hosts(&s, &mut out).await?;
    Ok(Json(out))
}

pub async fn approve(State(s): State<Shared>, actor: Actor, Path(id): Path<String>) -> Result<Json<GrantOut>, ApiError> {
    let res = async {
        let a = service(&s)?.approve(&actor.user, &id).await?;
        Ok(Json(answer_out(&s, a).await?))
    }
    .await;
    audited(&s, &actor, "access.approve", &id, res).await
}

pub async fn deny(
    State(s): State<Shared>,
    actor: Actor,
    Path(id): Path<String>,
    b: Result<Json<DenyIn>, JsonRejection>,
) -> Result<Json<GrantOut>, ApiError> {
    // The body is optional: a bare POST denies without a reason.
    let reason = b.map(|Json(d)| d.reason).unwrap_or_default();
    let res = async { Ok(Json(grant_out(&service(&s)?.deny(&actor.user, &id, &reason).await?))) }.await;
    audited(&s, &actor, "access.deny", &id, res).await
}

pub async fn extend(
    State(s): State<Shared>,
    actor: Actor,
    Path(id): Path<String>,
    b: Result<Json<ExtendIn>, JsonRejection>,
) -> Result<Json<GrantOut>, ApiError> {
    let res = async {
        let d = duration(&body(b)?.duration)?;
        let a = service(&s)?.extend(&actor.user, &id, d).await?;
        Ok(Json(answer_out(&s, a).await?))
    }
    .await;
    audited(&s, &actor, "access.extend", &id, res).await
}

pub async fn revoke(State(s): State<Shared>, actor: Actor, Path(id): Path<String>) -> Result<Json<GrantOut>, ApiError> {
    let res = async { Ok(Json(grant_out(&service(&s)?.revoke(&actor.user, &id).await?))) }.await;
    audited(&s, &actor, "access.revoke", &id, res).await
}

pub async fn ca(State(s): State<Shared>, _r: Reader) -> Result<Json<CaOut>, ApiError> {
    Ok(Json(CaOut { public_key: service(&s)?.ca_public_line() }))
}
