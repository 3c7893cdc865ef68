//! Persistent machines (`[[machines]]`, issue 18): libvirt domains that exist before paddock
//! and outlive every run — a licensed macOS or Windows box kept as one long-lived domain.
//!
//! paddock drives such a machine by name and never defines, undefines, deletes or destroys
//! it: it carries no `<paddock:vm>` mark, so reconciliation (which removes only domains marked
//! with this daemon's instance) never sees it, and no VM row names it. A run waits for its
//! machine's [`Turn`] (one run at a time per machine), reverts it to its snapshot (which also
//! starts it) or starts it when it is off, logs in on the configured forward port checking the
//! pinned host key, runs its steps, and then leaves it running, shuts it down or reverts it
//! again (`after`). A daemon killed mid-run leaves the machine as it was; the next run reverts
//! it anyway.
//!
//! Implementation note: the turns are one fair `tokio::sync::Mutex` per machine (host and
//! domain), held by the run from before the revert until its `after` step is done; a second
//! trigger waits on it as a queued run. No other state is kept, so there is no owner task.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::time::Instant;

use crate::config::{AfterRun, Machine};
use crate::libvirt::machine::{Inspection, MachineOp};
use crate::libvirt::{HostHandle, LibvirtError};

/// Why a persistent machine could not be made ready or put back; one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("machine {machine}: host {host} is not one of this daemon's hosts")]
    NoHost { machine: String, host: String },
    #[error("machine {machine}: asking host {host} about domain {domain}")]
    Inspect { machine: String, host: String, domain: String, source: Box<LibvirtError> },
    #[error("machine {machine}: no domain {domain} is defined on host {host}")]
    Missing { machine: String, host: String, domain: String },
    #[error("machine {machine}: domain {domain} on host {host} has no snapshot {snapshot}")]
    NoSnapshot { machine: String, host: String, domain: String, snapshot: String },
    #[error("machine {machine}: reverting {domain} to snapshot {snapshot}")]
    Revert { machine: String, domain: String, snapshot: String, source: Box<LibvirtError> },
    #[error("machine {machine}: starting {domain}")]
    Start { machine: String, domain: String, source: Box<LibvirtError> },
    #[error("machine {machine}: shutting down {domain}")]
    Shutdown { machine: String, domain: String, source: Box<LibvirtError> },
}

/// One lock per machine, by host and domain.
type TurnLocks = HashMap<(String, String), Arc<Mutex<()>>>;

/// The turns of every persistent machine; cheap to clone (one shared map).
#[derive(Clone, Default)]
pub struct Turns {
    locks: Arc<std::sync::Mutex<TurnLocks>>,
}

/// A run's exclusive use of one machine; the next run's turn starts when it is dropped.
pub struct Turn {
    _guard: OwnedMutexGuard<()>,
}

impl Turns {
    /// Waits until no other run uses `machine` (first come, first served).
    pub async fn wait(&self, machine: &Machine) -> Turn {
        let lock = {
            let mut locks = self.locks.lock().expect("machine turns");
            locks.entry((machine.host.clone(), machine.domain.clone())).or_default().clone()
        };
        Turn { _guard: lock.lock_owned().await }
    }
}

async fn inspect(machine: &Machine, handle: &HostHandle) -> Result<Inspection, MachineError> {
    let op = MachineOp::Inspect { domain: machine.domain.clone(), snapshot: machine.snapshot.clone() };
    let found = handle.machine(op).await.map_err(|source| MachineError::Inspect {
        machine: machine.name.clone(),
        host: machine.host.clone(),
        domain: machine.domain.clone(),
        source: Box::new(source),
    })?;
    if !found.defined {
        return Err(MachineError::Missing { machine: machine.name.clone(), host: machine.host.clone(), domain: machine.domain.clone() });
    }
    if let (Some(snapshot), Some(false)) = (&machine.snapshot, found.has_snapshot) {
        return Err(MachineError::NoSnapshot {
            machine: machine.name.clone(),
            host: machine.host.clone(),
            domain: machine.domain.clone(),
            snapshot: snapshot.clone(),
        });
    }
    Ok(found)
}

/// Whether the machine's domain exists on its host and has its snapshot (`paddock check`).
pub async fn check(machine: &Machine, handle: &HostHandle) -> Result<(), MachineError> {
    inspect(machine, handle).await.map(drop)
}

