//! Reconciliation: finding this daemon's domains, overlays and per-VM pool
//! volumes that no live VM owns and removing them. **Domains without this
//! instance's paddock mark are never touched; in a pool only volumes named for
//! one of this instance's VMs (`paddock-<instance8>-<8 hex>-…`) are.** Hosts
//! are visited in parallel, so a host that is down or slow to answer (every
//! call has a deadline) delays no other host's clean-up.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::libvirt::storage;
use crate::libvirt::{HostHandle, error_chain};
use crate::store::Store;

use super::overlay;

/// What one reconciliation pass did.
#[derive(Debug, Default, Clone)]
pub struct ReconcileReport {
    /// `(host, domain)` pairs destroyed and undefined.
    pub domains_removed: Vec<(String, String)>,
    pub overlays_removed: Vec<PathBuf>,
    /// `(host, volume)` pairs deleted from hosts' image pools (overlays, seeds).
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

/// One host to reconcile: its actor and, for hosts with an `image_pool`, the
/// URI and pool whose per-VM volumes are checked too.
#[derive(Clone)]
pub struct HostToReconcile {
    pub handle: HostHandle,
    pub pool: Option<(String, String)>,
}

/// How long listing or deleting a pool's volumes may take in one pass.
const POOL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes every domain on `hosts` marked with `instance` and not in `live`,
/// their overlays, and overlay files in `state_dir` that no live VM owns.
/// Each removal is logged and recorded as an event.
pub async fn reconcile(hosts: &[HostHandle], instance: &str, live: &LiveSet, state_dir: &Path, store: &Store) -> ReconcileReport {
    let hosts: Vec<HostToReconcile> = hosts.iter().map(|h| HostToReconcile { handle: h.clone(), pool: None }).collect();
    reconcile_hosts(&hosts, instance, live, state_dir, store).await
}

/// [`reconcile`], plus the per-VM volumes (overlays, seeds) in hosts' pools.
pub async fn reconcile_hosts(
    hosts: &[HostToReconcile],
    instance: &str,
    live: &LiveSet,
    state_dir: &Path,
    store: &Store,
) -> ReconcileReport {
    let mut report = ReconcileReport::default();
    let mut tasks = tokio::task::JoinSet::new();
    for host in hosts.iter().cloned() {
        let (instance, live, store) = (instance.to_string(), live.clone(), store.clone());
        tasks.spawn(async move { reconcile_host(host, &instance, &live, &store).await });
    }
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(part) => {
                report.domains_removed.extend(part.domains_removed);
                report.volumes_removed.extend(part.volumes_removed);
                report.foreign_domains += part.foreign_domains;
                report.hosts_skipped.extend(part.hosts_skipped);
                report.errors.extend(part.errors);
            }
            Err(e) => report.errors.push(format!("a reconciliation task failed: {e}")),
        }
    }
    let cutoff = SystemTime::from(live.taken_at);
    match overlay::list(state_dir) {
        Ok(files) => {
            for f in files {
                let owner = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
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

async fn reconcile_host(host: HostToReconcile, instance: &str, live: &LiveSet, store: &Store) -> ReconcileReport {
    let mut report = ReconcileReport::default();
    let HostToReconcile { handle: host, pool } = host;
    let domains = match host.list().await {
        Ok(d) => d,
        Err(e) => {
            report.hosts_skipped.push(host.name().to_string());
            warn!(host = host.name(), error = %error_chain(&e), "reconciliation skipped a host");
            return report;
        }
    };
    let mut present = HashSet::new();
    for d in domains {
        present.insert(d.name.clone());
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
                present.remove(&d.name);
                info!(host = host.name(), vm = %d.name, run_id = %mark.run_id, "reaped an orphaned domain");
                let detail = format!("host {}, run {}, created {}", host.name(), mark.run_id, mark.created_at);
                if let Err(e) = store.record_event("reaped_domain", &d.name, &detail).await {
                    report.errors.push(error_chain(&e));
                }
                report.domains_removed.push((host.name().to_string(), d.name.clone()));
            }
            Err(e) => report.errors.push(error_chain(&e)),
        }
    }
    if let Some((uri, pool)) = pool {
        reap_pool_volumes(&host, &uri, &pool, instance, live, &present, store, &mut report).await;
    }
    report
}

/// The VM a pool volume belongs to: `paddock-<instance8>-<8 hex>` when the
/// volume is named `<that>-<suffix>` and is not an image version (those end
/// in 16 hex digits and are the image manager's).
pub fn volume_owner<'a>(volume: &'a str, instance: &str) -> Option<&'a str> {
    let short = &instance[..instance.len().min(8)];
    let rest = volume.strip_prefix("paddock-")?.strip_prefix(short)?.strip_prefix('-')?;
    let (id, suffix) = rest.split_at_checked(8)?;
    let suffix = suffix.strip_prefix('-')?;
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(id) || suffix.is_empty() || (suffix.len() >= 16 && hex(&suffix[suffix.len() - 16..])) {
        return None;
    }
    Some(&volume[.."paddock-".len() + short.len() + 1 + 8])
}

