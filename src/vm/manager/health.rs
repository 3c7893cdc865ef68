//! Host health: up/down periods, donors' availability windows (`hard_stop`),
//! hosts meant for a job that cannot take it, launch counts and quarantine,
//! drains and resumes.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use tracing::warn;

use crate::config::Host;
use crate::hosts::Block;
use crate::libvirt::{HostStatus, error_chain};
use crate::vm::{VmError, VmState};

use super::owner::{Owner, Pending};

impl Owner {
    /// Drains or quarantines a host, or (`None`) resumes it with a clean slate.
    pub(super) fn set_block(&mut self, host: String, block: Option<Block>) -> Result<(), VmError> {
        let slot = self.hosts.iter_mut().find(|h| h.config.name == host).ok_or(VmError::UnknownHost { host })?;
        if block.is_none() {
            // A resumed host starts with a clean slate.
            slot.consecutive_failures = 0;
            slot.cooling_until = None;
        }
        slot.block = block;
        Ok(())
    }

    /// Records up/down periods; a host going down is an event and a notification.
    pub(super) async fn watch_hosts(&mut self) {
        for i in 0..self.hosts.len() {
            let status = self.hosts[i].handle.status();
            let (up, reason) = match &status {
                HostStatus::Connecting => continue,
                HostStatus::Up(_) => (true, None),
                HostStatus::Down { reason, .. } => (false, Some(reason.clone())),
            };
            if self.hosts[i].last_up == Some(up) {
                continue;
            }
            let name = self.hosts[i].config.name.clone();
            let was = self.hosts[i].last_up.replace(up);
            let _ = self.store.record_host_state(&name, up, reason.as_deref()).await;
            if !up {
                let reason = reason.unwrap_or_default();
                let _ = self.store.record_event("host_down", &name, &reason).await;
                notify(&self.hosts[i].config, "down", &reason);
            } else if was == Some(false) {
                let _ = self.store.record_event("host_up", &name, "").await;
            }
        }
    }

    /// Outside every window of a `hard_stop` host, its VMs are stopped.
    pub(super) async fn hard_stops(&mut self) {
        let wall = self.cfg.clock.now();
        let closed: HashSet<usize> = self
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.config.limits.hard_stop && !h.config.limits.open_at(wall))
            .map(|(i, _)| i)
            .collect();
        if closed.is_empty() {
            return;
        }
        let names: Vec<String> = self
            .vms
            .values()
            .filter(|vm| closed.contains(&vm.host) && vm.state.can_stop() && vm.state != VmState::Stopping)
            .map(|vm| vm.name.clone())
            .collect();
        for name in names {
            let host = self.hosts[self.vms[&name].host].config.name.clone();
            warn!(vm = %name, %host, "the donor's window closed (hard_stop): stopping the VM");
            let _ = self.store.record_event("window_hard_stop", &name, &format!("host {host}")).await;
            self.teardown(&name).await;
        }
    }

    /// A queued run of a job that names hosts meant for it (their `jobs`
    /// allow-list lists it) but none of them can take it now: said once.
    pub(super) async fn report_missed_job(&mut self, pending: &mut Pending) {
        let Some(job) = pending.req.job.clone() else { return };
        if pending.missed_reported {
            return;
        }
        let wall = self.cfg.clock.now();
        let mut missed = Vec::new();
        for slot in &self.hosts {
            let meant = slot.config.limits.jobs.as_ref().is_some_and(|l| l.contains(&job));
            if !meant {
                continue;
            }
            let why = match (&slot.block, slot.handle.status().is_up(), slot.config.limits.open_at(wall)) {
                (Some(b), _, _) => format!("{}: {}", b.kind(), b.reason()),
                (None, false, _) => "down".to_string(),
                (None, true, false) => "outside its availability windows".to_string(),
                (None, true, true) => continue,
            };
            missed.push((slot.config.name.clone(), why));
        }
        if missed.is_empty() {
            return;
        }
        pending.missed_reported = true;
        for (host, why) in missed {
            warn!(%host, %job, run_id = %pending.req.run_id, %why, "a host meant for this job cannot run it");
            let detail = format!("job {job} (run {}): {why}", pending.req.run_id);
            let _ = self.store.record_event("host_missed_job", &host, &detail).await;
        }
    }

    /// Counts a launch on host `i` and quarantines the host when its failures
    /// in a row reach the donor's `quarantine_after`.
    pub(super) async fn count_launch(&mut self, i: usize, vm: &str, result: Result<Duration, &str>) {
        let name = self.hosts[i].config.name.clone();
        let (ok, boot_ms, error) = match result {
            Ok(d) => (true, Some(d.as_millis() as u64), None),
            Err(e) => (false, None, Some(e)),
        };
        if let Err(e) = self.store.record_launch(&name, vm, ok, boot_ms, error).await {
            warn!(host = %name, error = %error_chain(&e), "could not record a launch");
        }
        let slot = &mut self.hosts[i];
        if ok {
            slot.consecutive_failures = 0;
            return;
        }
        slot.consecutive_failures += 1;
        let limit = slot.config.limits.quarantine_after;
        if slot.consecutive_failures < limit || slot.block.is_some() {
            return;
        }
        let reason = format!("{} launches in a row failed; last: {}", slot.consecutive_failures, error.unwrap_or_default());
        let block = Block::Quarantined { reason: reason.clone(), at: Utc::now() };
        slot.block = Some(block.clone());
        warn!(host = %name, %reason, "host quarantined until an admin resumes it");
        if let Err(e) = self.store.set_host_block(&name, Some(block), None).await {
            warn!(host = %name, error = %error_chain(&e), "could not persist a quarantine");
        }
        let _ = self.store.record_event("host_quarantined", &name, &reason).await;
        notify(&self.hosts[i].config, "quarantined", &reason);
    }
}

/// Runs the host's `notify_command` (through `sh -c`) with `PADDOCK_HOST`,
/// `PADDOCK_HOST_URI`, `PADDOCK_EVENT` and `PADDOCK_REASON` set; never waits for it.
fn notify(host: &Host, event: &str, reason: &str) {
    let Some(cmd) = host.limits.notify_command.clone() else { return };
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(&cmd)
        .env("PADDOCK_HOST", &host.name)
        .env("PADDOCK_HOST_URI", &host.uri)
        .env("PADDOCK_EVENT", event)
        .env("PADDOCK_REASON", reason)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    let name = host.name.clone();
    match c.spawn() {
        Ok(mut child) => {
            tokio::spawn(async move {
                match child.wait().await {
                    Ok(st) if st.success() => {}
                    Ok(st) => warn!(host = %name, status = %st, "notify_command failed"),
                    Err(e) => warn!(host = %name, error = %e, "notify_command failed"),
                }
            });
        }
        Err(e) => warn!(host = %name, error = %e, "could not run notify_command"),
    }
}
