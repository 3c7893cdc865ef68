//! Read endpoints about the fleet: status, hosts, VMs, images, jobs, and the
//! probes and `/metrics`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::Utc;

use super::wire::*;
use super::{ApiError, Reader, Shared};
use crate::config::{Boot, Fleet, Job};
use crate::metrics::{self, Snapshot};
use crate::runs::RunState;
use crate::store::{RunRow, VmRow};

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when at least one host is reachable (as the VM manager last reported).
pub async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    let hosts = s.hosts.borrow().clone();
    let up = hosts.iter().filter(|h| h.up).count();
    // An owner that failed and was started again is reported (it serves again).
    let mut healths: Vec<(&str, crate::supervisor::OwnerHealth)> = s.access.as_ref().map(|a| ("access", a.health())).into_iter().collect();
    healths.extend(s.owners.iter().map(|(name, h)| (*name, h.lock().expect("health lock").clone())));
    let owners: String = healths
        .iter()
        .filter(|(_, h)| h.restarts > 0)
        .map(|(name, h)| {
            format!("{name} owner restarted {} time(s); last failure: {}\n", h.restarts, h.last_failure.as_deref().unwrap_or("unknown"))
        })
        .collect();
    if up > 0 {
        (StatusCode::OK, format!("ready: {up} of {} hosts up\n{owners}", s.fleet().hosts.len()))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: no host reachable ({} configured)\n{owners}", s.fleet().hosts.len()))
    }
}

pub async fn metrics(State(s): State<Shared>, _r: Reader) -> Result<impl IntoResponse, ApiError> {
    let vms = s.store.vms().await?;
    let unfinished = s.store.unfinished_runs().await?;
    let pending = s.store.outbox_pending().await?;
    let now = Utc::now();
    let mut by_host_state: BTreeMap<(String, String), usize> = BTreeMap::new();
    for v in &vms {
        *by_host_state.entry((v.host.clone().unwrap_or_else(|| "(none)".into()), v.state.clone())).or_default() += 1;
    }
    let mut outbox: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for e in &pending {
        let age = (now - e.created_at).num_milliseconds().max(0) as f64 / 1000.0;
        let slot = outbox.entry(e.recorder.clone()).or_default();
        slot.0 += 1;
        slot.1 = slot.1.max(age);
    }
    for r in &s.fleet().recorders {
        outbox.entry(r.name.clone()).or_default();
    }
    // Idle ready-pool clones: rows of the pool's run that are ready (a taken one has its run's id).
    let mut ready: BTreeMap<(String, String), usize> = BTreeMap::new();
    for i in &s.fleet().images {
        for h in s.fleet().hosts.iter().filter(|h| i.min_ready_on(h) > 0) {
            ready.insert((i.name.clone(), h.name.clone()), 0);
        }
    }
    for v in vms.iter().filter(|v| v.run_id.as_deref() == Some(crate::vm::READY_POOL_RUN) && v.state == "ready") {
        *ready.entry((v.image.clone(), v.host.clone().unwrap_or_default())).or_default() += 1;
    }
    let statuses = s.hosts.borrow().clone();
    let states: Vec<Option<RunState>> = unfinished.iter().map(|r| RunState::from_db(&r.state)).collect();
    metrics::set_snapshot(&Snapshot {
        queued: states.iter().filter(|s| **s == Some(RunState::Queued)).count(),
        in_flight: states.iter().filter(|s| s.is_some_and(|s| s.is_active() && s != RunState::Queued)).count(),
        vms: by_host_state.into_iter().map(|((h, st), n)| (h, st, n)).collect(),
        hosts_up: s.fleet().hosts.iter().map(|h| (h.name.clone(), statuses.iter().any(|st| st.name == h.name && st.up))).collect(),
        outbox: outbox.into_iter().map(|(r, (n, age))| (r, n, age)).collect(),
        log_follows: s.follows.load(std::sync::atomic::Ordering::SeqCst),
        ready_clones: ready.into_iter().map(|((i, h), n)| (i, h, n)).collect(),
    });
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()))
}

