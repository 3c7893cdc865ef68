//! Reconciliation: finding this daemon's domains and overlays that no live VM
//! owns and removing them. **Domains without this instance's paddock mark are
//! never touched.**

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::libvirt::{HostHandle, error_chain, storage};
use crate::store::Store;

use super::overlay;

/// What one reconciliation pass did.
#[derive(Debug, Default, Clone)]
pub struct ReconcileReport {
    /// `(host, domain)` pairs destroyed and undefined.
    pub domains_removed: Vec<(String, String)>,
    pub overlays_removed: Vec<PathBuf>,
    /// `(host, volume)` overlay volumes removed from hosts' image pools.
    pub volumes_removed: Vec<(String, String)>,
    /// Domains seen that are not paddock's (or another instance's); left alone.
    pub foreign_domains: usize,
    /// Hosts that could not be listed (down).
    pub hosts_skipped: Vec<String>,
    pub errors: Vec<String>,
}

/// The owners known at the moment a pass starts. Anything created after
/// `taken_at` is left for the next pass: it may belong to a launch under way.
#[derive(Debug, Clone)]
pub struct LiveSet {
    pub names: HashSet<String>,
    pub taken_at: DateTime<Utc>,
}

/// Removes every domain on `hosts` marked with `instance` and not in `live`,
/// their overlays, and overlay files in `state_dir` that no live VM owns.
/// Each removal is logged and recorded as an event.
pub async fn reconcile(hosts: &[HostHandle], instance: &str, live: &LiveSet, state_dir: &Path, store: &Store) -> ReconcileReport {
    let mut report = ReconcileReport::default();
    for host in hosts {
        let domains = match host.list().await {
            Ok(d) => d,
            Err(e) => {
                report.hosts_skipped.push(host.name().to_string());
                warn!(host = host.name(), error = %error_chain(&e), "reconciliation skipped a host");
                continue;
            }
        };
        for d in domains {
            let Some(mark) = d.mark.filter(|m| m.instance == instance) else {
                report.foreign_domains += 1;
                continue;
            };
            if live.names.contains(&d.name) || mark.created_at > live.taken_at {
                continue;
            }
            let removed = async {
                if d.active {
                    host.destroy(&d.name).await?;
                }
                host.undefine(&d.name).await
            }
            .await;
            match removed {
                Ok(()) => {
                    info!(host = host.name(), vm = %d.name, run_id = %mark.run_id, "reaped an orphaned domain");
                    crate::metrics::leaked_domain_reaped(host.name());
                    let detail = format!("host {}, run {}, created {}", host.name(), mark.run_id, mark.created_at);
                    if let Err(e) = store.record_event("reaped_domain", &d.name, &detail).await {
                        report.errors.push(error_chain(&e));
                    }
                    report.domains_removed.push((host.name().to_string(), d.name.clone()));
                }
                Err(e) => report.errors.push(error_chain(&e)),
            }
        }
    }
    let cutoff = SystemTime::from(live.taken_at);
    match overlay::list(state_dir) {
        Ok(files) => {
            for f in files {
                let owner = overlay::owner(&f);
                let young = std::fs::metadata(&f).and_then(|m| m.modified()).is_ok_and(|t| t > cutoff);
                if live.names.contains(&owner) || young {
                    continue;
                }
                match overlay::remove(&f) {
                    Ok(()) => {
                        info!(path = %f.display(), "removed an orphaned overlay");
                        if let Err(e) = store.record_event("reaped_overlay", &owner, &f.display().to_string()).await {
                            report.errors.push(error_chain(&e));
                        }
                        report.overlays_removed.push(f);
                    }
                    Err(e) => report.errors.push(error_chain(&e)),
                }
            }
        }
        Err(e) => report.errors.push(error_chain(&e)),
    }
    report
}

/// A host with an `image_pool`, whose overlay volumes a pass looks at.
#[derive(Debug, Clone)]
pub struct PoolHost {
    pub name: String,
    pub uri: String,
    pub pool: String,
}

