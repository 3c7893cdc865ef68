//! Executing one run: VM, steps over SSH, artifacts, result, teardown or hold.
//!
//! Every state change is persisted before the work it names begins, so a
//! restarted daemon knows how far a run got. The run's end (final state,
//! result document, outbox entries) is one store transaction, written after
//! the VM is torn down (or put on hold), so a finished run never owns a VM
//! that is still being cleaned.

use crate::steps::mask::Secrets;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{Instrument, info, info_span, warn};

use super::result::{self, ResultInput, StepRecord};
use super::state::{Outcome, RunState};
use super::transition::{self, TransitionError, transition};
use crate::config::{Fleet, HostKeyPolicy, Image, Job, LiveFleet};
use crate::error::chain as error_chain;
use crate::outbox::Waker;
use crate::ssh::{self, ClientKey, HostKeyCheck, SshConfig, Target};
use crate::steps::{self, OutputChunk, StepIo, StepOutcome, StepsConfig, StepsReport};
use crate::store::{RetryRow, RunEnd, RunRow, RunUpdate, Store};
use crate::vm::login::Login;
use crate::vm::{LaunchRequest, LaunchStage, ReadyVm, VmError, VmManager};

mod machine;

pub struct ExecutorConfig {
    /// Each run's logs go to `<log_dir>/<run id>/` (`run.log` plus per-step stream files).
    pub log_dir: PathBuf,
    /// The recorders every result is forwarded to.
    pub recorders: Vec<String>,
    /// The fleet CA's public key line, handed to guests that trust it.
    pub ca_public_line: Option<String>,
    /// Largest artifact fetched from a guest, per file.
    pub artifact_cap: u64,
    /// How many artifact files a run keeps at most.
    pub artifact_max_files: usize,
    pub ssh: SshConfig,
    /// Per step and stream: in the log files and in the result.
    pub output_caps: steps::OutputCaps,
    /// The run's combined `run.log`.
    pub run_log_bytes: u64,
    /// Each SSH operation of artifact collection (the listing, each file's download) gives up
    /// after this: a guest that stops answering cannot keep the run from ending.
    pub artifact_op_timeout: std::time::Duration,
    /// A step printing more than this is killed (`limits.step_kill_after`).
    pub step_kill_after: Option<u64>,
}

impl ExecutorConfig {
    pub fn new(log_dir: PathBuf, recorders: Vec<String>) -> ExecutorConfig {
        ExecutorConfig {
            log_dir,
            recorders,
            ca_public_line: None,
            artifact_cap: 64 << 20,
            artifact_max_files: 100,
            ssh: SshConfig::default(),
            output_caps: steps::OutputCaps::default(),
            run_log_bytes: crate::config::Limits::default().run_log_bytes,
            artifact_op_timeout: std::time::Duration::from_secs(120),
            step_kill_after: crate::config::Limits::default().step_kill_after_bytes,
        }
    }
}

/// What a run needs besides its own row: shared by every run.
pub struct Executor {
    fleet: LiveFleet,
    store: Store,
    config: ExecutorConfig,
    waker: Waker,
    vms: Option<VmManager>,
    key: Option<Arc<ClientKey>>,
    /// Live output of runs in flight, for followers.
    live: std::sync::Mutex<BTreeMap<String, broadcast::Sender<OutputChunk>>>,
    /// Timings of runs in flight, taken by `finish` into the result.
    timings: std::sync::Mutex<BTreeMap<String, result::Timings>>,
    /// One run at a time per persistent machine (`machine.rs`).
    turns: crate::machines::Turns,
}

/// Why a run ended before its steps finished.
struct Abort {
    outcome: Outcome,
    reason: String,
    console_tail: Option<String>,
}

impl Executor {
    /// An executor that can record and recover runs but not boot VMs (for
    /// tools that only read or repair the store).
    pub fn new(fleet: impl Into<LiveFleet>, store: Store, config: ExecutorConfig, waker: Waker) -> Executor {
        Executor {
            fleet: fleet.into(),
            store,
            config,
            waker,
            vms: None,
            key: None,
            live: Default::default(),
            timings: Default::default(),
            turns: Default::default(),
        }
    }

