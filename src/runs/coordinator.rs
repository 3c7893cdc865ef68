//! The run coordinator: the one task that owns the set of live runs.
//!
//! It creates runs (from fires, manual triggers and re-runs), refuses to start a
//! job+image twice from the schedule, cancels runs, and on start marks the runs
//! a dead daemon left behind as interrupted. Each run executes in its own task
//! (`execute`), which persists every state change and reports back when done.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::execute::{Executor, finish_without_vm};
use super::handle::{Command, RunsError, RunsHandle, Trigger};
use super::state::{Outcome, RunState};
use crate::config::LiveFleet;
use crate::scheduler::Fire;
use crate::store::{RunRow, Store};

struct Live {
    job: String,
    image: String,
    cancel: watch::Sender<bool>,
}

pub struct Coordinator {
    fleet: LiveFleet,
    store: Store,
    executor: Arc<Executor>,
    live: HashMap<String, Live>,
    rx: mpsc::Receiver<Command>,
    tx: mpsc::Sender<Command>,
}

impl Coordinator {
    pub fn new(fleet: impl Into<LiveFleet>, store: Store, executor: Arc<Executor>) -> (Coordinator, RunsHandle) {
        let fleet = fleet.into();
        let (tx, rx) = mpsc::channel(256);
        let handle = RunsHandle { tx: tx.clone() };
        (Coordinator { fleet, store, executor, live: HashMap::new(), rx, tx }, handle)
    }

    /// Marks every run a previous daemon left unfinished as interrupted (an
    /// infrastructure failure, reported like any other). Held runs stay held;
    /// the executor re-arms their release.
    pub async fn recover(&mut self) -> Result<(), RunsError> {
        for row in self.store.unfinished_runs().await? {
            let state = RunState::from_db(&row.state);
            if state == Some(RunState::Held) {
                self.executor.rearm_hold(&row).await;
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

    /// Serves commands and fires until every handle and the fire channel are gone.
    pub async fn run(mut self, mut fires: mpsc::Receiver<Fire>) {
        loop {
            tokio::select! {
                Some(cmd) = self.rx.recv() => self.handle(cmd).await,
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
            Command::Finished { id } => {
                self.live.remove(&id);
            }
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
            let busy = self.live.values().any(|l| l.job == job.name && l.image == image);
            if busy && matches!(trigger, Trigger::Schedule { .. }) {
                let detail = format!("job `{}` on `{image}` is still running; this fire is skipped", job.name);
                info!(job = %job.name, image = %image, "scheduled fire skipped: previous run still going");
                self.store.record_event("fire_skipped", &format!("{}/{}", job.name, image), &detail).await?;
                metrics::counter!("paddock_fires_skipped_total", "job" => job.name.clone()).increment(1);
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
            let (cancel_tx, cancel_rx) = watch::channel(false);
            self.live.insert(id.clone(), Live { job: job.name.clone(), image: image.clone(), cancel: cancel_tx });
            let executor = self.executor.clone();
            let done = self.tx.clone();
            let run_id = id.clone();
            tokio::spawn(async move {
                executor.execute(row, cancel_rx).await;
                let _ = done.send(Command::Finished { id: run_id }).await;
            });
            started.push(id);
        }
        Ok(started)
    }

    async fn cancel(&mut self, id: &str, by: &str) -> Result<(), RunsError> {
        if let Some(live) = self.live.get(id) {
            info!(run_id = %id, by = %by, "run cancel requested");
            let _ = live.cancel.send(true);
            return Ok(());
        }
        match self.store.run(id).await? {
            None => Err(RunsError::UnknownRun(id.into())),
            Some(row) if row.state == RunState::Held.as_db() => {
                self.executor.release_hold(&row).await;
                Ok(())
            }
            Some(row) => Err(RunsError::NotCancellable { id: id.into(), state: row.state }),
        }
    }
}

/// Run ids sort by creation time and are short enough to type.
fn new_run_id() -> String {
    use rand::Rng;
    let t = Utc::now().format("%Y%m%d-%H%M%S");
    let r: u32 = rand::rng().random_range(0..0x10000);
    format!("{t}-{r:04x}")
}
