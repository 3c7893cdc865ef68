//! Adoption and reconciliation: at start, held VMs the store remembers are
//! adopted; reconciliation passes (at start and on a timer) reap what no live
//! VM owns, and their reports drop stale rows.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::{Boot, Image};
use crate::libvirt::HostHandle;
use crate::vm::reconcile::{self, LiveSet, PoolHost, ReconcileReport};
use crate::vm::{VmError, VmState};

use super::Cmd;
use super::owner::{Owner, Vm};

impl Owner {
    pub(super) fn live_set(&self) -> LiveSet {
        // Templates being built are live too: their domains must outlast every pass.
        let mut names: std::collections::HashSet<String> = self.vms.keys().cloned().collect();
        names.extend(self.templates.building_domains());
        LiveSet { names, taken_at: Utc::now() }
    }

    /// Hosts with an image pool, and the name prefix of this instance's VMs.
    fn pool_hosts(&self) -> (Vec<PoolHost>, String) {
        let pools = self
            .hosts
            .iter()
            .filter_map(|h| {
                let pool = h.config.image_pool.clone()?;
                Some(PoolHost { name: h.config.name.clone(), uri: h.config.uri.clone(), pool })
            })
            .collect();
        let id = &self.cfg.instance_id;
        (pools, format!("paddock-{}-", &id[..id.len().min(8)]))
    }

    pub(super) async fn reconcile_pass(&self) -> ReconcileReport {
        let handles: Vec<HostHandle> = self.hosts.iter().map(|h| h.handle.clone()).collect();
        let live = self.live_set();
        let mut report = reconcile::reconcile(&handles, &self.cfg.instance_id, &live, &self.cfg.state_dir, &self.store).await;
        let (pools, prefix) = self.pool_hosts();
        reconcile::reconcile_pool_overlays(&pools, &prefix, &live, &self.store, &mut report).await;
        report
    }

    pub(super) fn spawn_reconcile(&mut self, reply: Option<oneshot::Sender<ReconcileReport>>) {
        if self.reconciling && reply.is_none() {
            return;
        }
        let Some(tx) = self.tx.upgrade() else { return };
        self.reconciling = true;
        let handles: Vec<HostHandle> = self.hosts.iter().map(|h| h.handle.clone()).collect();
        let (instance, live, dir, store) = (self.cfg.instance_id.clone(), self.live_set(), self.cfg.state_dir.clone(), self.store.clone());
        let (pools, prefix) = self.pool_hosts();
        tokio::spawn(async move {
            let mut report = reconcile::reconcile(&handles, &instance, &live, &dir, &store).await;
            reconcile::reconcile_pool_overlays(&pools, &prefix, &live, &store, &mut report).await;
            let _ = tx.send(Cmd::ReconcileDone { report, reply });
        });
    }

    /// Drops store rows of VMs no longer live (their domains were just reaped),
    /// and failed VMs whose removal now succeeded.
    pub(super) async fn finish_reconcile(&mut self, report: &ReconcileReport) {
        for e in &report.errors {
            warn!(error = %e, "reconciliation");
        }
        // What the pass reaped (unfinished templates) is gone from the pools' listings too.
        self.list_all_templates();
        let Ok(rows) = self.store.vms().await else { return };
        let skipped: HashSet<&str> = report.hosts_skipped.iter().map(String::as_str).collect();
        for row in rows {
            let on_skipped_host = row.host.as_deref().is_some_and(|h| skipped.contains(h));
            if !self.vms.contains_key(&row.name) && !on_skipped_host {
                let _ = self.store.delete_vm(&row.name).await;
                if let Some(port) = row.ssh_port {
                    self.ports.release(port);
                }
            }
        }
        let failed: Vec<String> =
            self.vms.values().filter(|vm| vm.state == VmState::Failed && vm.launch.is_none()).map(|vm| vm.name.clone()).collect();
        for name in failed {
            self.teardown(&name).await;
        }
    }

