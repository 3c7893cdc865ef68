//! The warm-start templates in hosts' pools, as the owner last listed them: the templates
//! listing (`GET /api/v1/templates`, the dashboard's card) is served from here and never lists
//! a host's pool itself, so a request costs no libvirt I/O and a host that does not answer
//! costs no request its deadline.
//!
//! A pool host is listed (`template::pool::survey` on a blocking thread, within
//! [`LISTING_LIMIT`]) after every reconciliation pass (the one at start included), when a
//! template build starts or ends there (`Templates::build_sites`, looked at every tick), and
//! when a warm clone comes up there restored from a template the last listing lacks. Between
//! listings the clone counts follow the owner's own VMs: a clone restored since is counted, one
//! torn down since is not. At most one listing per host runs at a time; one asked for meanwhile
//! runs when it ends.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::warn;

use crate::libvirt::storage::OVERLAY_SUFFIX;
use crate::vm::VmState;
use crate::vm::template::pool::{self as tpool, Surveyed};

use super::Cmd;
use super::owner::Owner;

/// How long one pool host's listing may take.
pub(super) const LISTING_LIMIT: Duration = Duration::from_secs(15);

/// One pool host's templates as last listed.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolListing {
    pub host: String,
    pub pool: String,
    /// When the listing was taken; `None` before the first one ended.
    pub listed_at: Option<DateTime<Utc>>,
    /// The templates, with their clones counted as of now; why the pool could not be listed
    /// otherwise (a reason that quotes no URI: the detail went to the log).
    pub templates: Result<Vec<Surveyed>, String>,
}

struct Listed {
    at: DateTime<Utc>,
    templates: Result<Vec<Surveyed>, String>,
    /// VMs of this host torn down since the listing (their overlays may be in it).
    gone: HashSet<String>,
}

/// The owner's template listings, per host index.
#[derive(Default)]
pub(super) struct Listings {
    last: HashMap<usize, Listed>,
    running: HashSet<usize>,
    again: HashSet<usize>,
    /// Hosts with a template build under way at the last tick.
    building: HashSet<String>,
}

impl Owner {
    /// Lists the templates in `host`'s pool off the owner task (a host without a pool has none
    /// there); when a listing of it runs already, once more after it.
    pub(super) fn list_templates(&mut self, host: usize) {
        let Some(pool) = self.hosts[host].config.image_pool.clone() else { return };
        if !self.listings.running.insert(host) {
            self.listings.again.insert(host);
            return;
        }
        let Some(tx) = self.tx.upgrade() else { return };
        let (uri, instance, name) =
            (self.hosts[host].config.uri.clone(), self.cfg.instance_id.clone(), self.hosts[host].config.name.clone());
        tokio::spawn(async move {
            let at = Utc::now();
            let task = tokio::task::spawn_blocking(move || tpool::survey(&uri, &pool, &instance));
            let templates = match tokio::time::timeout(LISTING_LIMIT, task).await {
                Ok(Ok(Ok(t))) => Ok(t),
                Ok(Ok(Err(e))) => {
                    warn!(host = %name, error = %crate::error::chain(&e), "could not list the templates in the host's pool");
                    Err("its pool could not be listed (the daemon's log says why)".to_string())
                }
                Ok(Err(e)) => {
                    warn!(host = %name, error = %e, "the pool listing task failed");
                    Err("its pool could not be listed (the daemon's log says why)".to_string())
                }
                Err(_) => {
                    warn!(host = %name, limit_s = LISTING_LIMIT.as_secs(), "the host's pool did not answer the templates listing in time");
                    Err(format!("its pool did not answer within {} s", LISTING_LIMIT.as_secs()))
                }
            };
            let _ = tx.send(Cmd::TemplatesListed { host, at, templates });
        });
    }

    /// Every pool host's templates listed again (after a reconciliation pass).
    pub(super) fn list_all_templates(&mut self) {
        for host in 0..self.hosts.len() {
            self.list_templates(host);
        }
    }

    pub(super) fn templates_listed(&mut self, host: usize, at: DateTime<Utc>, templates: Result<Vec<Surveyed>, String>) {
        self.listings.running.remove(&host);
        self.listings.last.insert(host, Listed { at, templates, gone: HashSet::new() });
        if self.listings.again.remove(&host) {
            self.list_templates(host);
        }
    }

    /// A template build started or ended on a host since the last tick: list that host.
    pub(super) fn watch_template_builds(&mut self) {
        let now: HashSet<String> = self.templates.build_sites().into_iter().map(|(host, _)| host).collect();
        if now == self.listings.building {
            return;
        }
        let changed: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| {
                let name = &self.hosts[i].config.name;
                now.contains(name) != self.listings.building.contains(name)
            })
            .collect();
        self.listings.building = now;
        for host in changed {
            self.list_templates(host);
        }
    }

    /// A warm clone came up on `host`, restored from the template of `key`: when the last
    /// listing does not have that template (it was just made), the host is listed again.
    pub(super) fn clone_restored(&mut self, host: usize, key: &str) {
        let known = self
            .listings
            .last
            .get(&host)
            .is_some_and(|l| l.templates.as_ref().is_ok_and(|t| t.iter().any(|s| s.template.as_ref().is_some_and(|t| t.key == key))));
        if !known {
            self.list_templates(host);
        }
    }

    /// VM `name` of `host` is gone: no longer a clone of any template listed there.
    pub(super) fn clone_gone(&mut self, host: usize, name: &str) {
        if let Some(l) = self.listings.last.get_mut(&host) {
            l.gone.insert(name.to_string());
        }
    }

    /// Every pool host's last listing, in the fleet's order, with clone counts as of now: the
    /// clone volumes the listing saw, less those of VMs gone since, plus the live VMs restored
    /// from the template since (`Vm::template_key`).
    pub(super) fn template_listing(&self) -> Vec<PoolListing> {
        let mut out = Vec::new();
        for (i, slot) in self.hosts.iter().enumerate() {
            let Some(pool) = slot.config.image_pool.clone() else { continue };
            let Some(last) = self.listings.last.get(&i) else {
                out.push(PoolListing {
                    host: slot.config.name.clone(),
                    pool,
                    listed_at: None,
                    templates: Err("its pool has not been listed yet".into()),
                });
                continue;
            };
            let templates = last.templates.clone().map(|mut list| {
                for t in &mut list {
                    let Some(key) = t.template.as_ref().map(|m| m.key.clone()) else { continue };
                    let mut clones: HashSet<String> = t
                        .clone_volumes
                        .iter()
                        .map(|v| v.strip_suffix(OVERLAY_SUFFIX).unwrap_or(v).to_string())
                        .filter(|vm| !last.gone.contains(vm))
                        .collect();
                    clones.extend(
                        self.vms
                            .values()
                            .filter(|vm| vm.host == i && vm.state != VmState::Gone && vm.template_key.as_deref() == Some(key.as_str()))
                            .map(|vm| vm.name.clone()),
                    );
                    t.clones = clones.len();
                }
                list
            });
            out.push(PoolListing { host: slot.config.name.clone(), pool, listed_at: Some(last.at), templates });
        }
        out
    }
}