pub async fn status(State(s): State<Shared>, _r: Reader) -> Result<Json<StatusOut>, ApiError> {
    Ok(Json(status_of(&s).await?))
}

pub(crate) async fn status_of(s: &Shared) -> Result<StatusOut, ApiError> {
    let unfinished = s.store.unfinished_runs().await?;
    let states: Vec<Option<RunState>> = unfinished.iter().map(|r| RunState::from_db(&r.state)).collect();
    let now = Utc::now();
    let hosts_up = s.hosts.borrow().iter().filter(|h| h.up).count();
    Ok(StatusOut {
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: s.started_at,
        uptime_s: (now - s.started_at).num_seconds(),
        hosts: s.fleet().hosts.len(),
        hosts_up,
        vms: s.store.vms().await?.len(),
        runs_queued: states.iter().filter(|s| **s == Some(RunState::Queued)).count(),
        runs_in_flight: states.iter().filter(|s| s.is_some_and(|s| s.is_active() && s != RunState::Queued)).count(),
        runs_held: states.iter().filter(|s| **s == Some(RunState::Held)).count(),
        outbox_pending: s.store.outbox_pending().await?.len(),
    })
}

pub async fn hosts(State(s): State<Shared>, _r: Reader) -> Result<Json<Vec<HostOut>>, ApiError> {
    Ok(Json(hosts_of(&s).await?))
}

pub(crate) async fn hosts_of(s: &Shared) -> Result<Vec<HostOut>, ApiError> {
    let vms = s.store.vms().await?;
    let statuses = s.hosts.borrow().clone();
    let blocks = s.store.host_blocks().await?;
    let now = Utc::now();
    let mut out = Vec::with_capacity(s.fleet().hosts.len());
    for h in &s.fleet().hosts {
        let mut o = host_out(&s.fleet(), h, &vms, statuses.iter().find(|st| st.name == h.name));
        o.blocked = blocks.iter().find(|(n, _)| *n == h.name).map(|(_, b)| block_out(b));
        o.window_open = h.limits.open_at(now);
        o.windows = h.limits.windows.iter().map(|w| format!("{} ({})", w.text, h.limits.timezone)).collect();
        let hh = s.store.host_health(&h.name).await?;
        o.health = HostHealthOut {
            launches: hh.launches,
            failures: hh.failures,
            consecutive_failures: hh.consecutive_failures,
            mean_boot_ms: hh.mean_boot_ms,
            last_boot_ms: hh.last_boot_ms,
        };
        out.push(o);
    }
    Ok(out)
}

pub(crate) fn block_out(b: &crate::hosts::Block) -> HostBlockOut {
    HostBlockOut {
        kind: b.kind().into(),
        reason: b.reason().into(),
        by: match b {
            crate::hosts::Block::Drained { by, .. } => by.clone(),
            crate::hosts::Block::Quarantined { .. } => "paddock".into(),
        },
        since: b.since(),
    }
}

/// Capacity used counts every VM row on the host: the store keeps a row from
/// the moment a VM is defined until it is seen gone, which is exactly when the
/// VM holds (or may hold) the host's memory and CPUs.
fn host_out(fleet: &Fleet, h: &crate::config::Host, vms: &[VmRow], st: Option<&super::HostStatus>) -> HostOut {
    let mut used = CapacityOut::default();
    for v in vms.iter().filter(|v| v.host.as_deref() == Some(&h.name)) {
        used.vms += 1;
        if let Some(i) = fleet.image(&v.image) {
            used.memory_mib += i.memory_mib;
            used.vcpus += u64::from(i.vcpus);
        }
    }
    let capacity =
        CapacityOut { vms: u64::from(h.capacity.max_vms), memory_mib: h.capacity.memory_mib, vcpus: u64::from(h.capacity.vcpus) };
    HostOut {
        name: h.name.clone(),
        uri: h.uri.clone(),
        accelerator: h.accelerator.domain_type().into(),
        address: h.address.to_string(),
        up: st.map(|s| s.up),
        last_error: st.and_then(|s| s.last_error.clone()),
        vms_running: st.map(|s| s.vms_running).unwrap_or(used.vms as usize),
        capacity,
        used,
        free: CapacityOut {
            vms: capacity.vms.saturating_sub(used.vms),
            memory_mib: capacity.memory_mib.saturating_sub(used.memory_mib),
            vcpus: capacity.vcpus.saturating_sub(used.vcpus),
        },
        blocked: None,
        window_open: true,
        windows: Vec::new(),
        health: HostHealthOut::default(),
    }
}

