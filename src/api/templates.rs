//! `GET /api/v1/templates`: the warm-start templates in the state directory and in the pools of
//! hosts with an `image_pool`, read like the fleet and VM views (a reader's token, or none
//! with `public_reads`). The state directory is read at the request; a pool's templates are
//! the VM manager's last listing of it (`VmManager::pool_templates`), so no request lists a
//! host's pool, and each row says when it was listed (`listed_at`).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use tracing::warn;

use super::wire::TemplateOut;
use super::{ApiError, Reader, Shared};
use crate::vm::PoolListing;
use crate::vm::template::list::{self as listing, Listed, Restored};

/// How long the VM manager may take to answer (its snapshot, its pools' listings).
const MANAGER_ANSWER: Duration = Duration::from_secs(15);

pub async fn list(State(s): State<Shared>, _r: Reader) -> Result<Json<Vec<TemplateOut>>, ApiError> {
    Ok(Json(templates_of(&s).await?))
}

/// Listed off the runtime: a changed image file is hashed (once) to tell a stale template.
pub(crate) async fn templates_of(s: &Shared) -> Result<Vec<TemplateOut>, ApiError> {
    let fleet = s.fleet();
    let restored = restored(s).await;
    let pools = pool_listings(s).await;
    let now = Utc::now();
    let (f, seeds, hashes) = (fleet.clone(), s.template_seeds.clone(), s.template_hashes.clone());
    let rows = tokio::task::spawn_blocking(move || {
        let mut out: Vec<TemplateOut> =
            listing::list_all(&f.daemon.state_dir, &f, seeds.as_ref(), &hashes, &restored).into_iter().map(|t| row(t, now)).collect();
        for host in f.hosts.iter().filter(|h| h.image_pool.is_some()) {
            let listed = pools.iter().find(|p| p.host == host.name);
            let at = listed.and_then(|p| p.listed_at);
            match listed.map(|p| &p.templates) {
                Some(Ok(templates)) => {
                    let rows = listing::from_survey(host, templates.clone(), &f, seeds.as_ref(), &hashes);
                    out.extend(rows.into_iter().map(|t| TemplateOut { listed_at: at, ..row(t, now) }));
                }
                Some(Err(why)) => out.push(unlisted(host, at, why.clone())),
                None => out.push(unlisted(host, None, "its pool has not been listed yet".into())),
            }
        }
        out
    })
    .await
    .map_err(|source| ApiError::Task { what: "template listing", source })?;
    Ok(rows)
}

/// A pool host whose pool the VM manager could not list (or has not yet).
fn unlisted(host: &crate::config::Host, listed_at: Option<chrono::DateTime<Utc>>, error: String) -> TemplateOut {
    TemplateOut {
        host: Some(host.name.clone()),
        image: None,
        key: String::new(),
        state: "unlisted".into(),
        made_at: None,
        disk_bytes: 0,
        clones: 0,
        pool: host.image_pool.clone(),
        listed_at,
        error: Some(error),
    }
}

fn row(t: Listed, listed_at: chrono::DateTime<Utc>) -> TemplateOut {
    TemplateOut {
        host: t.host,
        image: t.image,
        key: t.key,
        state: t.state.as_str().into(),
        made_at: t.made_at,
        disk_bytes: t.disk_bytes,
        clones: t.clones,
        pool: t.pool,
        listed_at: Some(listed_at),
        error: None,
    }
}

/// The VM manager's answer within `MANAGER_ANSWER`; `None` (logged, naming `what` the listing
/// did without) when it fails or does not answer in time.
async fn ask_manager<T>(what: &str, ask: impl Future<Output = Result<T, crate::vm::VmError>>) -> Option<T> {
    match tokio::time::timeout(MANAGER_ANSWER, ask).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            warn!(error = %super::chain(&e), "the templates listing got no {what} from the VM manager");
            None
        }
        Err(_) => {
            warn!("the templates listing got no {what} from the VM manager in time");
            None
        }
    }
}

/// The VM manager's last listing of every pool host; none without a manager or when it does
/// not answer in time (each pool host is then an `unlisted` row).
async fn pool_listings(s: &Shared) -> Vec<PoolListing> {
    let Some(vms) = &s.vms else { return Vec::new() };
    ask_manager("pool listing", vms.pool_templates()).await.unwrap_or_default()
}

/// The live clones the VM manager knows of (a diskless template's clones are counted by
/// them); none when it does not answer in time.
async fn restored(s: &Shared) -> Vec<Restored> {
    let Some(vms) = &s.vms else { return Vec::new() };
    let Some(snap) = ask_manager("VM snapshot", vms.snapshot()).await else { return Vec::new() };
    snap.vms
        .into_iter()
        .filter(|v| !matches!(v.state, crate::vm::VmState::Stopping | crate::vm::VmState::Gone | crate::vm::VmState::Failed))
        .filter_map(|v| Some(Restored { host: v.host, key: v.template_key? }))
        .collect()
}
