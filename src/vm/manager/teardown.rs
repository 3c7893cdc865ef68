//! Teardown: shutting a VM down and removing everything of it (domain,
//! overlay file or volume, console log), run as its own task.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::libvirt::storage;
use crate::libvirt::{HostHandle, error_chain};
use crate::vm::{VmError, VmState, overlay};

use super::Cmd;
use super::owner::Owner;

impl Owner {
    /// Starts removing a VM: graceful when it is ready and a run's, immediate otherwise (an
    /// idle ready-pool clone has nothing to shut down for, and a guest that ignores ACPI
    /// would cost the whole `shutdown_timeout`).
    pub(super) async fn teardown(&mut self, name: &str) {
        let Some(vm) = self.vms.get(name) else { return };
        let graceful = vm.state == VmState::Ready && vm.pooled.is_none();
        if !vm.state.can_stop() {
            return;
        }
        let Some(tx) = self.tx.upgrade() else { return };
        self.transition(name, VmState::Stopping).await;
        let vm = &self.vms[name];
        let host = &self.hosts[vm.host].config;
        let pool_volume = |vol: &Option<String>| match (&host.image_pool, vol) {
            (Some(pool), Some(vol)) => Some((host.uri.clone(), pool.clone(), vol.clone())),
            _ => None,
        };
        let job = Teardown {
            name: name.to_string(),
            pool_overlay: pool_volume(&vm.pool_overlay),
            pool_seed: pool_volume(&vm.pool_seed),
            seed: vm.seed.clone(),
            handle: self.hosts[vm.host].handle.clone(),
            overlay: vm.overlay.clone(),
            console: vm.console.clone(),
            graceful: graceful.then_some(self.cfg.shutdown_timeout),
            tx,
        };
        tokio::spawn(job.run());
    }

    pub(super) async fn teardown_done(&mut self, name: String, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.transition(&name, VmState::Gone).await;
                let Some(vm) = self.vms.remove(&name) else { return };
                self.ports.release(vm.port);
                if vm.template_key.is_some() || vm.pool_overlay.is_some() {
                    self.clone_gone(vm.host, &name);
                }
                // The versions it booted from may now be unused.
                let current = self.pools.get(&(vm.host, vm.image.name.clone())).and_then(|s| s.current.as_ref());
                if !vm.volumes.is_empty() && current.is_none_or(|c| c.volumes() != vm.volumes) {
                    self.sweep(vm.host, &vm.image.name);
                }
                if let Err(e) = self.store.delete_vm(&name).await {
                    warn!(vm = %name, error = %error_chain(&e), "could not delete a VM row");
                }
                info!(vm = %name, "VM gone");
                let _ = self.ended.send(super::VmEnded { name: name.clone(), run_id: vm.run_id.clone() });
                for w in vm.waiters {
                    let _ = w.send(Ok(()));
                }
                if let Some(p) = vm.launch {
                    let _ = p.reply.send(Err(VmError::Cancelled { name: name.clone() }));
                }
                self.dirty = true;
            }
            Err(error) => {
                // Keep the VM (and its capacity) accounted for; reconciliation retries the removal.
                warn!(vm = %name, %error, "teardown failed");
                if let Some(vm) = self.vms.get_mut(&name) {
                    vm.error = Some(error.clone());
                    for w in vm.waiters.drain(..) {
                        let _ = w.send(Err(VmError::Teardown { name: name.clone(), error: error.clone() }));
                    }
                }
                self.transition(&name, VmState::Failed).await;
            }
        }
    }
}

/// Shutting down and removing one VM, run as its own task.
struct Teardown {
    name: String,
    /// URI, pool and name of an overlay volume to delete.
    pool_overlay: Option<(String, String, String)>,
    /// The same for the VM's seed volume, and its local seed file.
    pool_seed: Option<(String, String, String)>,
    seed: Option<PathBuf>,
    handle: HostHandle,
    overlay: Option<PathBuf>,
    console: PathBuf,
    /// `Some(timeout)`: ask the guest to power off first.
    graceful: Option<Duration>,
    tx: mpsc::UnboundedSender<Cmd>,
}

impl Teardown {
    async fn run(self) {
        let result = self.remove().await;
        let _ = self.tx.send(Cmd::TeardownDone { name: self.name.clone(), result });
    }

    async fn remove(&self) -> Result<(), String> {
        let h = &self.handle;
        if let Some(timeout) = self.graceful
            && h.shutdown(&self.name).await.is_ok()
        {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                match h.is_active(&self.name).await {
                    Ok(Some(true)) => tokio::time::sleep(Duration::from_millis(200)).await,
                    _ => break,
                }
            }
        }
        h.destroy(&self.name).await.map_err(|e| error_chain(&e))?;
        h.undefine(&self.name).await.map_err(|e| error_chain(&e))?;
        if let Some(ov) = &self.overlay {
            overlay::remove(ov).map_err(|e| error_chain(&e))?;
        }
        if let Some(seed) = &self.seed {
            overlay::remove(seed).map_err(|e| error_chain(&e))?;
        }
        for (uri, pool, vol) in [self.pool_overlay.clone(), self.pool_seed.clone()].into_iter().flatten() {
            let what = format!("deleting volume {vol} on host {}", h.name());
            storage::with_deadline(what, h.options().call_timeout, move || storage::delete_volume(&uri, &pool, &vol))
                .await
                .map_err(|e| error_chain(&e))?;
        }
        remove_console(&self.console);
        Ok(())
    }
}

fn remove_console(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %e, "could not remove a console log");
    }
}