/// How long one host's pool listing or one removal may take.
const POOL_CALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes per-VM volumes (`<vm>-overlay.qcow2`, `<vm>-seed.iso`) of this instance's VMs
/// (names starting `vm_prefix`) from hosts' image pools when no live VM owns
/// them and they were last changed before the pass began. A volume whose pool
/// reports no timestamps is left alone: it might belong to a launch under way.
/// Hosts the domain pass skipped (down) are skipped here too.
pub async fn reconcile_pool_overlays(pools: &[PoolHost], vm_prefix: &str, live: &LiveSet, store: &Store, report: &mut ReconcileReport) {
    let cutoff = SystemTime::from(live.taken_at);
    for host in pools.iter().filter(|h| !report.hosts_skipped.contains(&h.name)) {
        let (uri, pool, prefix) = (host.uri.clone(), host.pool.clone(), vm_prefix.to_string());
        let listed =
            tokio::time::timeout(POOL_CALL_LIMIT, tokio::task::spawn_blocking(move || storage::overlay_volumes(&uri, &pool, &prefix)))
                .await;
        let volumes = match listed {
            Ok(Ok(Ok(v))) => v,
            Ok(Ok(Err(e))) => {
                report.errors.push(format!("listing pool {} on host {}: {}", host.pool, host.name, error_chain(&e)));
                continue;
            }
            Ok(Err(e)) => {
                report.errors.push(format!("listing pool {} on host {}: {e}", host.pool, host.name));
                continue;
            }
            Err(_) => {
                report.errors.push(format!("listing pool {} on host {}: no answer within {POOL_CALL_LIMIT:?}", host.pool, host.name));
                continue;
            }
        };
        // Templates in the pool that a crash cut short (no manifest, domain not being built).
        let instance = vm_prefix.trim_start_matches("paddock-").trim_end_matches('-');
        match crate::vm::template::pool::reap_unfinished(&host.uri, &host.pool, instance, live, POOL_CALL_LIMIT).await {
            Ok(removed) => {
                for v in removed {
                    info!(host = %host.name, pool = %host.pool, volume = %v, "removed a volume of an unfinished warm-start template");
                    let detail = format!("host {}, pool {}, volume {}", host.name, host.pool, v);
                    if let Err(e) = store.record_event("reaped_template", &v, &detail).await {
                        report.errors.push(error_chain(&e));
                    }
                    report.volumes_removed.push((host.name.clone(), v));
                }
            }
            Err(e) => report.errors.push(format!("unfinished templates in pool {} on host {}: {}", host.pool, host.name, error_chain(&e))),
        }
        for v in volumes {
            if live.names.contains(&v.vm) || v.modified.is_none_or(|t| t > cutoff) {
                continue;
            }
            let (uri, pool, volume) = (host.uri.clone(), host.pool.clone(), v.volume.clone());
            let removed =
                tokio::time::timeout(POOL_CALL_LIMIT, tokio::task::spawn_blocking(move || storage::delete_volume(&uri, &pool, &volume)))
                    .await;
            match removed {
                Ok(Ok(Ok(()))) => {
                    info!(host = %host.name, pool = %host.pool, volume = %v.volume, "removed an orphaned overlay or seed volume");
                    let detail = format!("host {}, pool {}, volume {}", host.name, host.pool, v.volume);
                    if let Err(e) = store.record_event("reaped_overlay", &v.vm, &detail).await {
                        report.errors.push(error_chain(&e));
                    }
                    report.volumes_removed.push((host.name.clone(), v.volume));
                }
                Ok(Ok(Err(e))) => report.errors.push(error_chain(&e)),
                Ok(Err(e)) => report.errors.push(format!("removing {}: {e}", v.volume)),
                Err(_) => report.errors.push(format!("removing {}: no answer within {POOL_CALL_LIMIT:?}", v.volume)),
            }
        }
    }
}
