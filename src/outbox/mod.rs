//! The forwarder: delivers each outbox entry to its recorder, forever until
//! acknowledged, oldest first per recorder, with exponential backoff and jitter.
//!
//! Entries enter the outbox in the same transaction that ends their run
//! (`Store::finish_run`), so a result is never lost between the run's end and
//! delivery, even across a crash. The run id is the idempotency key: a paddock
//! recorder stores a result sent twice once.
//!
//! Implementation note: one task per recorder, each owning its own head-of-line
//! entry, so a recorder that is down delays only its own queue.

mod deliver;
mod files;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::error::chain as error_chain;
use crate::store::Store;
use crate::supervisor::{Health, PanicHook, supervise};

pub use deliver::{DeliveryError, Destination};
pub use files::RunFile;

/// How long to wait after the n-th failed attempt.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { first: Duration::from_secs(1), max: Duration::from_secs(300) }
    }
}

impl Backoff {
    /// `first * 2^(attempts-1)`, capped at `max`, with ±20% jitter so that many
    /// daemons do not retry a recovering recorder in lockstep.
    pub fn delay(&self, attempts: u32) -> Duration {
        let exp = self.first.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        let base = exp.min(self.max);
        let jitter = rand::rng().random_range(0.8..1.2);
        base.mul_f64(jitter)
    }
}

/// Wakes the forwarder when new entries are queued.
#[derive(Clone, Default)]
pub struct Waker {
    notifies: Arc<Vec<Arc<Notify>>>,
}

impl Waker {
    pub fn wake(&self) {
        for n in self.notifies.iter() {
            n.notify_one();
        }
    }
}

pub struct Forwarder {
    store: Store,
    destinations: Vec<(String, Destination)>,
    notifies: Vec<Arc<Notify>>,
    backoff: Backoff,
    clock: Clock,
    health: Health,
    panic: PanicHook,
    logs: Option<PathBuf>,
}

impl Forwarder {
    pub fn new(store: Store, destinations: Vec<(String, Destination)>, backoff: Backoff, clock: Clock) -> Self {
        let notifies = destinations.iter().map(|_| Arc::new(Notify::new())).collect();
        Forwarder { store, destinations, notifies, backoff, clock, health: Health::default(), panic: PanicHook::default(), logs: None }
    }

    /// How the lanes have fared: restarts after panics, and the last reason.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Fault injection for the supervisor's test: armed, the next lane about to deliver panics.
    pub fn panic_hook(&self) -> PanicHook {
        self.panic.clone()
    }

    /// Deliver each run's artifacts (listed in its document, kept in `<logs>/<run>/artifacts/`)
    /// with its result.
    pub fn with_artifacts_from(mut self, logs: PathBuf) -> Self {
        self.logs = Some(logs);
        self
    }

    pub fn waker(&self) -> Waker {
        Waker { notifies: Arc::new(self.notifies.clone()) }
    }

    /// Spawns one delivery task per recorder, each under a supervisor that starts it again
    /// (from the outbox in the store) if it panics; they stop when `shutdown` turns true.
    pub fn spawn(self, shutdown: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        self.destinations
            .into_iter()
            .zip(self.notifies)
            .map(|((name, dest), notify)| {
                let lane = Lane {
                    name,
                    dest,
                    notify,
                    store: self.store.clone(),
                    backoff: self.backoff,
                    clock: self.clock,
                    panic: self.panic.clone(),
                    logs: self.logs.clone(),
                };
                let shutdown = shutdown.clone();
                // A lane owns no channel; the next one after a panic reads its head from the store.
                let again = lane.clone();
                let rebuild = move || std::future::ready(Ok::<_, std::convert::Infallible>(again.clone()));
                let run = move |lane: Lane, _: tokio::sync::OwnedMutexGuard<()>| lane.run(shutdown.clone());
                tokio::spawn(supervise("forwarder", self.health.clone(), (), lane, run, rebuild))
            })
            .collect()
    }
}

#[derive(Clone)]
struct Lane {
    name: String,
    dest: Destination,
    notify: Arc<Notify>,
    store: Store,
    backoff: Backoff,
    clock: Clock,
    panic: PanicHook,
    logs: Option<PathBuf>,
}

