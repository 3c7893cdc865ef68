//! The access service: one owner task that decides requests, prepares grants,
//! issues certificates and ends grants on time, fed by a closed command enum.
//! This file is the handle (`Access`, its commands and settings); the owner
//! loop and timers are in `owner.rs`, requests, approvals, extensions and ends
//! in `decisions.rs`, VMs, keys and certificates for approved grants in
//! `preparation.rs`, and what ended grants leave behind in `cleanup.rs`.
//!
//! Implementation note: slow work (booting a VM, SSH into a guest) runs on
//! tasks of its own that report back with a command, so the owner never waits
//! on a guest and a revoke is never stuck behind a boot. The store is the
//! record: every transition is written with its audit line in one
//! transaction, and a restarted owner re-arms its timers from it.

mod cleanup;
mod decisions;
mod owner;
mod preparation;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::ca::FleetCa;
use super::{AccessError, Grant, GrantAnswer, GrantState, Machines, Target};
use crate::clock::Clock;
use crate::config::Fleet;
use crate::store::{AuditEntry, Store};

use owner::Owner;
use preparation::Prepared;

type Reply<T> = oneshot::Sender<Result<T, AccessError>>;

/// Settings of the access service.
#[derive(Debug, Clone, Copy)]
pub struct AccessConfig {
    pub clock: Clock,
    /// Certificates are valid from this long before they are issued, so a guest
    /// whose clock lags a little still accepts them.
    pub skew: Duration,
    /// How soon a failed clean-up (keys, VM) is tried again.
    pub cleanup_retry: Duration,
}

impl AccessConfig {
    pub fn new(clock: Clock) -> AccessConfig {
        AccessConfig { clock, skew: Duration::from_secs(60), cleanup_retry: Duration::from_secs(60) }
    }
}

/// The actor of what paddock does by itself (expiry, clean-up).
const SYSTEM: &str = "paddock";
/// `decided_by` of requests the policy approved.
const AUTO: &str = "policy";

enum Cmd {
    Request {
        by: String,
        target: Target,
        duration: Duration,
        reason: String,
        reply: Reply<GrantAnswer>,
    },
    Approve {
        by: String,
        id: String,
        reply: Reply<GrantAnswer>,
    },
    Deny {
        by: String,
        id: String,
        reason: String,
        reply: Reply<Grant>,
    },
    Extend {
        by: String,
        id: String,
        extra: Duration,
        reply: Reply<GrantAnswer>,
    },
    Revoke {
        by: String,
        id: String,
        reply: Reply<Grant>,
    },
    Prepared {
        id: String,
        outcome: Prepared,
    },
    Cleaned {
        id: String,
        result: Result<Vec<String>, String>,
    },
    /// Fault injection for the supervisor's test: the owner panics as a bug would.
    InjectPanic,
}

pub use crate::supervisor::OwnerHealth;
use crate::supervisor::{Health, supervise};

/// A handle to the access service; cheap to clone.
#[derive(Clone)]
pub struct Access {
    tx: mpsc::UnboundedSender<Cmd>,
    store: Store,
    ca: FleetCa,
    health: Health,
}

