//! The run coordinator: the one task that owns the set of live runs.
//!
//! It creates runs (from fires, manual triggers and re-runs), refuses to start a
//! job+image twice from the schedule, cancels runs, and on start marks the runs
//! a dead daemon left behind as interrupted. Each run executes in its own task
//! (`execute`), which persists every state change and reports back when done.
//!
//! `run` supervises the coordinator: when it panics, a new one takes over the same command
//! and fire channels and the same set of live runs (see [`Coordinator::resume`]).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{info, warn};

use super::execute::{Executor, finish_without_vm};
use super::handle::{Command, RunsError, RunsHandle, Trigger};
use super::state::{Outcome, RunState};
use super::transition::transition;
use crate::config::LiveFleet;
use crate::scheduler::Fire;
use crate::store::{RunRow, RunUpdate, Store};
use crate::vm::{VmEnded, VmError};

struct Live {
    job: String,
    image: String,
    cancel: watch::Sender<bool>,
}

/// The live runs: each one's task and cancel switch outlive a coordinator that fails, so the
/// set is handed from one coordinator to the next. Only the coordinator of the moment touches it.
type LiveRuns = Arc<std::sync::Mutex<HashMap<String, Live>>>;

/// What every coordinator in turn serves: commands and the scheduler's fires.
type Channels = (mpsc::Receiver<Command>, mpsc::Receiver<Fire>);

fn lock(live: &LiveRuns) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
    // A panic while it was held (the coordinator failing) leaves each entry whole.
    live.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Coordinator {
    fleet: LiveFleet,
    store: Store,
    executor: Arc<Executor>,
    live: LiveRuns,
    /// Taken by `run`, which keeps it across restarts.
    rx: Option<mpsc::Receiver<Command>>,
    tx: mpsc::Sender<Command>,
    /// VMs the VM manager removed: a held run ends when its VM goes.
    ended: Option<broadcast::Receiver<VmEnded>>,
    health: crate::supervisor::Health,
}

impl Coordinator {
    pub fn new(fleet: impl Into<LiveFleet>, store: Store, executor: Arc<Executor>) -> (Coordinator, RunsHandle) {
        let fleet = fleet.into();
        let (tx, rx) = mpsc::channel(256);
        let health = crate::supervisor::Health::default();
        let handle = RunsHandle { tx: tx.clone(), health: health.clone() };
        // Subscribed before recovery looks at held runs, so no end is missed.
        let ended = executor.vms().map(|v| v.subscribe_ended());
        (Coordinator { fleet, store, executor, live: LiveRuns::default(), rx: Some(rx), tx, ended, health }, handle)
    }

    /// The coordinator that takes over from a failed one: the same fleet, store, executor and
    /// live runs, a fresh subscription to the VM manager's ends.
    fn successor(&self) -> Coordinator {
        Coordinator {
            fleet: self.fleet.clone(),
            store: self.store.clone(),
            executor: self.executor.clone(),
            live: self.live.clone(),
            rx: None,
            tx: self.tx.clone(),
            // Subscribed in `resume`, just before it looks for held runs whose VM went.
            ended: None,
            health: self.health.clone(),
        }
    }

    /// After a coordinator failed (in this process, so every run task it started still runs):
    /// held runs whose VM went meanwhile are ended; live runs the store has seen end are
    /// dropped (their `Finished` may have been the command in hand); a queued run nobody
    /// executes (inserted, or queued as a retry, just before the failure) is started; any
    /// other unfinished run without a task is ended as interrupted, naming the failure.
    /// Runs under way go on untouched: nothing of theirs lived in the coordinator.
    async fn resume(&mut self) -> Result<(), RunsError> {
        if self.ended.is_none() {
            self.ended = self.executor.vms().map(|v| v.subscribe_ended());
        }
        self.end_lost_holds().await?;
        let unfinished = self.store.unfinished_runs().await?;
        lock(&self.live).retain(|id, _| unfinished.iter().any(|r| &r.id == id));
        for row in unfinished {
            let state = RunState::from_db(&row.state);
            if state == Some(RunState::Held) || lock(&self.live).contains_key(&row.id) {
                continue;
            }
            if state == Some(RunState::Queued) {
                info!(run_id = %row.id, "queued run without a task after the coordinator failed; starting it");
                self.spawn(row);
                continue;
            }
            warn!(run_id = %row.id, state = %row.state, "run without a task after the coordinator failed; marking it interrupted");
            let reason =
                format!("the run coordinator failed while the run was {}", state.map(|s| s.to_string()).unwrap_or(row.state.clone()));
            finish_without_vm(&self.executor, &row, Outcome::Interrupted, &reason).await?;
        }
        Ok(())
    }

