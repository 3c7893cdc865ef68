//! Owner tasks that must outlive a bug: a supervisor runs the owner on a task of its own and,
//! when it panics, starts a new one (which re-reads what it owns from the store), counts the
//! restart (`paddock_owner_restarts_total{owner}`) and keeps the reason for `/readyz`.
//!
//! The access owner has a supervisor of its own (`access::service::supervise`, which also keeps
//! its command channel across restarts); owners without a channel, such as the forwarder's
//! lanes, use [`supervise`].

use std::future::Future;
use std::sync::{Arc, Mutex};

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
pub fn panic_reason(e: tokio::task::JoinError) -> String {
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

/// Runs `make()` on a task of its own until it returns; each time it panics, records the
/// restart and runs a fresh `make()`.
pub async fn supervise<F, Fut>(owner: &'static str, health: Health, mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match tokio::spawn(make()).await {
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
