//! A run on a persistent machine (`[[machines]]`): wait for the machine's turn, revert or
//! start it, then the same login, steps, artifacts and result as on a disposable VM; at the
//! end the machine is put back as its `after` says — never destroyed, never undefined.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Executor, Retry, cancelled, conclude};
use crate::config::{Fleet, Image, Job, Machine};
use crate::error::chain as error_chain;
use crate::machines::{self, Prepared};
use crate::runs::state::{Outcome, RunState};
use crate::runs::transition::TransitionError;
use crate::ssh::ClientKey;
use crate::store::RunRow;
use crate::vm::{LaunchStage, ReadyVm, Started, VmManager};

impl Executor {
    /// Carries a run on `machine` to its end (the run is `queued` until the machine's turn).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn execute_on_machine(
        &self,
        mut row: RunRow,
        mut state: RunState,
        fleet: &Fleet,
        machine: Machine,
        job: Job,
        guest: Image,
        vms: VmManager,
        key: Arc<ClientKey>,
        run_dir: PathBuf,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<Option<RunRow>, TransitionError> {
        let Some(host) = fleet.host(&machine.host) else {
            let reason = format!("machine {}: no host named {}", machine.name, machine.host);
            return self.fail_without_vm(fleet, &row, state, &reason).await.map(|()| None);
        };
        let handle = match machines::handle_of(&machine, vms.host_handles()) {
            Ok(h) => h,
            Err(e) => return self.fail_without_vm(fleet, &row, state, &error_chain(&e)).await.map(|()| None),
        };
        // Queued until no other run uses the machine.
        let turn = tokio::select! {
            t = self.turns.wait(&machine) => t,
            _ = cancelled(&mut cancel) => {
                return self
                    .finish(fleet, &row, state, RunState::Cancelled, Outcome::Cancelled, Some("cancelled while waiting for the machine"), &[], None, None, Retry::No)
                    .await;
            }
        };
        state = self.on_stage(&mut row, state, LaunchStage::Placed { vm: machine.domain.clone(), host: machine.host.clone() }).await?;
        let began = Instant::now();
        // A revert is one libvirt call; it is not cut short by a cancel (the machine would be
        // left half-reverted), the cancel is seen right after it.
        let prepared = machines::prepare(&machine, &handle).await;
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                let reason = error_chain(&e);
                drop(turn);
                return self
                    .finish(
                        fleet,
                        &row,
                        state,
                        RunState::Failed,
                        Outcome::Infrastructure,
                        Some(&reason),
                        &[],
                        Some(&machine.domain),
                        None,
                        Retry::No,
                    )
                    .await;
            }
        };
        info!(machine = %machine.name, domain = %machine.domain, host = %machine.host, ?prepared, "persistent machine prepared");
        state = self.on_stage(&mut row, state, LaunchStage::Booting).await?;
        let vm = ReadyVm {
            name: machine.domain.clone(),
            host: machine.host.clone(),
            ssh_addr: std::net::SocketAddr::new(host.address, machine.ssh_port),
            host_key_from_console: None,
            pinned_host_key: None,
            // paddock reads no console of a persistent machine: its tail is empty.
            console_path: PathBuf::new(),
            boot_time: began.elapsed(),
            session: None,
            started: match prepared {
                Prepared::Reverted => Started::Warm,
                Prepared::Started | Prepared::AlreadyRunning => Started::Cold,
            },
        };
        // Logs in (within the machine's boot_timeout, checking its pinned key), runs the steps.
        let outcome = self.on_vm(&row, &mut state, &job, &guest, &vm, &key, &run_dir, &mut cancel).await;
        let (outcome, reason, steps, tail) = conclude(outcome);
        if let Err(e) = machines::after_run(&machine, &handle, machine.boot_timeout).await {
            warn!(machine = %machine.name, error = %error_chain(&e), "could not put the machine back after its run");
        }
        drop(turn);
        let final_state = match outcome {
            Outcome::Success => RunState::Done,
            Outcome::Cancelled => RunState::Cancelled,
            Outcome::BuildFailure | Outcome::Infrastructure | Outcome::Interrupted => RunState::Failed,
        };
        self.finish(fleet, &row, state, final_state, outcome, reason.as_deref(), &steps, Some(&machine.domain), tail.as_deref(), Retry::No)
            .await
    }
}