#[allow(clippy::too_many_arguments)]
async fn reap_pool_volumes(
    host: &HostHandle,
    uri: &str,
    pool: &str,
    instance: &str,
    live: &LiveSet,
    present: &HashSet<String>,
    store: &Store,
    report: &mut ReconcileReport,
) {
    let (u, p) = (uri.to_string(), pool.to_string());
    let what = format!("listing pool {pool} on host {}", host.name());
    let volumes = match storage::with_deadline(what, POOL_DEADLINE, move || storage::list_volumes(&u, &p)).await {
        Ok(v) => v,
        Err(e) => {
            report.errors.push(error_chain(&e));
            return;
        }
    };
    let cutoff = SystemTime::from(live.taken_at);
    for v in volumes {
        let Some(owner) = volume_owner(&v.name, instance) else { continue };
        // A volume newer than the pass may belong to a launch under way; an
        // unknown time is treated the same way (left for a later pass).
        let young = v.modified.is_none_or(|t| t > cutoff);
        if live.names.contains(owner) || present.contains(owner) || young {
            continue;
        }
        let (u, p, n) = (uri.to_string(), pool.to_string(), v.name.clone());
        let what = format!("deleting volume {} on host {}", v.name, host.name());
        match storage::with_deadline(what, POOL_DEADLINE, move || storage::delete_volume(&u, &p, &n)).await {
            Ok(()) => {
                info!(host = host.name(), volume = %v.name, "removed an orphaned pool volume");
                let detail = format!("host {}, pool {pool}", host.name());
                if let Err(e) = store.record_event("reaped_volume", &v.name, &detail).await {
                    report.errors.push(error_chain(&e));
                }
                report.volumes_removed.push((host.name().to_string(), v.name));
            }
            Err(e) => report.errors.push(error_chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::volume_owner;

    #[test]
    fn only_volumes_named_for_this_instances_vms_have_an_owner() {
        let inst = "0123abcdeeee";
        assert_eq!(volume_owner("paddock-0123abcd-deadbeef-overlay.qcow2", inst), Some("paddock-0123abcd-deadbeef"));
        assert_eq!(volume_owner("paddock-0123abcd-deadbeef-seed.iso", inst), Some("paddock-0123abcd-deadbeef"));
        // Another instance's, an image version, odd shapes.
        assert_eq!(volume_owner("paddock-99999999-deadbeef-overlay.qcow2", inst), None);
        assert_eq!(volume_owner("paddock-0123abcd-deadbeef-disk-0123456789abcdef", inst), None);
        assert_eq!(volume_owner("paddock-0123abcd-deadbee-overlay.qcow2", inst), None);
        assert_eq!(volume_owner("paddock-0123abcd-deadbeef", inst), None);
        assert_eq!(volume_owner("paddock-tiny-kernel-0123456789abcdef", inst), None);
    }
}