    /// An executor that runs builds: VMs from `vms`, logged into with `key`.
    pub fn with_vms(mut self, vms: VmManager, key: Arc<ClientKey>) -> Executor {
        self.vms = Some(vms);
        self.key = Some(key);
        self
    }

    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.config.log_dir.join(run_id)
    }

    /// The human-readable log of a run: every step's output, with step headers.
    pub fn log_path(&self, run_id: &str) -> PathBuf {
        self.run_dir(run_id).join("run.log")
    }

    /// Follow a run's output live (only while it runs).
    pub fn subscribe(&self, run_id: &str) -> Option<broadcast::Receiver<OutputChunk>> {
        self.live.lock().expect("live map").get(run_id).map(|s| s.subscribe())
    }

    /// Carries the run to its end. Returns the queued run that retries it, when it
    /// ended as an infrastructure failure its job retries (written in the run's
    /// final transaction; the caller starts it).
    pub async fn execute(&self, row: RunRow, cancel: watch::Receiver<bool>) -> Option<RunRow> {
        let span = info_span!("run", run_id = %row.id, job = %row.job, image = %row.image);
        let retry = async {
            match self.execute_inner(row.clone(), cancel).await {
                Ok(retry) => retry,
                Err(e) => {
                    warn!(error = %e, "could not record the run's progress");
                    None
                }
            }
        }
        .instrument(span)
        .await;
        self.live.lock().expect("live map").remove(&row.id);
        retry
    }

    async fn execute_inner(&self, mut row: RunRow, mut cancel: watch::Receiver<bool>) -> Result<Option<RunRow>, TransitionError> {
        // The coordinator inserted the run as queued; `state` is what the store holds.
        let mut state = RunState::Queued;
        // The run keeps this fleet to its end: a reload meanwhile changes later runs only.
        let fleet = self.fleet.current();
        let (Some(job), Some(image)) = (fleet.job(&row.job).cloned(), fleet.run_target(&row.image)) else {
            return self.fail_without_vm(&fleet, &row, state, "job or image no longer in fleet.toml").await.map(|()| None);
        };
        let (Some(vms), Some(key)) = (self.vms.clone(), self.key.clone()) else {
            return self.fail_without_vm(&fleet, &row, state, "this daemon has no VM manager").await.map(|()| None);
        };
        let run_dir = self.run_dir(&row.id);
        if let Err(e) = tokio::fs::create_dir_all(&run_dir).await {
            let reason = format!("cannot create the run's log folder {}: {e}", run_dir.display());
            return self.fail_without_vm(&fleet, &row, state, &reason).await.map(|()| None);
        }
        // A persistent machine is never launched: it waits for its turn and is reverted.
        if let Some(machine) = fleet.machine(&row.image).cloned() {
            return self.execute_on_machine(row, state, &fleet, machine, job, image, vms, key, run_dir, cancel).await;
        }

        // Queued until the VM manager places it, then provisioning and booting
        // as the manager reports (back to queued when an attempt fails).
        let (progress, mut stages) = mpsc::unbounded_channel();
        // A retry prefers another host than the one its previous attempt failed on.
        let avoid_hosts = match self.store.retry_of(&row.id).await {
            Ok(Some(link)) => self.store.run(&link.retry_of).await.ok().flatten().and_then(|r| r.host).into_iter().collect(),
            Ok(None) => Vec::new(),
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot read which run this one retries");
                Vec::new()
            }
        };
        let request = LaunchRequest {
            run_id: row.id.clone(),
            job: Some(row.job.clone()),
            image: image.clone(),
            authorized_keys: vec![key.public_line()],
            ca_key: if image.trusts_fleet_ca { self.config.ca_public_line.clone() } else { None },
            priority: job.priority,
            avoid_hosts,
            progress: Some(progress),
        };
        // Readiness is the login: the session that proved the VM up runs the first step.
        let login = Login { user: image.user.clone(), auth: key.auth(), config: self.config.ssh.clone() };
        let mut launch = Box::pin(vms.launch_logged_in(request, login));
        let launched = loop {
            tokio::select! {
                r = &mut launch => break r,
                Some(stage) = stages.recv() => state = self.on_stage(&mut row, state, stage).await?,
                _ = cancelled(&mut cancel) => break Err(VmError::Cancelled { name: row.id.clone() }),
            }
        };
        // Dropping the launch withdraws it: a cancelled run never boots a VM.
        drop(launch);
        while let Ok(stage) = stages.try_recv() {
            match self.on_stage(&mut row, state, stage).await {
                Ok(s) => state = s,
                Err(e) => {
                    // The run cannot be recorded: its VM must not outlive it unowned.
                    if let Ok(vm) = &launched
                        && let Err(d) = vms.destroy(&vm.name).await
                    {
                        warn!(vm = %vm.name, error = %d, "teardown failed; reconciliation will retry");
                    }
                    return Err(e);
                }
            }
        }
        let vm = match launched {
            Ok(vm) => vm,
            Err(e) => {
                let message = crate::error::chain(&e);
                // No host could ever run it: another attempt would fail the same way.
                let retry = if matches!(e, VmError::NoHost { .. }) { Retry::No } else { Retry::IfAllowed };
                let (outcome, reason, tail) = match e {
                    VmError::Cancelled { .. } => (Outcome::Cancelled, "cancelled while waiting for a VM".to_string(), None),
                    VmError::LaunchFailed { console_tail, .. } => (Outcome::Infrastructure, message, Some(console_tail)),
                    _ => (Outcome::Infrastructure, message, None),
                };
                let to = if outcome == Outcome::Cancelled { RunState::Cancelled } else { RunState::Failed };
                return self
                    .finish(&fleet, &row, state, to, outcome, Some(&reason), &[], row.vm_name.clone().as_deref(), tail.as_deref(), retry)
                    .await;
            }
        };
        info!(vm = %vm.name, host = %vm.host, boot_s = vm.boot_time.as_secs_f64(), "VM ready");
        row.host = Some(vm.host.clone());
        row.vm_name = Some(vm.name.clone());

        let outcome = self.on_vm(&row, &mut state, &job, &image, &vm, &key, &run_dir, &mut cancel).await;
        let (outcome, reason, steps, tail) = conclude(outcome);

        // Teardown or hold, then the run's end.
        let hold = match (outcome, job.hold_on_failure) {
            (Outcome::BuildFailure, Some(h)) => Some(h.min(fleet.daemon.max_hold)),
            _ => None,
        };
        let final_state = match outcome {
            Outcome::Success => RunState::Done,
            Outcome::Cancelled => RunState::Cancelled,
            Outcome::BuildFailure | Outcome::Infrastructure | Outcome::Interrupted => RunState::Failed,
        };
        if let Some(h) = hold {
            let until = Utc::now() + chrono::Duration::from_std(h).unwrap_or(chrono::Duration::hours(1));
            match vms.hold(&vm.name, until).await {
                Ok(()) => {
                    info!(vm = %vm.name, until = %until, "failed run's VM held for debugging");
                    let ended = self
                        .finish(
                            &fleet,
                            &row,
                            state,
                            RunState::Held,
                            outcome,
                            reason.as_deref(),
                            &steps,
                            Some(&vm.name),
                            tail.as_deref(),
                            Retry::No,
                        )
                        .await;
                    // From here the VM manager owns the VM's end: it goes when the
                    // latest of this hold and any grant on it has passed, and the
                    // coordinator then ends the held run (`VmManager::subscribe_ended`).
                    if let Err(e) = vms.release(&vm.name).await {
                        warn!(vm = %vm.name, error = %error_chain(&e), "could not hand the held VM to the VM manager");
                    }
                    return ended;
                }
                Err(e) => {
                    warn!(vm = %vm.name, error = %e, "could not hold the VM; tearing it down")
                }
            }
        }
        if let Err(e) = vms.destroy(&vm.name).await {
            warn!(vm = %vm.name, error = %e, "teardown failed; reconciliation will retry");
        }
        self.finish(&fleet, &row, state, final_state, outcome, reason.as_deref(), &steps, Some(&vm.name), tail.as_deref(), Retry::IfAllowed)
            .await
    }

    /// Follows the VM manager's report of a launch into the run's state.
    async fn on_stage(&self, row: &mut RunRow, state: RunState, stage: LaunchStage) -> Result<RunState, TransitionError> {
        let (to, update) = match stage {
            LaunchStage::Placed { vm, host } => {
                let started = *row.started_at.get_or_insert_with(Utc::now);
                row.host = Some(host.clone());
                row.vm_name = Some(vm.clone());
                (RunState::Provisioning, RunUpdate { host: Some(host), vm_name: Some(vm), started_at: Some(started), reason: None })
            }
            LaunchStage::Booting => (RunState::Booting, RunUpdate::default()),
            LaunchStage::Requeued => (RunState::Queued, RunUpdate::default()),
        };
        transition(&self.store, &row.id, state, to, update).await?;
        Ok(to)
    }

    /// Everything between a ready VM and its teardown: login, steps, artifacts.
    #[allow(clippy::too_many_arguments)]
    async fn on_vm(
        &self,
        row: &RunRow,
        state: &mut RunState,
        job: &Job,
        image: &Image,
        vm: &ReadyVm,
        key: &ClientKey,
        run_dir: &Path,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<StepsReport, Abort> {
        let infra = |reason: String| Abort { outcome: Outcome::Infrastructure, reason, console_tail: None };
        let expected = host_key(image, vm).map_err(infra)?;
        let target = Target { addr: vm.ssh_addr, user: image.user.clone() };
        let deadline = tokio::time::Instant::now() + image.boot_timeout;
        let (auth, check) = (key.auth(), HostKeyCheck::exact(expected));
        let handed = vm.session.as_ref().and_then(|h| h.take());
        let reused = handed.is_some();
        let connect = async {
            match handed {
                Some(s) => Ok(s),
                None => ssh::connect_with_retry(&target, &auth, &check, &self.config.ssh, deadline).await,
            }
        };
        let session = tokio::select! {
            r = connect => r.map_err(|e| {
                crate::metrics::ssh_connect_failed(&image.name);
                Abort {
                    outcome: Outcome::Infrastructure,
                    reason: format!("cannot log in to {}: {}", vm.name, error_chain(&e)),
                    console_tail: Some(crate::vm::readiness::console_tail(&vm.console_path, 40)),
                }
            })?,
            _ = cancelled(cancel) => return Err(Abort { outcome: Outcome::Cancelled, reason: "cancelled".into(), console_tail: None }),
        };

        // Inputs go up before the first step; a missing or oversized one is the lab's
        // problem, not the build's: an infrastructure failure naming it.
        if !job.inputs.is_empty() {
            match steps::inputs::upload(&session, &job.inputs).await {
                Ok((files, bytes)) => info!(vm = %vm.name, files, bytes, "inputs uploaded"),
                Err(e) => {
                    session.disconnect().await;
                    return Err(infra(format!("job `{}`: {}", job.name, error_chain(&e))));
                }
            }
        }

        let (live, _) = broadcast::channel(1024);
        self.live.lock().expect("live map").insert(row.id.clone(), live.clone());
        let pulse = LogPulse { pulses: self.store.pulses().clone(), run_id: row.id.clone() };
        let writer =
            tokio::spawn(write_run_log(self.log_path(&row.id), job.steps.clone(), self.config.run_log_bytes, live.subscribe(), pulse));
        let (progress_tx, mut progress_rx) = watch::channel(0usize);
        let store = self.store.clone();
        let run_id = row.id.clone();
        let from = *state;
        // Each step's start is persisted as `Running(k)`; a watch may skip
        // values, so the follower walks through every step in between.
        let follower = tokio::spawn(async move {
            let mut state = from;
            while progress_rx.changed().await.is_ok() {
                let k = *progress_rx.borrow_and_update();
                while let Some(next) = next_step(state, k) {
                    transition(&store, &run_id, state, next, RunUpdate::default()).await?;
                    state = next;
                }
            }
            Ok::<RunState, TransitionError>(state)
        });
        let step_seen = progress_tx.subscribe();
        let mut io = StepIo { log_dir: run_dir.to_path_buf(), live: live.clone(), cancel: cancel.clone(), progress: Some(progress_tx) };
        let mut config = StepsConfig::new(image.shell, job.stop_if_failure);
        config.caps = self.config.output_caps;
        config.kill_after = self.config.step_kill_after;
        config.secrets = Secrets::new(job.secret_values());
        // The steps race a watch on the domain: a VM destroyed behind paddock's back
        // (or crashed) ends the run within a poll period, not after the step's timeout.
        let vms = self.vms.clone().expect("on_vm runs only with a VM manager");
        let ran = tokio::select! {
            report = steps::run_steps(&session, &job.steps, &job.env, &config, &mut io) => Ok(report),
            () = vm_stopped(&vms, &vm.name) => Err(()),
        };
        drop(io);
        let followed = follower.await;
        let recorded = match followed {
            Ok(Ok(s)) => {
                *state = s;
                Ok(())
            }
            Ok(Err(e)) => Err(error_chain(&e)),
            Err(e) => Err(format!("the step-progress task failed: {e}")),
        };
        // The session may notice first (the forward closes as QEMU dies, before libvirt
        // has marked the domain inactive); either way, say why.
        let fate = match &ran {
            Err(()) => Fate::Stopped,
            Ok(report) if report.infrastructure.is_some() => vm_fate_within(&vms, &vm.name, VM_SETTLE).await,
            Ok(_) => Fate::Running,
        };
        let report = match (ran, fate) {
            (Ok(report), Fate::Running) => report,
            // The session died and the VM's host cannot be asked: the host is lost, not (only) the VM.
            (Ok(_), Fate::Unknown(why)) => {
                let k = *step_seen.borrow();
                let step = job.steps.get(k.saturating_sub(1)).map(|s| s.name.as_str()).unwrap_or("?");
                drop(live);
                self.live.lock().expect("live map").remove(&row.id);
                let _ = writer.await;
                metrics::counter!("paddock_vm_lost_total").increment(1);
                return Err(Abort {
                    outcome: Outcome::Infrastructure,
                    reason: format!("VM {} lost during step {k} `{step}`: host {} does not answer ({why})", vm.name, vm.host),
                    console_tail: Some(crate::vm::readiness::console_tail(&vm.console_path, 40)),
                });
            }
            _ => {
                let k = *step_seen.borrow();
                let step = job.steps.get(k.saturating_sub(1)).map(|s| s.name.as_str()).unwrap_or("?");
                drop(live);
                self.live.lock().expect("live map").remove(&row.id);
                let _ = writer.await;
                crate::metrics::vm_lost();
                return Err(Abort {
                    outcome: Outcome::Infrastructure,
                    reason: format!("VM {} stopped during step {k} `{step}`: its domain is no longer running on host {}", vm.name, vm.host),
                    console_tail: Some(crate::vm::readiness::console_tail(&vm.console_path, 40)),
                });
            }
        };
        let first_byte = report.steps.first().and_then(|s| Some(s.started_at? + chrono::Duration::from_std(s.first_output?).ok()?));
        let banner_to_first_byte_s = match (vm.session.as_ref().and_then(|h| h.banner_at), first_byte) {
            (Some(b), Some(f)) => Some((f - b).num_milliseconds() as f64 / 1000.0),
            _ => None,
        };
        info!(vm = %vm.name, one_handshake = reused, banner_to_first_byte_s, "first step's first byte");
        let warm_fallback = match &vm.started {
            crate::vm::Started::ColdAfterWarm(why) => Some(why.clone()),
            crate::vm::Started::Cold | crate::vm::Started::Warm | crate::vm::Started::ReadyPool => None,
        };
        let timings = result::Timings {
            start: vm.started.as_str(),
            warm_fallback,
            boot_s: vm.boot_time.as_secs_f64(),
            banner_to_first_byte_s,
            one_handshake: reused,
        };
        self.timings.lock().expect("timings map").insert(row.id.clone(), timings);
        for s in report.steps.iter().filter(|s| !s.skipped) {
            crate::metrics::step_finished(&job.name, s.kind.as_str(), s.duration.as_secs_f64());
        }
        let recorded = match recorded {
            Ok(()) => self.collect_and_report(row, state, job, &report, &session, run_dir).await,
            Err(e) => Err(e),
        };
        drop(live);
        self.live.lock().expect("live map").remove(&row.id);
        let _ = writer.await;
        session.disconnect().await;
        match recorded {
            Ok(()) => Ok(report),
            Err(reason) => Err(Abort {
                outcome: Outcome::Infrastructure,
                reason: format!("cannot record the run's progress: {reason}"),
                console_tail: None,
            }),
        }
    }

    /// Collecting (when the job has artifacts and its steps ran), then reporting.
    async fn collect_and_report(
        &self,
        row: &RunRow,
        state: &mut RunState,
        job: &Job,
        report: &StepsReport,
        session: &ssh::Session,
        run_dir: &Path,
    ) -> Result<(), String> {
        let step = |e: TransitionError| error_chain(&e);
        // An artifact that could not be fetched does not change the build's outcome; the run's
        // reason says what is missing (a failed run's own reason replaces it).
        let mut update = RunUpdate::default();
        if !job.artifacts.is_empty() && !report.cancelled && report.infrastructure.is_none() && matches!(*state, RunState::Running(_)) {
            transition(&self.store, &row.id, *state, RunState::Collecting, RunUpdate::default()).await.map_err(step)?;
            *state = RunState::Collecting;
            if let Err(e) = self.collect_artifacts(session, job, run_dir).await {
                warn!(error = %e, "fetching artifacts failed");
                update.reason = Some(format!("artifacts not all fetched: {e}"));
            }
        }
        transition(&self.store, &row.id, *state, RunState::Reporting, update).await.map_err(step)?;
        *state = RunState::Reporting;
        Ok(())
    }

    /// Fetches the job's artifacts (paths or shell globs in the guest) into `<run>/artifacts/`.
    async fn collect_artifacts(&self, session: &ssh::Session, job: &Job, run_dir: &Path) -> Result<(), String> {
        let dir = run_dir.join("artifacts");
        tokio::fs::create_dir_all(&dir).await.map_err(|e| e.to_string())?;
        // Let the guest's shell expand the globs; one path per line.
        let patterns: Vec<String> = job.artifacts.iter().map(|p| glob_word(p)).collect();
        let list = format!("for f in {}; do [ -f \"$f\" ] && echo \"$f\"; done; true", patterns.join(" "));
        let limit = self.config.artifact_op_timeout;
        let (out, _err, _status) = tokio::time::timeout(limit, session.exec_collect(&list, Vec::new()))
            .await
            .map_err(|_| format!("listing the artifacts did not finish within {limit:?} (limits.artifact_timeout)"))?
            .map_err(|e| error_chain(&e))?;
        let files: Vec<String> = String::from_utf8_lossy(&out).lines().map(str::to_string).collect();
        for remote in files.iter().take(self.config.artifact_max_files) {
            match tokio::time::timeout(limit, session.download(remote, self.config.artifact_cap)).await {
                Ok(Ok(bytes)) => {
                    let local = dir.join(remote.trim_start_matches('/').replace('/', "__"));
                    tokio::fs::write(&local, bytes).await.map_err(|e| e.to_string())?;
                }
                Ok(Err(e)) => warn!(file = %remote, error = %error_chain(&e), "artifact not fetched"),
                // The session is stuck; the rest would wait as long.
                Err(_) => return Err(format!("downloading {remote} did not finish within {limit:?} (limits.artifact_timeout)")),
            }
        }
        Ok(())
    }

    /// The VM manager this executor boots VMs with, if any.
    pub fn vms(&self) -> Option<&VmManager> {
        self.vms.as_ref()
    }

    /// Ends a run that has no VM (any more) as failed, from `from`.
    async fn fail_without_vm(&self, fleet: &Fleet, row: &RunRow, from: RunState, reason: &str) -> Result<(), TransitionError> {
        self.finish(fleet, row, from, RunState::Failed, Outcome::Infrastructure, Some(reason), &[], row.vm_name.as_deref(), None, Retry::No)
            .await
            .map(|_| ())
    }

    /// Writes the run's end and its outbox entries in one transaction, then
    /// wakes the forwarder. An infrastructure failure of a job with
    /// `retry_infrastructure` attempts left (and `retry` allowing it) gets its
    /// retry queued in that same transaction, returned here, and its result goes
    /// to no recorder: recorders get each run's last attempt only.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        fleet: &Fleet,
        row: &RunRow,
        from: RunState,
        to: RunState,
        outcome: Outcome,
        reason: Option<&str>,
        steps: &[StepRecord],
        vm_name: Option<&str>,
        console_tail: Option<&str>,
        retry: Retry,
    ) -> Result<Option<RunRow>, TransitionError> {
        // A job or image removed from fleet.toml since the run began still gets
        // its end written: the document then names only what the row knows.
        let target = fleet.run_target(&row.image);
        let (job, image) = (fleet.job(&row.job), target.as_ref());
        // Step output was masked as it arrived; reasons and the console tail are masked here,
        // the one place every run ends, and the document once more as a whole.
        let secrets = Secrets::new(job.map(|j| j.secret_values().collect::<Vec<_>>()).unwrap_or_default());
        let reason = reason.map(|r| secrets.mask_str(r));
        let reason = reason.as_deref();
        let console_tail = console_tail.map(|c| secrets.mask_str(c));
        let console_tail = console_tail.as_deref();
        if steps.is_empty() {
            note_run_without_steps(&self.log_path(&row.id), reason, console_tail).await;
        }
        let finished_at = Utc::now();
        let link = match self.store.retry_of(&row.id).await {
            Ok(link) => link,
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot read which run this one retries");
                None
            }
        };
        let next = match (retry, outcome, to, job) {
            (Retry::IfAllowed, Outcome::Infrastructure, RunState::Failed, Some(job)) if self.vms.is_some() => {
                plan_retry(row, link.as_ref(), job.retry_infrastructure, &self.config.log_dir)
            }
            _ => None,
        };
        let artifacts = list_artifacts(&self.run_dir(&row.id).join("artifacts")).await;
        let doc = result::document(&ResultInput {
            run_id: &row.id,
            job: &row.job,
            job_tags: job.map(|j| j.tags.as_slice()).unwrap_or_default(),
            image: &row.image,
            platform: image.map(|i| i.platform.as_str()).unwrap_or(&row.image),
            os: image.map(|i| i.os.as_str()).unwrap_or("unknown"),
            arch: image.map(|i| i.arch.as_str()).unwrap_or("unknown"),
            vm_name,
            host: row.host.as_deref(),
            trigger: &row.trigger,
            outcome,
            reason,
            steps,
            scheduled_at: row.scheduled_at,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at,
            console_tail,
            retry: link.as_ref(),
            retried_by: next.as_ref().map(|(r, _)| r.id.as_str()),
            artifacts: &artifacts,
            timings: self.timings.lock().expect("timings map").remove(&row.id),
        });
        let end = RunEnd {
            run_id: row.id.clone(),
            from: String::new(),
            state: String::new(),
            outcome: outcome.as_str().into(),
            reason: reason.map(str::to_string),
            result_json: secrets.mask_str(&doc.to_string()),
            finished_at,
            // A run that is retried is not the job's result: its retry's is.
            recorders: if next.is_some() { Vec::new() } else { self.config.recorders.clone() },
        };
        let retry_row = next.as_ref().map(|(r, _)| r.clone());
        transition::finish_and_retry(&self.store, from, to, end, next.clone()).await?;
        crate::metrics::run_finished(outcome);
        info!(run_id = %row.id, outcome = outcome.as_str(), state = %to, reason = reason.unwrap_or(""), "run finished");
        if let Some((r, l)) = &next {
            info!(run_id = %row.id, retry = %r.id, note = %l.note, "run retried after an infrastructure failure");
        }
        self.waker.wake();
        Ok(retry_row)
    }
}