async fn revert(machine: &Machine, handle: &HostHandle, snapshot: &str) -> Result<(), MachineError> {
    let op = MachineOp::Revert { domain: machine.domain.clone(), snapshot: snapshot.to_string() };
    handle.machine(op).await.map(drop).map_err(|source| MachineError::Revert {
        machine: machine.name.clone(),
        domain: machine.domain.clone(),
        snapshot: snapshot.to_string(),
        source: Box::new(source),
    })
}

/// What `prepare` did, for the run's log and timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    Reverted,
    Started,
    AlreadyRunning,
}

/// Makes the machine ready for a run (the caller holds its [`Turn`]): reverted to its
/// snapshot (running afterwards), else started if it is off. SSH is the caller's to await.
pub async fn prepare(machine: &Machine, handle: &HostHandle) -> Result<Prepared, MachineError> {
    let found = inspect(machine, handle).await?;
    if let Some(snapshot) = &machine.snapshot {
        revert(machine, handle, snapshot).await?;
        return Ok(Prepared::Reverted);
    }
    if found.active {
        return Ok(Prepared::AlreadyRunning);
    }
    handle.start(&machine.domain).await.map_err(|source| MachineError::Start {
        machine: machine.name.clone(),
        domain: machine.domain.clone(),
        source: Box::new(source),
    })?;
    Ok(Prepared::Started)
}

/// How often a machine being shut down is asked whether it is off.
const SHUTDOWN_POLL: Duration = Duration::from_millis(500);

/// Puts the machine back after its run, as its `after` says. A shutdown waits (within
/// `limit`) for the domain to be off, so the next run finds it off; one that is still running
/// then is left running, never destroyed.
pub async fn after_run(machine: &Machine, handle: &HostHandle, limit: Duration) -> Result<(), MachineError> {
    match machine.after {
        AfterRun::Keep => Ok(()),
        AfterRun::Revert => match &machine.snapshot {
            Some(s) => revert(machine, handle, s).await,
            None => Ok(()),
        },
        AfterRun::Shutdown => {
            let failed =
                |source| MachineError::Shutdown { machine: machine.name.clone(), domain: machine.domain.clone(), source: Box::new(source) };
            handle.shutdown(&machine.domain).await.map_err(failed)?;
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                match handle.is_active(&machine.domain).await {
                    Ok(Some(true)) => tokio::time::sleep(SHUTDOWN_POLL).await,
                    Ok(_) => return Ok(()),
                    Err(e) => return Err(failed(e)),
                }
            }
            tracing::warn!(machine = %machine.name, domain = %machine.domain, "still running after the shutdown's deadline; left running");
            Ok(())
        }
    }
}

/// The host handle of a machine, or why there is none.
pub fn handle_of(machine: &Machine, handles: &[HostHandle]) -> Result<HostHandle, MachineError> {
    handles
        .iter()
        .find(|h| h.name() == machine.host)
        .cloned()
        .ok_or_else(|| MachineError::NoHost { machine: machine.name.clone(), host: machine.host.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Arch, HostKeyPolicy, Os, Shell};

    fn machine(name: &str, domain: &str) -> Machine {
        Machine {
            name: name.into(),
            host: "local".into(),
            domain: domain.into(),
            snapshot: None,
            ssh_port: 2222,
            host_key: HostKeyPolicy::File("/dev/null".into()),
            user: "root".into(),
            os: Os::Linux,
            arch: Arch::X86_64,
            shell: Shell::Sh,
            boot_timeout: Duration::from_secs(60),
            after: AfterRun::Keep,
            platform: name.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_run_at_a_time_per_machine_first_come_first_served_and_machines_apart() {
        let turns = Turns::default();
        let (a, b) = (machine("a", "dom-a"), machine("b", "dom-b"));
        let first = turns.wait(&a).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for n in 1..=2 {
            let (turns, a, tx) = (turns.clone(), a.clone(), tx.clone());
            tokio::spawn(async move {
                let t = turns.wait(&a).await;
                tx.send(n).unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(t);
            });
            // Queued in this order.
            tokio::task::yield_now().await;
        }
        // Another machine is not held up by `a`.
        let _other = tokio::time::timeout(Duration::from_secs(1), turns.wait(&b)).await.expect("machine b is free");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(rx.try_recv().is_err(), "a second run got machine a while the first held it");
        drop(first);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
    }
}