impl Lane {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let head = match self.store.outbox_head(&self.name).await {
                Ok(h) => h,
                Err(e) => {
                    warn!(recorder = %self.name, error = %e, "outbox read failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(self.backoff.max.min(Duration::from_secs(5))) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            let Some(entry) = head else {
                tokio::select! {
                    _ = self.notify.notified() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            };
            if entry.next_attempt_at > self.clock.now() {
                tokio::select! {
                    _ = self.clock.sleep_until(entry.next_attempt_at) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            self.panic.check("the forwarder lane panics before delivering");
            let files = match (&self.logs, serde_json::from_str::<serde_json::Value>(&entry.payload)) {
                (Some(logs), Ok(doc)) => files::listed(logs, &entry.run_id, &doc),
                _ => Vec::new(),
            };
            let result = self.dest.deliver(&entry.run_id, &entry.payload, &files).await;
            let stored = match result {
                Ok(key) => {
                    info!(recorder = %self.name, run_id = %entry.run_id, attempts = entry.attempts + 1, "result delivered");
                    crate::metrics::outbox_attempt(&self.name, true);
                    self.store.outbox_delivered(entry.id, key).await
                }
                Err(e) => {
                    let delay = self.backoff.delay(entry.attempts + 1);
                    let msg = error_chain(&e);
                    warn!(recorder = %self.name, run_id = %entry.run_id, attempts = entry.attempts + 1,
                          retry_in = ?delay, error = %msg, "delivery failed");
                    crate::metrics::outbox_attempt(&self.name, false);
                    let next = self.clock.now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                    self.store.outbox_failed(entry.id, &msg, next).await
                }
            };
            if let Err(e) = stored {
                warn!(recorder = %self.name, error = %e, "could not record delivery outcome");
            }
        }
    }
}

/// Seconds since the oldest undelivered entry was queued (0 when none), for metrics.
pub async fn oldest_pending_age(store: &Store) -> Duration {
    match store.outbox_pending().await {
        Ok(p) => p.first().map(|e| (Utc::now() - e.created_at).to_std().unwrap_or_default()).unwrap_or_default(),
        Err(_) => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff { first: Duration::from_secs(1), max: Duration::from_secs(60) };
        let d1 = b.delay(1);
        assert!(d1 >= Duration::from_millis(800) && d1 <= Duration::from_millis(1200), "{d1:?}");
        let d4 = b.delay(4);
        assert!(d4 >= Duration::from_millis(6400) && d4 <= Duration::from_millis(9600), "{d4:?}");
        for n in [10, 30, 1000] {
            assert!(b.delay(n) <= Duration::from_secs(72));
        }
    }

    #[tokio::test]
    async fn a_lane_that_panics_is_restarted_from_the_outbox_and_still_delivers() {
        let metrics = crate::metrics::install();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
        let rec =
            crate::recorder::Recorder::open(&dir.path().join("recorder.db"), crate::recorder::RecorderConfig::default()).await.unwrap();
        let forwarder = Forwarder::new(
            store.clone(),
            vec![("embedded".into(), Destination::Embedded(rec.clone()))],
            Backoff { first: Duration::from_millis(10), max: Duration::from_millis(50) },
            Clock::system(),
        );
        let (waker, health, hook) = (forwarder.waker(), forwarder.health(), forwarder.panic_hook());
        let (_stop, stop_rx) = watch::channel(false);
        forwarder.spawn(stop_rx);
        // The lane panics at its next delivery, as a bug in it would.
        hook.arm();
        let now = Utc::now();
        let row = crate::store::RunRow {
            id: "r1".into(),
            job: "demo".into(),
            image: "tiny".into(),
            trigger: "manual".into(),
            requested_by: None,
            state: "queued".into(),
            host: None,
            vm_name: None,
            scheduled_at: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            outcome: None,
            reason: None,
            result_json: None,
            log_path: None,
        };
        store.insert_run(&row).await.unwrap();
        let doc = serde_json::json!({
            "client_info": {"package": "demo", "arch": "x86_64", "host": "h", "tags": [], "success": true},
            "results": [{"name": "b", "type": "build", "command": "true", "status": 0, "output": "", "errout": ""}],
        });
        let end = crate::store::RunEnd {
            run_id: "r1".into(),
            from: "queued".into(),
            state: "done".into(),
            outcome: "success".into(),
            reason: None,
            result_json: doc.to_string(),
            finished_at: now,
            recorders: vec!["embedded".into()],
        };
        assert!(store.finish_run(end).await.unwrap());
        waker.wake();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !store.outbox_pending().await.unwrap().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "the result was not delivered after the lane's panic");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let h = health.lock().unwrap().clone();
        assert_eq!(h.restarts, 1, "{h:?}");
        assert!(h.last_failure.as_deref().unwrap().contains("injected fault"), "{h:?}");
        // Delivered once, by the restarted lane.
        assert_eq!(rec.row_counts().await.unwrap()[0], 1);
        let text = metrics.render();
        assert!(text.contains("paddock_owner_restarts_total{owner=\"forwarder\"}"), "{text}");
    }
}