    /// At start: VMs the store remembers as ready and held are adopted (their
    /// hold is honoured, then they go); the ports of all remembered VMs are
    /// reserved until reconciliation has dealt with them. After an owner of this
    /// same process failed (`in_process`), every ready VM is adopted, held or not:
    /// the run using it is still under way and releases it by name.
    pub(super) async fn adopt(&mut self, in_process: bool) -> Result<(), VmError> {
        let rows = self.store.vms().await?;
        let now = Utc::now();
        for row in rows {
            if let Some(port) = row.ssh_port {
                self.ports.reserve(port);
            }
            let host = row.host.as_deref().and_then(|h| self.hosts.iter().position(|s| s.config.name == h));
            let held = row.hold_until.is_some_and(|t| t > now);
            // An idle ready-pool clone has no run to release it: the pass reaps it (its
            // session and pool bookkeeping went with the failed owner) and the pool refills.
            if row.run_id.as_deref() == Some(super::ready_pool::READY_POOL_RUN) {
                continue;
            }
            let (Some(host), Some(port), true, Some(VmState::Ready)) = (host, row.ssh_port, held || in_process, VmState::parse(&row.state))
            else {
                continue;
            };
            if self.hosts[host].handle.is_active(&row.name).await.ok().flatten() != Some(true) {
                continue;
            }
            info!(vm = %row.name, hold_until = ?row.hold_until, in_process, "adopting a VM from before the restart");
            // On a pool host it boots from the image's volumes there (kept while it
            // lives) and may have an overlay volume (removed with it; absent is fine).
            let (volumes, pool_overlay) = match &self.hosts[host].config.image_pool {
                Some(_) => {
                    let recorded = self.store.host_volumes(&self.hosts[host].config.name).await?;
                    let volumes = recorded.into_iter().filter(|v| v.image == row.image).map(|v| v.volume).collect();
                    (volumes, Some(format!("{}{}", row.name, crate::libvirt::storage::OVERLAY_SUFFIX)))
                }
                None => (Vec::new(), None),
            };
            // The image config may have changed since; only its name matters for a held VM.
            let image = Image { name: row.image.clone(), ..placeholder_image() };
            let host_key = self.store.vm_host_key(&row.name).await?.and_then(|l| ssh_key::PublicKey::from_openssh(&l).ok());
            let console = row.console_path.map(PathBuf::from).unwrap_or_default();
            if !in_process {
                // In this process the console's reader (if any) still runs.
                self.reattach_console(host, &row.name, &console).await;
            }
            self.vms.insert(
                row.name.clone(),
                Vm {
                    name: row.name.clone(),
                    run_id: row.run_id.clone().unwrap_or_default(),
                    image,
                    host,
                    state: VmState::Ready,
                    port,
                    overlay: row.overlay_path.map(PathBuf::from),
                    console,
                    created_at: row.created_at,
                    ready_at: row.ready_at,
                    hold_until: row.hold_until,
                    // A run of this process still uses an unheld VM; a held one is released.
                    released: held || !in_process,
                    error: None,
                    launch: None,
                    waiters: Vec::new(),
                    volumes,
                    pool_overlay,
                    seed: Some(crate::vm::seed::path_for(&self.cfg.state_dir, &row.name)).filter(|p| p.exists()),
                    // A seeded VM on a pool host has its seed there as a volume.
                    pool_seed: (host_key.is_some() && self.hosts[host].config.image_pool.is_some())
                        .then(|| format!("{}{}", row.name, crate::vm::seed::SEED_SUFFIX)),
                    host_key,
                    pooled: None,
                    // Not recorded in the store: an adopted clone is not counted as one.
                    template_key: None,
                },
            );
        }
        Ok(())
    }
}

impl Owner {
    /// A pool host's console is a pty read over the connection, and that reader died with
    /// the old daemon: attach a new one, appending to the VM's console copy. (A host without
    /// a pool has QEMU write the file itself, which goes on; the test driver has no consoles.)
    async fn reattach_console(&self, host: usize, vm: &str, console: &std::path::Path) {
        let h = &self.hosts[host];
        let test_driver = match h.handle.status() {
            crate::libvirt::HostStatus::Up(facts) => facts.domain_type(h.config.accelerator) == "test",
            _ => h.config.uri.starts_with("test:"),
        };
        if h.config.image_pool.is_none() || test_driver || console.as_os_str().is_empty() {
            return;
        }
        match h.handle.attach_console(vm, crate::libvirt::ConsoleSink::new(console)).await {
            Ok(()) => info!(vm, host = %h.config.name, "console re-attached after the restart"),
            Err(e) => warn!(vm, host = %h.config.name, error = %crate::error::chain(&e), "could not re-attach the console"),
        }
    }
}

/// A stand-in for an adopted VM's image: it takes no new capacity decisions
/// beyond its own memory/vCPU count, which are unknown after a restart.
fn placeholder_image() -> Image {
    Image {
        name: String::new(),
        os: crate::config::Os::Linux,
        arch: crate::config::Arch::X86_64,
        boot: Boot::Kernel { kernel: PathBuf::new(), initrd: PathBuf::new(), cmdline: String::new() },
        memory_mib: 0,
        vcpus: 0,
        user: String::new(),
        shell: crate::config::Shell::Sh,
        host_key: crate::config::HostKeyPolicy::Console,
        trusts_fleet_ca: false,
        boot_timeout: Duration::ZERO,
        nic_model: None,
        tpm: false,
        smc_key: None,
        firmware: None,
        network: crate::config::GuestNetwork::Outbound,
        platform: String::new(),
        start: crate::config::Start::Cold,
        min_ready: 0,
        guest_agent: false,
    }
}
