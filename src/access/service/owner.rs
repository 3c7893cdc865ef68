//! The access service's owner task: its state, the command loop, the timer
//! that ends grants at their end, guarded and audited writes, and recovery at start.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tracing::warn;

use crate::access::ca::FleetCa;
use crate::access::{AccessError, Grant, GrantAnswer, GrantState, Machines};
use crate::config::Fleet;
use crate::error::chain;
use crate::store::{AuditEntry, Store};

use super::decisions::Requested;
use super::{AccessConfig, Cmd, Reply, SYSTEM, audit};

pub(super) struct Owner {
    pub(super) fleet: Arc<Fleet>,
    pub(super) store: Store,
    pub(super) ca: FleetCa,
    pub(super) machines: Arc<dyn Machines>,
    pub(super) cfg: AccessConfig,
    /// Callers waiting for an approved grant to become active.
    pub(super) waiters: HashMap<String, Vec<Reply<GrantAnswer>>>,
    /// Grants whose clean-up task is running.
    pub(super) cleaning: HashMap<String, ()>,
    pub(super) tx: mpsc::UnboundedSender<Cmd>,
    pub(super) retry_at: Option<DateTime<Utc>>,
}

impl Owner {
    /// Serves commands until every handle is gone. The receiver is borrowed: if this owner
    /// panics, the supervisor keeps it and starts a new owner on it (`supervisor::supervise`).
    pub(super) async fn run(mut self, rx: &mut mpsc::UnboundedReceiver<Cmd>) {
        loop {
            let wake = match self.next_wake().await {
                Ok(w) => w,
                Err(e) => {
                    warn!(error = %chain(&e), "cannot read grants; retrying");
                    Some(self.cfg.clock.now() + chrono::Duration::seconds(5))
                }
            };
            let clock = self.cfg.clock;
            let sleep = async move {
                match wake {
                    Some(t) => clock.sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                () = sleep => self.on_timer().await,
            }
        }
    }

    /// The earliest end of an active grant, or a clean-up retry. (A grant
    /// still being prepared is checked against its end when preparation reports.)
    pub(super) async fn next_wake(&self) -> Result<Option<DateTime<Utc>>, AccessError> {
        let live = self.store.grants(&["active"]).await?;
        let end = live.iter().filter_map(|g| g.ends_at).min();
        Ok(match (end, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    pub(super) async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Request { by, target, duration, reason, reply } => {
                match self.request(&by, target, duration, &reason).await {
                    // Auto-approved: the answer comes when the grant is active.
                    Ok(Requested::Preparing(id)) => self.waiters.entry(id).or_default().push(reply),
                    Ok(Requested::Pending(answer)) => drop(reply.send(Ok(*answer))),
                    Err(e) => drop(reply.send(Err(e))),
                }
            }
            Cmd::Approve { by, id, reply } => match self.approve(&by, &id).await {
                Ok(()) => self.waiters.entry(id).or_default().push(reply),
                Err(e) => drop(reply.send(Err(e))),
            },
            Cmd::Deny { by, id, reason, reply } => drop(reply.send(self.deny(&by, &id, &reason).await)),
            Cmd::Extend { by, id, extra, reply } => drop(reply.send(self.extend(&by, &id, extra).await)),
            Cmd::Revoke { by, id, reply } => drop(reply.send(self.revoke(&by, &id).await)),
            Cmd::Prepared { id, outcome } => self.prepared(&id, outcome).await,
            Cmd::Cleaned { id, result } => self.cleaned(&id, result).await,
            Cmd::InjectPanic => panic!("access owner: a panic injected on purpose (Access::inject_owner_panic)"),
        }
    }

    pub(super) fn now(&self) -> DateTime<Utc> {
        self.cfg.clock.now()
    }

    pub(super) async fn load(&self, id: &str) -> Result<Grant, AccessError> {
        let row = self.store.grant(id).await?.ok_or_else(|| AccessError::UnknownGrant(id.into()))?;
        Ok(Grant::from_row(row)?)
    }

    /// Writes `g` (whose state may have changed from `from`) with its audit line.
    pub(super) async fn save(&self, g: &Grant, from: GrantState, entry: Option<AuditEntry>) -> Result<(), AccessError> {
        if self.store.update_grant(&g.to_row(), from.as_str(), entry).await? {
            Ok(())
        } else {
            Err(AccessError::WrongState { id: g.id.clone(), state: from, action: "update" })
        }
    }

    pub(super) fn transition(g: &mut Grant, next: GrantState, action: &'static str) -> Result<GrantState, AccessError> {
        if !g.state.can_become(next) {
            return Err(AccessError::WrongState { id: g.id.clone(), state: g.state, action });
        }
        let from = g.state;
        g.state = next;
        Ok(from)
    }

    /// Ends grants whose end has come; retries owed clean-ups.
    pub(super) async fn on_timer(&mut self) {
        let now = self.now();
        let live = match self.store.grants(&["active"]).await {
            Ok(l) => l,
            Err(e) => return warn!(error = %chain(&e), "cannot read grants"),
        };
        for row in live {
            if row.ends_at.is_some_and(|t| t <= now) {
                match Grant::from_row(row) {
                    Ok(g) => {
                        let id = g.id.clone();
                        if let Err(e) = self.end(g, GrantState::Expired, SYSTEM).await {
                            warn!(grant = %id, error = %chain(&e), "cannot expire grant");
                        }
                    }
                    Err(e) => warn!(error = %chain(&e), "bad grant row"),
                }
            }
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.retry_cleanups().await;
        }
    }

    /// At start: grants caught mid-preparation failed (the daemon went away
    /// under them); everything else is handled by the timer and clean-up retry.
    pub(super) async fn recover(&mut self) -> Result<(), AccessError> {
        for row in self.store.grants(&["approved"]).await? {
            let mut g = Grant::from_row(row)?;
            let from = Self::transition(&mut g, GrantState::Failed, "fail")?;
            g.detail = Some("the daemon restarted while the grant was being prepared".into());
            let d = g.detail.clone().unwrap_or_default();
            self.save(&g, from, Some(audit(SYSTEM, "failed", &g, d))).await?;
        }
        self.retry_cleanups().await;
        Ok(())
    }
}