impl Access {
    /// Starts the owner: grants whose end passed while the daemon was down are
    /// ended now, clean-ups still owed are retried, and timers are armed for the rest.
    pub async fn start(
        fleet: Arc<Fleet>,
        store: Store,
        ca: FleetCa,
        machines: Arc<dyn Machines>,
        cfg: AccessConfig,
    ) -> Result<Access, AccessError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let make = {
            let (store, ca, tx) = (store.clone(), ca.clone(), tx.clone());
            move || Owner {
                fleet: fleet.clone(),
                store: store.clone(),
                ca: ca.clone(),
                machines: machines.clone(),
                cfg,
                waiters: HashMap::new(),
                cleaning: HashMap::new(),
                tx: tx.clone(),
                retry_at: None,
            }
        };
        let mut owner = make();
        owner.recover().await?;
        let health = Health::default();
        // A new owner after a panic is made from the store (grants whose end passed are ended,
        // clean-ups re-armed, as at start) on the same command channel.
        let rebuild = move || {
            let mut o = make();
            async move { o.recover().await.map(|()| o) }
        };
        tokio::spawn(supervise("access", health.clone(), rx, owner, |o, mut rx| async move { o.run(&mut rx).await }, rebuild));
        Ok(Access { tx, store, ca, health })
    }

    /// How the owner has fared: restarts after failures, and the last failure.
    pub fn health(&self) -> OwnerHealth {
        self.health.lock().expect("health lock").clone()
    }

    /// Fault injection: makes the owner task panic, as a bug in it would. The supervisor's
    /// test calls it; no endpoint does.
    pub fn inject_owner_panic(&self) {
        let _ = self.tx.send(Cmd::InjectPanic);
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, AccessError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| AccessError::Stopped)?;
        rx.await.map_err(|_| AccessError::Stopped)?
    }

    /// Asks for access; an approved request returns once its VM is ready and
    /// its certificates are issued, a request that needs an admin at once.
    pub async fn request(&self, by: &str, target: Target, duration: Duration, reason: &str) -> Result<GrantAnswer, AccessError> {
        let (by, reason) = (by.to_string(), reason.to_string());
        self.ask(|reply| Cmd::Request { by, target, duration, reason, reply }).await
    }

    pub async fn approve(&self, by: &str, id: &str) -> Result<GrantAnswer, AccessError> {
        let (by, id) = (by.to_string(), id.to_string());
        self.ask(|reply| Cmd::Approve { by, id, reply }).await
    }

    pub async fn deny(&self, by: &str, id: &str, reason: &str) -> Result<Grant, AccessError> {
        let (by, id, reason) = (by.to_string(), id.to_string(), reason.to_string());
        self.ask(|reply| Cmd::Deny { by, id, reason, reply }).await
    }

    /// Moves the grant's end later by `extra`, capped; returns fresh certificates.
    pub async fn extend(&self, by: &str, id: &str, extra: Duration) -> Result<GrantAnswer, AccessError> {
        let (by, id) = (by.to_string(), id.to_string());
        self.ask(|reply| Cmd::Extend { by, id, extra, reply }).await
    }

    pub async fn revoke(&self, by: &str, id: &str) -> Result<Grant, AccessError> {
        let (by, id) = (by.to_string(), id.to_string());
        self.ask(|reply| Cmd::Revoke { by, id, reply }).await
    }

    pub async fn get(&self, id: &str) -> Result<Grant, AccessError> {
        let row = self.store.grant(id).await?.ok_or_else(|| AccessError::UnknownGrant(id.into()))?;
        Ok(Grant::from_row(row)?)
    }

    /// All grants, oldest first; only those in `states` when it is not empty.
    pub async fn list(&self, states: &[GrantState]) -> Result<Vec<Grant>, AccessError> {
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let rows = self.store.grants(&states).await?;
        Ok(rows.into_iter().map(Grant::from_row).collect::<Result<_, _>>()?)
    }

    /// The fleet CA's public line, for `TrustedUserCAKeys`.
    pub fn ca_public_line(&self) -> String {
        self.ca.public_line()
    }
}

pub(super) fn audit(actor: &str, action: &str, g: &Grant, detail: impl Into<String>) -> AuditEntry {
    AuditEntry { actor: actor.into(), action: action.into(), subject: g.id.clone(), detail: detail.into() }
}

/// `t + d`, or `Invalid` when that is past what a time can hold: no duration a user sends can
/// make the owner panic (durations are also capped where they are parsed).
pub(super) fn later(t: chrono::DateTime<chrono::Utc>, d: Duration) -> Result<chrono::DateTime<chrono::Utc>, AccessError> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .ok_or_else(|| AccessError::Invalid(format!("a duration of {} s is too long", d.as_secs())))
}

pub(super) fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(3600) && s > 0 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) && s > 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}