pub async fn vms(State(s): State<Shared>, _r: Reader) -> Result<Json<Vec<VmOut>>, ApiError> {
    Ok(Json(vms_of(&s).await?))
}

pub(crate) async fn vms_of(s: &Shared) -> Result<Vec<VmOut>, ApiError> {
    let now = Utc::now();
    let mut keys = s.store.vm_host_keys().await?;
    Ok(s.store
        .vms()
        .await?
        .into_iter()
        .map(|v| VmOut {
            host_key_sha256: keys.get(&v.name).and_then(|l| ssh_key::PublicKey::from_openssh(l).ok()).map(|k| crate::ssh::fingerprint(&k)),
            host_key: keys.remove(&v.name),
            age_s: (now - v.created_at).num_seconds().max(0),
            name: v.name,
            host: v.host,
            image: v.image,
            state: v.state,
            run_id: v.run_id,
            ssh_port: v.ssh_port,
            created_at: v.created_at,
            hold_until: v.hold_until,
            error: v.error,
        })
        .collect())
}

pub async fn images(State(s): State<Shared>, _r: Reader) -> Json<Vec<ImageOut>> {
    Json(
        s.fleet()
            .images
            .iter()
            .map(|i| ImageOut {
                name: i.name.clone(),
                os: i.os.as_str().into(),
                arch: i.arch.as_str().into(),
                boot: match i.boot {
                    Boot::Disk { .. } => "disk".into(),
                    Boot::Kernel { .. } => "kernel".into(),
                },
                memory_mib: i.memory_mib,
                vcpus: i.vcpus,
                user: i.user.clone(),
                jobs: s.fleet().jobs.iter().filter(|j| j.images.contains(&i.name)).map(|j| j.name.clone()).collect(),
            })
            .collect(),
    )
}

pub async fn jobs(State(s): State<Shared>, _r: Reader) -> Result<Json<Vec<JobOut>>, ApiError> {
    let latest = s.store.latest_finished_runs().await?;
    Ok(Json(s.fleet().jobs.iter().map(|j| job_out(j, &latest)).collect()))
}

pub async fn job(State(s): State<Shared>, _r: Reader, Path(name): Path<String>) -> Result<Json<JobOut>, ApiError> {
    let fleet = s.fleet();
    let Some(j) = fleet.job(&name) else {
        return Err(ApiError::NotFound(format!("no job named `{name}`")));
    };
    let latest = s.store.latest_finished_runs().await?;
    Ok(Json(job_out(j, &latest)))
}

pub(crate) fn job_out(j: &Job, latest: &[RunRow]) -> JobOut {
    JobOut {
        name: j.name.clone(),
        images: j.images.clone(),
        schedule: j.schedule.as_ref().map(|s| ScheduleOut { cron: s.expr.clone(), timezone: s.tz.to_string() }),
        next_fires: j.schedule.as_ref().map(|s| s.upcoming(Utc::now(), 3)).unwrap_or_default(),
        maintainers: j.maintainers.clone(),
        tags: j.tags.clone(),
        steps: j.steps.iter().map(|s| StepDefOut { name: s.name.clone(), kind: s.kind.as_str().into() }).collect(),
        last: j
            .images
            .iter()
            .filter_map(|i| latest.iter().find(|r| r.job == j.name && r.image == *i))
            .map(|r| LastResultOut {
                image: r.image.clone(),
                run_id: r.id.clone(),
                outcome: r.outcome.clone().unwrap_or_default(),
                finished_at: r.finished_at,
            })
            .collect(),
    }
}