    /// Marks every run a previous daemon left unfinished as interrupted (an
    /// infrastructure failure, reported like any other). Held runs stay held
    /// while the VM manager (which adopted their VMs) keeps their VM.
    pub async fn recover(&mut self) -> Result<(), RunsError> {
        self.end_lost_holds().await?;
        for row in self.store.unfinished_runs().await? {
            let state = RunState::from_db(&row.state);
            if state == Some(RunState::Held) {
                continue;
            }
            warn!(run_id = %row.id, state = %row.state, "run was in flight when paddock stopped; marking it interrupted");
            finish_without_vm(
                &self.executor,
                &row,
                Outcome::Interrupted,
                &format!("paddock stopped while the run was {}", state.map(|s| s.to_string()).unwrap_or(row.state.clone())),
            )
            .await?;
        }
        Ok(())
    }

    /// Ends every held run whose VM the VM manager no longer has (its hold
    /// ended while paddock was down, or an end was missed).
    async fn end_lost_holds(&mut self) -> Result<(), RunsError> {
        let held: Vec<RunRow> = self.store.unfinished_runs().await?.into_iter().filter(|r| r.state == RunState::Held.as_db()).collect();
        if held.is_empty() {
            return Ok(());
        }
        let live: Vec<String> = match self.executor.vms() {
            Some(vms) => vms.snapshot().await.map_err(|_| RunsError::Stopped)?.vms.into_iter().map(|v| v.name).collect(),
            None => Vec::new(),
        };
        for row in held {
            if row.vm_name.as_ref().is_none_or(|v| !live.contains(v)) {
                self.end_hold(&row).await?;
            }
        }
        Ok(())
    }

    /// A held run's VM is gone: the run is over.
    async fn end_hold(&self, row: &RunRow) -> Result<(), RunsError> {
        transition(&self.store, &row.id, RunState::Held, RunState::Failed, RunUpdate::default()).await?;
        info!(run_id = %row.id, vm = row.vm_name.as_deref().unwrap_or(""), "hold ended");
        Ok(())
    }

    async fn vm_ended(&mut self, ended: Result<VmEnded, broadcast::error::RecvError>) {
        let r = match ended {
            Ok(e) => match self.store.run(&e.run_id).await {
                Ok(Some(row)) if row.state == RunState::Held.as_db() && row.vm_name.as_deref() == Some(e.name.as_str()) => {
                    self.end_hold(&row).await
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e.into()),
            },
            Err(broadcast::error::RecvError::Lagged(_)) => self.end_lost_holds().await,
            Err(broadcast::error::RecvError::Closed) => {
                self.ended = None;
                Ok(())
            }
        };
        if let Err(e) = r {
            warn!(error = %crate::error::chain(&e), "could not end a held run");
        }
    }

    /// Serves commands and fires until every handle and the fire channel are gone. When the
    /// coordinator panics, a successor is resumed from the store on the same channels and the
    /// restart is counted (`paddock_owner_restarts_total{owner="coordinator"}`, `/readyz`);
    /// only the command in hand is lost (its caller gets `Stopped`).
    ///
    /// Implementation note: the channels are kept by `supervisor::supervise`, behind a mutex
    /// each coordinator holds while it serves; a panic unwinds its task and releases the lock for
    /// the successor.
    pub async fn run(mut self, fires: mpsc::Receiver<Fire>) {
        let Some(rx) = self.rx.take() else { return };
        let (health, heir) = (self.health.clone(), self.successor());
        let rebuild = move || {
            let mut successor = heir.successor();
            async move { successor.resume().await.map(|()| successor) }
        };
        let serve = |mut c: Coordinator, mut channels: tokio::sync::OwnedMutexGuard<Channels>| async move {
            let (rx, fires) = &mut *channels;
            c.serve(rx, fires).await;
        };
        crate::supervisor::supervise("coordinator", health, (rx, fires), self, serve, rebuild).await;
    }

    async fn serve(&mut self, rx: &mut mpsc::Receiver<Command>, fires: &mut mpsc::Receiver<Fire>) {
        loop {
            tokio::select! {
                Some(cmd) = rx.recv() => self.handle(cmd).await,
                ended = next_ended(&mut self.ended) => self.vm_ended(ended).await,
                Some(fire) = fires.recv() => {
                    let trigger = Trigger::Schedule { scheduled_at: fire.scheduled_at, missed: fire.missed };
                    if let Err(e) = self.start(&fire.job, None, trigger).await {
                        warn!(job = %fire.job, error = %e, "scheduled fire could not start");
                    }
                }
                else => return,
            }
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Trigger { job, image, trigger, reply } => {
                let _ = reply.send(self.start(&job, image.as_deref(), trigger).await);
            }
            Command::Cancel { id, by, reply } => {
                let _ = reply.send(self.cancel(&id, &by).await);
            }
            Command::Finished { id, retry } => {
                lock(&self.live).remove(&id);
                if let Some(row) = retry {
                    self.spawn(*row);
                }
            }
            Command::InjectPanic => panic!("injected fault: run coordinator"),
        }
    }

