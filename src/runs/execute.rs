//! Executing one run: VM, steps over SSH, result, teardown or hold.
//!
//! Every state change is persisted before the work it names begins, so a
//! restarted daemon knows how far a run got. The run's end (final state,
//! result document, outbox entries) is one store transaction.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::watch;
use tracing::{info, warn};

use super::result::{self, ResultInput, StepRecord};
use super::state::{Outcome, RunState};
use crate::config::Fleet;
use crate::outbox::Waker;
use crate::store::{RunEnd, RunRow, Store, StoreError};

pub struct ExecutorConfig {
    /// Where each run's log file goes (`<log_dir>/<run id>.log`).
    pub log_dir: PathBuf,
    /// The recorders every result is forwarded to.
    pub recorders: Vec<String>,
}

pub struct Executor {
    fleet: Arc<Fleet>,
    store: Store,
    config: ExecutorConfig,
    waker: Waker,
}

impl Executor {
    pub fn new(fleet: Arc<Fleet>, store: Store, config: ExecutorConfig, waker: Waker) -> Executor {
        Executor { fleet, store, config, waker }
    }

    pub fn log_path(&self, run_id: &str) -> PathBuf {
        self.config.log_dir.join(format!("{run_id}.log"))
    }

    pub async fn execute(&self, row: RunRow, _cancel: watch::Receiver<bool>) {
        // The VM manager and step runner are wired in by the daemon module.
        if let Err(e) = finish_without_vm(self, &row, Outcome::Infrastructure, "no VM manager configured").await {
            warn!(run_id = %row.id, error = %e, "could not record the run's end");
        }
    }

    /// Re-arms the release of a held run's VM after a restart.
    pub async fn rearm_hold(&self, row: &RunRow) {
        info!(run_id = %row.id, "run is held");
    }

    /// Ends a hold early (cancel of a held run).
    pub async fn release_hold(&self, row: &RunRow) {
        if let Err(e) = self.store.set_run_state(&row.id, &RunState::Failed.as_db()).await {
            warn!(run_id = %row.id, error = %e, "could not release hold");
        }
    }

    /// Writes the run's end and its outbox entries in one transaction, then
    /// wakes the forwarder.
    async fn finish(
        &self,
        row: &RunRow,
        state: RunState,
        outcome: Outcome,
        reason: Option<&str>,
        steps: &[StepRecord],
        vm_name: Option<&str>,
        console_tail: Option<&str>,
    ) -> Result<(), StoreError> {
        let (Some(job), Some(image)) = (self.fleet.job(&row.job), self.fleet.image(&row.image)) else {
            return Err(StoreError::Corrupt(format!("run `{}` names a job or image no longer in fleet.toml", row.id)));
        };
        let finished_at = Utc::now();
        let doc = result::document(&ResultInput {
            run_id: &row.id,
            job,
            image,
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
        });
        self.store
            .finish_run(RunEnd {
                run_id: row.id.clone(),
                state: state.as_db(),
                outcome: outcome.as_str().into(),
                reason: reason.map(str::to_string),
                result_json: doc.to_string(),
                finished_at,
                recorders: self.config.recorders.clone(),
            })
            .await?;
        metrics::counter!("paddock_runs_finished_total", "outcome" => outcome.as_str()).increment(1);
        info!(run_id = %row.id, outcome = outcome.as_str(), "run finished");
        self.waker.wake();
        Ok(())
    }
}

/// Ends a run that has no VM (any more): interrupted by a crash, or never placed.
pub async fn finish_without_vm(executor: &Executor, row: &RunRow, outcome: Outcome, reason: &str) -> Result<(), StoreError> {
    let state = if outcome == Outcome::Cancelled { RunState::Cancelled } else { RunState::Failed };
    executor.finish(row, state, outcome, Some(reason), &[], row.vm_name.as_deref(), None).await
}
