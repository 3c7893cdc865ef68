//! `GET /api/v1/templates`: the warm-start templates in the state directory and in the pools of
//! hosts with an `image_pool`, read like the fleet and VM views (a reader's token, or none
//! with `public_reads`).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use tracing::warn;

use super::wire::TemplateOut;
use super::{ApiError, Reader, Shared};
use crate::vm::template::list::{self as listing, Listed, Restored};

/// How long one pool host's listing (and the VM manager's answer) may take: a host that does
/// not answer within it is shown as unlisted, and the rest of the listing is not held up.
const POOL_LISTING: Duration = Duration::from_secs(15);

pub async fn list(State(s): State<Shared>, _r: Reader) -> Result<Json<Vec<TemplateOut>>, ApiError> {
    Ok(Json(templates_of(&s).await?))
}

/// Listed off the runtime: a changed image file is hashed (once) to tell a stale template.
/// Each pool host is listed on its own blocking task under [`POOL_LISTING`], all at once.
pub(crate) async fn templates_of(s: &Shared) -> Result<Vec<TemplateOut>, ApiError> {
    let fleet = s.fleet();
    let restored = restored(s).await;
    let mut pools = tokio::task::JoinSet::new();
    if let Some(instance) = s.instance_id.clone() {
        for (i, host) in fleet.hosts.iter().enumerate().filter(|(_, h)| h.image_pool.is_some()) {
            let (host, fleet, seeds, hashes, instance) =
                (host.clone(), fleet.clone(), s.template_seeds.clone(), s.template_hashes.clone(), instance.clone());
            pools.spawn(async move {
                let name = host.name.clone();
                let task = tokio::task::spawn_blocking(move || listing::list_pool(&host, &instance, &fleet, seeds.as_ref(), &hashes));
                let listed = match tokio::time::timeout(POOL_LISTING, task).await {
                    Ok(Ok(Ok(rows))) => Ok(rows),
                    Ok(Ok(Err(e))) => {
                        warn!(host = %name, error = %super::chain(&e), "could not list the templates in the host's pool");
                        Err("its pool could not be listed (the daemon's log says why)".to_string())
                    }
                    Ok(Err(e)) => {
                        warn!(host = %name, error = %e, "the pool listing task failed");
                        Err("its pool could not be listed (the daemon's log says why)".to_string())
                    }
                    Err(_) => Err(format!("its pool did not answer within {} s", POOL_LISTING.as_secs())),
                };
                (i, name, listed)
            });
        }
    }
    let (state_dir, f, seeds, hashes) =
        (fleet.daemon.state_dir.clone(), fleet.clone(), s.template_seeds.clone(), s.template_hashes.clone());
    let local = tokio::task::spawn_blocking(move || listing::list_all(&state_dir, &f, seeds.as_ref(), &hashes, &restored))
        .await
        .map_err(|source| ApiError::Task { what: "template listing", source })?;
    let mut out: Vec<TemplateOut> = local.into_iter().map(row).collect();
    let mut by_host = pools.join_all().await;
    by_host.sort_by_key(|(i, _, _)| *i);
    for (_, host, listed) in by_host {
        match listed {
            Ok(rows) => out.extend(rows.into_iter().map(row)),
            Err(error) => out.push(TemplateOut {
                host: Some(host.clone()),
                image: None,
                key: String::new(),
                state: "unlisted".into(),
                made_at: None,
                disk_bytes: 0,
                clones: 0,
                pool: fleet.hosts.iter().find(|h| h.name == host).and_then(|h| h.image_pool.clone()),
                error: Some(error),
            }),
        }
    }
    Ok(out)
}

fn row(t: Listed) -> TemplateOut {
    TemplateOut {
        host: t.host,
        image: t.image,
        key: t.key,
        state: t.state.as_str().into(),
        made_at: t.made_at,
        disk_bytes: t.disk_bytes,
        clones: t.clones,
        pool: t.pool,
        error: None,
    }
}

/// The live clones the VM manager knows of (a diskless template's clones are counted by
/// them); none when it does not answer in time.
async fn restored(s: &Shared) -> Vec<Restored> {
    let Some(vms) = &s.vms else { return Vec::new() };
    match tokio::time::timeout(POOL_LISTING, vms.snapshot()).await {
        Ok(Ok(snap)) => snap
            .vms
            .into_iter()
            .filter(|v| !matches!(v.state, crate::vm::VmState::Stopping | crate::vm::VmState::Gone | crate::vm::VmState::Failed))
            .filter_map(|v| Some(Restored { host: v.host, key: v.template_key? }))
            .collect(),
        Ok(Err(e)) => {
            warn!(error = %super::chain(&e), "the templates listing got no VM snapshot");
            Vec::new()
        }
        Err(_) => {
            warn!("the templates listing got no VM snapshot in time");
            Vec::new()
        }
    }
}