/// A run that ends before any step ran (its guest never booted, no host could take it, it was
/// cancelled while queued) has no output of its own; its `run.log` then says why, with the
/// guest's console tail when there is one, so `paddock logs` and the run page show the
/// reason a lab admin would otherwise find only in the result document. A log a step writer
/// already made is left as it is (`create_new`). Both texts are masked by the caller and
/// bounded (`readiness::CONSOLE_TAIL_BYTES`).
async fn note_run_without_steps(path: &Path, reason: Option<&str>, console_tail: Option<&str>) {
    use tokio::io::AsyncWriteExt;
    let mut note = format!("[paddock: no step ran: {}]\n", reason.unwrap_or("the run ended before its first step"));
    if let Some(tail) = console_tail.filter(|t| !t.trim().is_empty()) {
        note.push_str("[paddock: the guest's console, last lines:]\n");
        note.push_str(tail);
        if !tail.ends_with('\n') {
            note.push('\n');
        }
    }
    let write = async {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut f = tokio::fs::OpenOptions::new().write(true).create_new(true).open(path).await?;
        f.write_all(note.as_bytes()).await?;
        f.flush().await
    };
    match write.await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => warn!(path = %path.display(), error = %e, "cannot write the run log's note"),
    }
}

/// The files in a run's `artifacts/` folder, by name (none when it does not exist).
async fn list_artifacts(dir: &Path) -> Vec<result::Artifact> {
    let mut out = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else { return out };
    while let Ok(Some(e)) = entries.next_entry().await {
        let (Ok(meta), Some(name)) = (e.metadata().await, e.file_name().to_str().map(str::to_owned)) else { continue };
        if meta.is_file() {
            out.push(result::Artifact { name, size: meta.len() });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Ends a run that has no VM (any more): interrupted by a crash, or never placed.
pub async fn finish_without_vm(executor: &Executor, row: &RunRow, outcome: Outcome, reason: &str) -> Result<(), TransitionError> {
    let from = RunState::from_db(&row.state).ok_or_else(|| TransitionError::Unknown { id: row.id.clone(), state: row.state.clone() })?;
    let to = if outcome == Outcome::Cancelled { RunState::Cancelled } else { RunState::Failed };
    executor
        .finish(&executor.fleet.current(), row, from, to, outcome, Some(reason), &[], row.vm_name.as_deref(), None, Retry::No)
        .await
        .map(|_| ())
}

/// Whether a run's end may queue a retry (a job's `retry_infrastructure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// When the run ends as an infrastructure failure and attempts are left.
    IfAllowed,
    /// Never: a daemon stop, a held VM, a run no host could ever take, a fleet problem.
    No,
}

/// The queued run that retries `row` and its link, when attempts are left: `row` is
/// attempt `link.attempt` (1 when it is no retry) of `1 + retries`. The retry keeps the
/// run's trigger; its log goes into `log_dir` beside the others.
fn plan_retry(row: &RunRow, link: Option<&RetryRow>, retries: u32, log_dir: &Path) -> Option<(RunRow, RetryRow)> {
    let attempt = link.map_or(1, |l| l.attempt);
    if attempt > retries {
        return None;
    }
    let id = super::coordinator::new_run_id();
    let host = match &row.host {
        Some(h) => format!("on host {h}"),
        None => "before a host was chosen".to_string(),
    };
    let note = format!("retry {attempt} of {retries} after infrastructure failure {host}");
    let run = RunRow {
        id: id.clone(),
        state: RunState::Queued.as_db(),
        host: None,
        vm_name: None,
        created_at: Utc::now(),
        started_at: None,
        finished_at: None,
        outcome: None,
        reason: None,
        result_json: None,
        log_path: Some(log_dir.join(&id).join("run.log").display().to_string()),
        ..row.clone()
    };
    Some((run, RetryRow { run_id: id, retry_of: row.id.clone(), attempt: attempt + 1, attempts: retries + 1, note }))
}

/// The state after `state` on the way to step `started` (1-based; 0 before
/// the first step), or `None` once there.
fn next_step(state: RunState, started: usize) -> Option<RunState> {
    let target = started.checked_sub(1)? as u32;
    match state {
        RunState::Booting => Some(RunState::Running(0)),
        RunState::Running(k) if k < target => Some(RunState::Running(k + 1)),
        _ => None,
    }
}

/// A run's outcome, reason, step records and console tail from what `on_vm` reported.
fn conclude(outcome: Result<StepsReport, Abort>) -> (Outcome, Option<String>, Vec<StepRecord>, Option<String>) {
    match outcome {
        Ok(report) => {
            let records = step_records(&report);
            let (outcome, reason) = if report.cancelled {
                (Outcome::Cancelled, Some("cancelled".to_string()))
            } else if let Some(e) = &report.infrastructure {
                (Outcome::Infrastructure, Some(error_chain(e)))
            } else if report.success() {
                (Outcome::Success, None)
            } else {
                let failed = report.steps.iter().find(|s| s.fails_run());
                let name = failed.map(|s| s.name.clone()).unwrap_or_default();
                // A step paddock itself ended says why: the guest did not choose to fail.
                let why = match failed {
                    Some(s) if s.outcome == crate::steps::StepOutcome::OutputLimit => {
                        format!(": {}", s.reason.as_deref().unwrap_or_default())
                    }
                    _ => String::new(),
                };
                (Outcome::BuildFailure, Some(format!("step `{name}` failed{why}")))
            };
            (outcome, reason, records, None)
        }
        Err(abort) => (abort.outcome, Some(abort.reason), Vec::new(), abort.console_tail),
    }
}

/// How often a run checks that its VM's domain still runs.
const VM_WATCH_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// Returns once libvirt says the VM's domain is not running. A host that cannot be
/// asked (libvirtd restarting, a remote host unreachable) says nothing about the
/// guest, so errors keep the watch going.
async fn vm_stopped(vms: &VmManager, name: &str) {
    loop {
        tokio::time::sleep(VM_WATCH_PERIOD).await;
        if let Ok(false) = vms.is_running(name).await {
            return;
        }
    }
}

/// How long a lost session waits for libvirt to confirm that the domain stopped.
const VM_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// What libvirt says of a VM whose session died.
enum Fate {
    Stopped,
    Running,
    /// Its host did not answer (the last error).
    Unknown(String),
}

/// Whether libvirt says, within `limit`, that the VM's domain is not running;
/// `Unknown` when its host never answered in that time.
async fn vm_fate_within(vms: &VmManager, name: &str, limit: std::time::Duration) -> Fate {
    let deadline = tokio::time::Instant::now() + limit;
    let mut answered = false;
    let mut last = String::new();
    loop {
        match vms.is_running(name).await {
            Ok(false) => return Fate::Stopped,
            Ok(true) => answered = true,
            Err(e) => last = crate::error::chain(&e),
        }
        if tokio::time::Instant::now() >= deadline {
            return if answered { Fate::Running } else { Fate::Unknown(last) };
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The host key the guest must present, per the image's policy.
fn host_key(image: &Image, vm: &ReadyVm) -> Result<ssh_key::PublicKey, String> {
    match &image.host_key {
        HostKeyPolicy::Pinned(k) => Ok(k.clone()),
        HostKeyPolicy::File(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read host key {} of image {}: {e}", path.display(), image.name))?;
            ssh_key::PublicKey::from_openssh(text.trim())
                .map_err(|e| format!("host key {} of image {} is not an SSH public key: {e}", path.display(), image.name))
        }
        HostKeyPolicy::PerVm => vm.pinned_host_key.clone().ok_or_else(|| format!("VM {} has no pinned host key", vm.name)),
        HostKeyPolicy::Console => {
            vm.host_key_from_console.clone().ok_or_else(|| format!("VM {} did not print its host key on the console", vm.name))
        }
    }
}

fn step_records(report: &StepsReport) -> Vec<StepRecord> {
    report
        .steps
        .iter()
        .map(|s| {
            let mut errout = s.stderr_text();
            if let Some(reason) = &s.reason {
                if !errout.is_empty() && !errout.ends_with('\n') {
                    errout.push('\n');
                }
                errout.push_str(&format!("[paddock: {reason}]"));
            }
            StepRecord {
                name: s.name.clone(),
                kind: s.kind.as_str().to_string(),
                command: s.command.clone(),
                status: match s.outcome {
                    StepOutcome::Exited(c) => Some(c as i32),
                    _ => None,
                },
                output: s.stdout_text(),
                errout,
                duration_s: s.duration.as_secs_f64(),
                timed_out: s.timed_out,
                skipped: s.skipped,
            }
        })
        .collect()
}

/// Appends every chunk of live output to the run's log, with a header per step, up to `cap`
/// bytes of output. At the cap the log says so; at the end it says how much was left out (the
/// per-step files keep each stream's head and tail).
/// Whom the log writer tells that the run's log grew (its live follows).
struct LogPulse {
    pulses: crate::store::RunPulses,
    run_id: String,
}

impl LogPulse {
    /// After the bytes are in the file (a tokio file's write returns before the OS has them),
    /// so a follow woken by the pulse reads them.
    async fn written(&self, file: &mut tokio::fs::File) {
        let _ = file.flush().await;
        self.pulses.log_written(&self.run_id);
    }
}

async fn write_run_log(
    path: PathBuf,
    steps: Vec<crate::config::Step>,
    cap: u64,
    mut rx: broadcast::Receiver<OutputChunk>,
    pulse: LogPulse,
) {
    let Ok(mut file) = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await else {
        warn!(path = %path.display(), "cannot open the run log");
        return;
    };
    let mut current = 0usize;
    let mut written = 0u64;
    let mut dropped = 0u64;
    loop {
        match rx.recv().await {
            Ok(chunk) => {
                if dropped > 0 {
                    dropped += chunk.data.len() as u64;
                    continue;
                }
                if chunk.step != current {
                    current = chunk.step;
                    let name = steps.get(current - 1).map(|s| s.name.as_str()).unwrap_or("?");
                    let header = format!("\n==> step {current}/{}: {name}\n", steps.len());
                    let _ = file.write_all(header.as_bytes()).await;
                }
                let room = cap.saturating_sub(written);
                let len = chunk.data.len() as u64;
                if len <= room {
                    let _ = file.write_all(&chunk.data).await;
                    written += len;
                    pulse.written(&mut file).await;
                    continue;
                }
                let _ = file.write_all(&chunk.data[..room as usize]).await;
                written += room;
                dropped = len - room;
                let note = format!(
                    "\n[paddock: run log cut here, at the limit of {cap} bytes (limits.run_log) during step {current}; \
                     step-{current:02}.stdout/.stderr keep each stream's head and tail]\n"
                );
                let _ = file.write_all(note.as_bytes()).await;
                pulse.written(&mut file).await;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let note = format!("\n[paddock: {n} chunks of live output not shown here; see step-NN.stdout/stderr]\n");
                let _ = file.write_all(note.as_bytes()).await;
                pulse.written(&mut file).await;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    if dropped > 0 {
        let note = format!("[paddock: {dropped} bytes of output after the cut are not in this log]\n");
        let _ = file.write_all(note.as_bytes()).await;
    }
    pulse.written(&mut file).await;
}

/// Quotes a glob for the guest's sh, leaving `*`, `?` and `[...]` active.
fn glob_word(pattern: &str) -> String {
    let mut out = String::new();
    for c in pattern.chars() {
        match c {
            '*' | '?' | '[' | ']' => out.push(c),
            c if c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c) => out.push(c),
            c => {
                out.push('\\');
                out.push(c);
            }
        }
    }
    out
}
