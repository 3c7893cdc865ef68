//! Re-reading `fleet.toml` in a running daemon (`SIGHUP`): validate the file
//! whole, refuse it if it is wrong or changes what only a restart applies, else
//! put its jobs in force and start, stop or re-time their schedules.
//!
//! Runs under way keep the job and image they started with (the executor took
//! the fleet once, at the run's start), so a reload never changes or stops them.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::clock::Clock;
use crate::config::{self, Fleet, FleetUpdater, Job, JobChanges, LoadError};
use crate::scheduler::Fire;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the new fleet.toml is not valid")]
    Invalid(#[source] LoadError),
    #[error("{} changed in {}; only a restart applies that (a reload applies [[jobs]] only)", sections.join(", "), file)]
    RestartNeeded { file: String, sections: Vec<&'static str> },
    #[error(
        "the new jobs are in force, but the new schedule of job `{job}` could not be stored; it stays unscheduled until the next reload"
    )]
    Schedule { job: String, source: StoreError },
}

/// One scheduler task per scheduled job, keyed by job name.
pub(super) struct Schedules {
    store: Store,
    clock: Clock,
    fires: mpsc::Sender<Fire>,
    tasks: BTreeMap<String, ScheduleTask>,
}

struct ScheduleTask {
    /// The cron expression and time zone it runs; a reload that changes either restarts it.
    key: (String, String),
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

fn schedule_key(job: &Job) -> Option<(String, String)> {
    job.schedule.as_ref().map(|s| (s.expr.clone(), s.tz.name().to_string()))
}

impl Schedules {
    pub(super) fn new(store: Store, clock: Clock, fires: mpsc::Sender<Fire>) -> Schedules {
        Schedules { store, clock, fires, tasks: BTreeMap::new() }
    }

    /// Starts a task for every scheduled job of `fleet` (at daemon start).
    pub(super) fn start_all(&mut self, fleet: &Fleet) {
        for job in &fleet.jobs {
            self.spawn(job);
        }
    }

    fn spawn(&mut self, job: &Job) {
        let Some(key) = schedule_key(job) else { return };
        let (stop, stop_rx) = watch::channel(false);
        let (job, store, clock, fires) = (job.clone(), self.store.clone(), self.clock.clone(), self.fires.clone());
        let name = job.name.clone();
        let handle = tokio::spawn(async move {
            let name = job.name.clone();
            if let Err(e) = crate::scheduler::run_job_until(job, store, clock, fires, stop_rx).await {
                error!(job = %name, error = %crate::error::chain(&e), "scheduler stopped");
            }
        });
        self.tasks.insert(name, ScheduleTask { key, stop, handle });
    }

    /// Makes the running tasks match `fleet`: stops those of removed or
    /// unscheduled jobs, restarts those whose schedule changed, starts new ones.
    /// A changed or new schedule counts from now: ticks of the new schedule that
    /// lie before the reload are not "missed", they never were due.
    pub(super) async fn apply(&mut self, fleet: &Fleet) -> Result<(), ReloadError> {
        let stale: Vec<String> = self
            .tasks
            .iter()
            .filter(|(name, t)| fleet.job(name).and_then(schedule_key).as_ref() != Some(&t.key))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &stale {
            if let Some(t) = self.tasks.remove(name) {
                let _ = t.stop.send(true);
                // It stops at its next sleep: between a fire and its stored tick it runs on.
                let _ = t.handle.await;
                info!(job = %name, "schedule stopped");
            }
        }
        for job in &fleet.jobs {
            if job.schedule.is_some() && !self.tasks.contains_key(&job.name) {
                if stale.contains(&job.name) {
                    let now = self.clock.now();
                    self.store
                        .set_last_fire(&job.name, now)
                        .await
                        .map_err(|source| ReloadError::Schedule { job: job.name.clone(), source })?;
                }
                self.spawn(job);
                info!(job = %job.name, "schedule started");
            }
        }
        Ok(())
    }

    /// The jobs with a running schedule task, by name (for tests and logs).
    pub(super) fn names(&self) -> Vec<String> {
        self.tasks.keys().cloned().collect()
    }
}

/// What a reload put in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub jobs: JobChanges,
    /// Jobs whose schedule task runs after the reload.
    pub scheduled: Vec<String>,
}

/// Reads and validates the file the running fleet came from, and puts it in
/// force if only its jobs differ. On any error the running fleet stays.
pub(super) async fn reload(fleet: &FleetUpdater, schedules: &mut Schedules) -> Result<Reloaded, ReloadError> {
    let old = fleet.current();
    let source = old.source.clone();
    let new = tokio::task::spawn_blocking(move || config::load(&source))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map_err(ReloadError::Invalid)?;
    let sections = config::restart_only_changes(&old, &new);
    if !sections.is_empty() {
        return Err(ReloadError::RestartNeeded { file: old.source.display().to_string(), sections });
    }
    let jobs = JobChanges::between(&old, &new);
    let new = Arc::new(new);
    fleet.replace(new.clone());
    schedules.apply(&new).await?;
    Ok(Reloaded { jobs, scheduled: schedules.names() })
}
