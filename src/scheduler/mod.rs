//! The scheduler: turns each job's cron schedule into fires.
//!
//! One task per scheduled job sleeps until the job's next tick and sends a
//! [`Fire`] to the run coordinator, which creates one run per image in the
//! job's matrix (or records the fire as skipped for an image still running).
//! The last tick handled is stored, so after downtime the newest missed tick
//! fires once on start, never once per missed tick.

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::config::{Job, Schedule};
use crate::store::{Store, StoreError};

/// A job's schedule came due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    pub job: String,
    /// The cron tick this fire is for (not when it was noticed).
    pub scheduled_at: DateTime<Utc>,
    /// True when the tick passed while the daemon was down.
    pub missed: bool,
}

/// The newest tick of `schedule` in `(after, now]`, if any.
pub fn latest_due(schedule: &Schedule, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut t = schedule.next_after(after)?;
    if t > now {
        return None;
    }
    // Walk forward to the newest due tick; bounded by how long the daemon was down.
    while let Some(next) = schedule.next_after(t) {
        if next > now {
            break;
        }
        t = next;
    }
    Some(t)
}

/// Runs one job's schedule until `fires` is closed. Store errors end the task
/// (they are returned for the caller to log).
pub async fn run_job(job: Job, store: Store, clock: Clock, fires: mpsc::Sender<Fire>) -> Result<(), StoreError> {
    // The sender lives as long as this future, so `stop` never fires.
    let (_keep, stop) = watch::channel(false);
    run_job_until(job, store, clock, fires, stop).await
}

/// [`run_job`] until `stop` turns true (a reload removed or rescheduled the
/// job). The task stops only while it sleeps, never between handing a fire
/// over and storing its tick, so a stop cannot make a tick fire twice.
pub async fn run_job_until(
    job: Job,
    store: Store,
    clock: Clock,
    fires: mpsc::Sender<Fire>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let Some(schedule) = job.schedule.clone() else { return Ok(()) };
    let now = clock.now();
    let mut last = match store.last_fire(&job.name).await? {
        Some(t) => t,
        None => {
            // Never run: start counting from now, not from the epoch.
            store.set_last_fire(&job.name, now).await?;
            now
        }
    };
    if let Some(missed) = latest_due(&schedule, last, now) {
        info!(job = %job.name, tick = %missed, "a scheduled fire was missed while paddock was down; running it once now");
        if fires.send(Fire { job: job.name.clone(), scheduled_at: missed, missed: true }).await.is_err() {
            return Ok(());
        }
        store.set_last_fire(&job.name, missed).await?;
        last = missed;
    }
    loop {
        let Some(next) = schedule.next_after(last) else {
            warn!(job = %job.name, "schedule has no future fire");
            return Ok(());
        };
        tokio::select! {
            _ = clock.sleep_until(next) => {}
            _ = stop.wait_for(|s| *s) => {
                info!(job = %job.name, "schedule stopped by a reload");
                return Ok(());
            }
        }
        // Ticks can pass while a slow store or a suspended host held us up.
        let tick = latest_due(&schedule, last, clock.now()).unwrap_or(next);
        if fires.send(Fire { job: job.name.clone(), scheduled_at: tick, missed: false }).await.is_err() {
            return Ok(());
        }
        store.set_last_fire(&job.name, tick).await?;
        last = tick;
    }
}

#[cfg(test)]
mod tests;
