//! Owner tasks that must outlive a bug: a supervisor runs the owner on a task of its own and,
//! when it panics, starts a new one (which re-reads what it owns from the store), counts the
//! restart (`paddock_owner_restarts_total{owner}`) and keeps the reason for `/readyz`.
//!
//! Every supervised owner goes through [`supervise`]: the access service, the VM manager, the run
//! coordinator (each keeps its command channel across restarts) and the forwarder's lanes (which
//! have none).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

/// How an owner has fared since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerHealth {
    /// Times the owner failed (panicked) and was started again from the store.
    pub restarts: u64,
    /// Why it last failed.
    pub last_failure: Option<String>,
}

/// Shared between a supervisor and whoever reports on it.
pub type Health = Arc<Mutex<OwnerHealth>>;

/// The message a panic carried.
fn panic_reason(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Logs, counts and keeps a restart of `owner` after it failed for `why`.
pub fn record_restart(owner: &'static str, health: &Health, why: String) {
    tracing::error!(owner, reason = %why, "an owner task failed; starting it again from the store");
    crate::metrics::owner_restarted(owner);
    let mut h = health.lock().expect("health lock");
    h.restarts += 1;
    h.last_failure = Some(why);
}

/// Runs `first` on a task of its own, serving from `rx` (`run(owner, rx)`); each time the owner
/// of the moment panics, counts the restart under `owner` (log, metric, `health`) and runs the
/// next owner `rebuild` makes (from the store) on the same `rx`. A rebuild that fails is logged
/// and tried again a second later. Returns when an owner returns (its channel closed, shutdown).
///
/// Implementation note: `rx` sits behind a mutex; each owner gets it as an owned guard and holds
/// it while it runs. A panic unwinds the owner's task, which drops the guard before the task's
/// end is reported here, so the receiver (and every command queued in it) survives for the next
/// owner. Only the command in hand when the owner failed is lost.
pub async fn supervise<O, R, E, Run, RunFut, Rebuild, RebuildFut>(
    owner: &'static str,
    health: Health,
    rx: R,
    first: O,
    run: Run,
    mut rebuild: Rebuild,
) where
    R: Send + 'static,
    Run: Fn(O, OwnedMutexGuard<R>) -> RunFut,
    RunFut: Future<Output = ()> + Send + 'static,
    Rebuild: FnMut() -> RebuildFut,
    RebuildFut: Future<Output = Result<O, E>>,
    E: std::error::Error,
{
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut next = Some(first);
    loop {
        let current = match next.take() {
            Some(o) => o,
            None => match rebuild().await {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(owner, error = %crate::error::chain(&e), "the restarted owner cannot read the store; trying again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let guard = rx.clone().lock_owned().await;
        match tokio::spawn(run(current, guard)).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => record_restart(owner, &health, panic_reason(e)),
            Err(_) => return,
        }
    }
}

/// Fault injection for supervisors' tests: armed once, the owner that checks it panics at its
/// next check, as a bug would. Nothing but tests arms it.
#[derive(Clone, Default)]
pub struct PanicHook(Arc<std::sync::atomic::AtomicBool>);

impl PanicHook {
    pub fn arm(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Panics if armed (and disarms).
    pub fn check(&self, what: &str) {
        if self.0.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("injected fault: {what}");
        }
    }
}