    async fn start(&mut self, job_name: &str, only: Option<&str>, trigger: Trigger) -> Result<Vec<String>, RunsError> {
        // The fleet in force now: a reload since the last command shows here.
        let fleet = self.fleet.current();
        let Some(job) = fleet.job(job_name).cloned() else {
            let known = fleet.jobs.iter().map(|j| format!("`{}`", j.name)).collect::<Vec<_>>().join(", ");
            return Err(RunsError::UnknownJob { job: job_name.into(), known });
        };
        let images: Vec<String> = match only {
            Some(i) if job.images.iter().any(|j| j == i) => vec![i.to_string()],
            Some(i) => {
                return Err(RunsError::UnknownImage {
                    job: job.name.clone(),
                    image: i.into(),
                    known: job.images.iter().map(|j| format!("`{j}`")).collect::<Vec<_>>().join(", "),
                });
            }
            None => job.images.clone(),
        };
        let mut started = Vec::new();
        for image in images {
            let busy = lock(&self.live).values().any(|l| l.job == job.name && l.image == image);
            if busy && matches!(trigger, Trigger::Schedule { .. }) {
                let detail = format!("job `{}` on `{image}` is still running; this fire is skipped", job.name);
                info!(job = %job.name, image = %image, "scheduled fire skipped: previous run still going");
                self.store.record_event("fire_skipped", &format!("{}/{}", job.name, image), &detail).await?;
                crate::metrics::fire_skipped(&job.name);
                continue;
            }
            let id = new_run_id();
            let now = Utc::now();
            let scheduled_at = match &trigger {
                Trigger::Schedule { scheduled_at, .. } => Some(*scheduled_at),
                _ => None,
            };
            let row = RunRow {
                id: id.clone(),
                job: job.name.clone(),
                image: image.clone(),
                trigger: trigger.kind().into(),
                requested_by: trigger.requested_by().map(str::to_string),
                state: RunState::Queued.as_db(),
                host: None,
                vm_name: None,
                scheduled_at,
                created_at: now,
                started_at: None,
                finished_at: None,
                outcome: None,
                reason: None,
                result_json: None,
                log_path: Some(self.executor.log_path(&id).display().to_string()),
            };
            self.store.insert_run(&row).await?;
            info!(run_id = %id, job = %job.name, image = %image, trigger = trigger.kind(), "run queued");
            self.spawn(row);
            started.push(id);
        }
        Ok(started)
    }

    /// Executes a queued run (a new one, or the retry an ended run queued) on a task of its own.
    /// A run that already has a task (a retry a resumed coordinator started before the
    /// replaced run's `Finished` came) is left to it.
    fn spawn(&mut self, row: RunRow) {
        let (cancel_tx, cancel_rx) = watch::channel(false);
        {
            let mut live = lock(&self.live);
            if live.contains_key(&row.id) {
                return;
            }
            live.insert(row.id.clone(), Live { job: row.job.clone(), image: row.image.clone(), cancel: cancel_tx });
        }
        let executor = self.executor.clone();
        let done = self.tx.clone();
        tokio::spawn(async move {
            let id = row.id.clone();
            let retry = executor.execute(row, cancel_rx).await.map(Box::new);
            let _ = done.send(Command::Finished { id, retry }).await;
        });
    }

    async fn cancel(&mut self, id: &str, by: &str) -> Result<(), RunsError> {
        if let Some(live) = lock(&self.live).get(id) {
            info!(run_id = %id, by = %by, "run cancel requested");
            let _ = live.cancel.send(true);
            return Ok(());
        }
        match self.store.run(id).await? {
            None => Err(RunsError::UnknownRun(id.into())),
            Some(row) if row.state == RunState::Held.as_db() => {
                info!(run_id = %id, by = %by, "held run cancelled: its hold ends now");
                // The VM manager ends the hold (with any grant's on it) and
                // reports the VM gone, which ends the run.
                let held = match (self.executor.vms(), &row.vm_name) {
                    (Some(vms), Some(vm)) => vms.hold(vm, Utc::now()).await,
                    _ => Err(VmError::NotFound { name: row.vm_name.clone().unwrap_or_default() }),
                };
                match held {
                    Ok(()) => Ok(()),
                    Err(VmError::NotFound { .. }) => self.end_hold(&row).await,
                    Err(_) => Err(RunsError::Stopped),
                }
            }
            Some(row) => Err(RunsError::NotCancellable { id: id.into(), state: row.state }),
        }
    }
}

async fn next_ended(rx: &mut Option<broadcast::Receiver<VmEnded>>) -> Result<VmEnded, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Run ids sort by creation time and are short enough to type.
pub(super) fn new_run_id() -> String {
    use rand::Rng;
    let t = Utc::now().format("%Y%m%d-%H%M%S");
    let r: u32 = rand::rng().random_range(0..0x10000);
    format!("{t}-{r:04x}")
}
