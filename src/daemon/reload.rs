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
        let (job, store, clock, fires) = (job.clone(), self.store.clone(), self.clock, self.fires.clone());
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use chrono::{TimeZone, Utc};

    use super::*;

    /// The repo's fleet with `edit` applied to its text.
    fn fleet(edit: impl Fn(String) -> String) -> Fleet {
        let src = edit(include_str!("../../fleet.toml").to_string());
        config::parse(&src, Path::new("fleet.toml")).unwrap()
    }

    // Implementation note: under the paused clock tokio jumps to the next timer while a
    // task waits on the store's SQLite thread, so each step below leaves one schedule
    // task alive at a time; with two, the jump would reorder their fires.
    #[tokio::test(start_paused = true)]
    async fn a_reload_restarts_changed_schedules_from_now_starts_new_ones_and_stops_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let clock = Clock::starting_at(Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap());
        let (tx, mut rx) = mpsc::channel(8);
        // `demo` last fired two days ago: its old schedule fires the tick it missed once.
        store.set_last_fire("demo", Utc.with_ymd_and_hms(2026, 1, 8, 12, 0, 0).unwrap()).await.unwrap();
        let mut schedules = Schedules::new(store.clone(), clock, tx);
        schedules.start_all(&fleet(|s| s));
        assert_eq!(schedules.names(), ["demo"]);
        let missed = rx.recv().await.unwrap();
        assert_eq!((missed.job.as_str(), missed.missed), ("demo", true));

        // Rescheduled: under the new schedule 04:00 today would look missed, but it counts
        // from the reload; and nothing comes at 01:00 UTC (02:00 Berlin, the old schedule).
        let rescheduled = fleet(|s| {
            s.replacen("schedule = \"0 2 * * *\"", "schedule = \"0 4 * * *\"", 1).replacen(
                "timezone = \"Europe/Berlin\"",
                "timezone = \"UTC\"",
                1,
            )
        });
        schedules.apply(&rescheduled).await.unwrap();
        assert_eq!(schedules.names(), ["demo"]);
        let at = |d, h, m| Utc.with_ymd_and_hms(2026, 1, d, h, m, 0).unwrap();
        let fire = rx.recv().await.unwrap();
        assert_eq!((fire.job.as_str(), fire.scheduled_at, fire.missed), ("demo", at(11, 4, 0), false));

        // `demo` loses its schedule and `arches` gets one: only `arches` fires from now on.
        let swapped = fleet(|s| {
            s.replacen("schedule = \"0 2 * * *\"", "", 1).replacen("timezone = \"Europe/Berlin\"", "", 1).replacen(
                "tags = [\"demo\", \"arch\"]",
                "tags = [\"demo\", \"arch\"]\nschedule = \"30 1 * * *\"",
                1,
            )
        });
        schedules.apply(&swapped).await.unwrap();
        assert_eq!(schedules.names(), ["arches"]);
        for day in [12, 13] {
            let fire = rx.recv().await.unwrap();
            assert_eq!((fire.job.as_str(), fire.scheduled_at, fire.missed), ("arches", at(day, 1, 30), false));
        }
    }
}
