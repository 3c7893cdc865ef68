//! The access service: one owner task that decides requests, prepares grants,
//! issues certificates and ends grants on time, fed by a closed command enum.
//!
//! Implementation note: slow work (booting a VM, SSH into a guest) runs on
//! tasks of its own that report back with a command, so the owner never waits
//! on a guest and a revoke is never stuck behind a boot. The store is the
//! record: every transition is written with its audit line in one
//! transaction, and a restarted owner re-arms its timers from it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::ca::{CertSpec, FleetCa, cert_line};
use super::keys::{end_sessions_ops, install_ops, removal_ops};
use super::policy::{self, Decision, Subject};
use super::{AccessError, Endpoint, Grant, GrantAnswer, GrantState, IssuedCert, Machines, Placed, Target, ssh_command};
use crate::clock::Clock;
use crate::config::Fleet;
pub(crate) use crate::error::chain;
use crate::runs::RunState;
use crate::store::{AuditEntry, CertRecord, Store};

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
    Request { by: String, target: Target, duration: Duration, reason: String, reply: Reply<GrantAnswer> },
    Approve { by: String, id: String, reply: Reply<GrantAnswer> },
    Deny { by: String, id: String, reason: String, reply: Reply<Grant> },
    Extend { by: String, id: String, extra: Duration, reply: Reply<GrantAnswer> },
    Revoke { by: String, id: String, reply: Reply<Grant> },
    Prepared { id: String, outcome: Prepared },
    Cleaned { id: String, result: Result<Vec<String>, String> },
}

/// What preparing a grant achieved, also when it failed part-way.
struct Prepared {
    placed: Option<Placed>,
    vm_owned: bool,
    run_hold_until: Option<DateTime<Utc>>,
    keys_installed: bool,
    error: Option<String>,
}

/// A handle to the access service; cheap to clone.
#[derive(Clone)]
pub struct Access {
    tx: mpsc::UnboundedSender<Cmd>,
    store: Store,
    ca: FleetCa,
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
        let mut owner = Owner {
            fleet,
            store: store.clone(),
            ca: ca.clone(),
            machines,
            cfg,
            waiters: HashMap::new(),
            cleaning: HashMap::new(),
            tx: tx.clone(),
            retry_at: None,
        };
        owner.recover().await?;
        tokio::spawn(owner.run(rx));
        Ok(Access { tx, store, ca })
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

struct Owner {
    fleet: Arc<Fleet>,
    store: Store,
    ca: FleetCa,
    machines: Arc<dyn Machines>,
    cfg: AccessConfig,
    /// Callers waiting for an approved grant to become active.
    waiters: HashMap<String, Vec<Reply<GrantAnswer>>>,
    /// Grants whose clean-up task is running.
    cleaning: HashMap<String, ()>,
    tx: mpsc::UnboundedSender<Cmd>,
    retry_at: Option<DateTime<Utc>>,
}

fn audit(actor: &str, action: &str, g: &Grant, detail: impl Into<String>) -> AuditEntry {
    AuditEntry { actor: actor.into(), action: action.into(), subject: g.id.clone(), detail: detail.into() }
}

fn new_id() -> String {
    let mut b = [0u8; 5];
    rand::rng().fill(&mut b[..]);
    format!("g{}", hex::encode(b))
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s % 3600 == 0 && s > 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 && s > 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

impl Owner {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            let wake = match self.next_wake().await {
                Ok(w) => w,
                Err(e) => {
                    warn!(error = %crate::access::service::chain(&e), "cannot read grants; retrying");
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
    async fn next_wake(&self) -> Result<Option<DateTime<Utc>>, AccessError> {
        let live = self.store.grants(&["active"]).await?;
        let end = live.iter().filter_map(|g| g.ends_at).min();
        Ok(match (end, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Request { by, target, duration, reason, reply } => {
                match self.request(&by, target, duration, &reason).await {
                    // Auto-approved: the answer comes when the grant is active.
                    Ok(Requested::Preparing(id)) => self.waiters.entry(id).or_default().push(reply),
                    Ok(Requested::Pending(answer)) => drop(reply.send(Ok(answer))),
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
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.cfg.clock.now()
    }

    async fn load(&self, id: &str) -> Result<Grant, AccessError> {
        let row = self.store.grant(id).await?.ok_or_else(|| AccessError::UnknownGrant(id.into()))?;
        Ok(Grant::from_row(row)?)
    }

    /// Writes `g` (whose state may have changed from `from`) with its audit line.
    async fn save(&self, g: &Grant, from: GrantState, entry: Option<AuditEntry>) -> Result<(), AccessError> {
        if self.store.update_grant(&g.to_row(), from.as_str(), entry).await? {
            Ok(())
        } else {
            Err(AccessError::WrongState { id: g.id.clone(), state: from, action: "update" })
        }
    }

    fn transition(g: &mut Grant, next: GrantState, action: &'static str) -> Result<GrantState, AccessError> {
        if !g.state.can_become(next) {
            return Err(AccessError::WrongState { id: g.id.clone(), state: g.state, action });
        }
        let from = g.state;
        g.state = next;
        Ok(from)
    }

    fn subject_of<'a>(&self, target: &'a Target, run: Option<&'a crate::store::RunRow>) -> Subject<'a> {
        match (target, run) {
            (Target::Image(i), _) => Subject::Image(i),
            (Target::Run(id), Some(r)) => {
                Subject::HeldRun { run_id: id, job: &r.job, held: RunState::from_db(&r.state) == Some(RunState::Held) }
            }
            (Target::Run(id), None) => Subject::HeldRun { run_id: id, job: "", held: false },
        }
    }

    /// Records a request and approves it when the policy allows.
    async fn request(&mut self, by: &str, target: Target, duration: Duration, reason: &str) -> Result<Requested, AccessError> {
        let fleet = self.fleet.clone();
        let user = fleet.user(by).ok_or_else(|| AccessError::UnknownUser(by.into()))?;
        if reason.trim().is_empty() {
            return Err(AccessError::Invalid("a request needs a reason".into()));
        }
        let run = match &target {
            Target::Image(i) if fleet.image(i).is_none() => return Err(AccessError::UnknownImage(i.clone())),
            Target::Image(_) => None,
            Target::Run(r) => Some(self.store.run(r).await?.ok_or_else(|| AccessError::UnknownRun(r.clone()))?),
        };
        let decision = policy::decide(&fleet, user, &self.subject_of(&target, run.as_ref()), duration);
        if user.ssh_keys.is_empty() && !matches!(decision, Decision::Refuse(_)) {
            return Err(AccessError::Invalid(format!("`{by}` has no ssh_keys in fleet.toml to certify")));
        }
        let mut g = Grant {
            id: new_id(),
            user: by.into(),
            target,
            duration,
            reason: reason.into(),
            state: GrantState::Pending,
            decided_by: None,
            created_at: self.now(),
            starts_at: None,
            ends_at: None,
            vm_name: None,
            endpoint: None,
            vm_owned: false,
            run_hold_until: None,
            keys_installed: false,
            cleaned_at: None,
            detail: None,
        };
        let what = format!("{} for {}: {}", g.subject_text(), human(duration), reason);
        match decision {
            Decision::Refuse(why) => {
                // A refused request leaves no grant, but the attempt is on record.
                let entry = AuditEntry {
                    actor: by.into(),
                    action: "request_refused".into(),
                    subject: g.subject_text(),
                    detail: format!("{what}; {why}"),
                };
                self.store.audit(&entry.actor, &entry.action, &entry.subject, &entry.detail).await?;
                Err(AccessError::Forbidden(why))
            }
            Decision::AskAdmin(why) => {
                g.detail = Some(format!("waiting for an admin: {why}"));
                self.store.insert_grant(&g.to_row(), audit(by, "request", &g, format!("{what}; {why}"))).await?;
                info!(grant = %g.id, user = %by, "access request waits for an admin");
                Ok(Requested::Pending(GrantAnswer { grant: g, certificates: Vec::new(), ssh_command: None }))
            }
            Decision::Approve => {
                self.store.insert_grant(&g.to_row(), audit(by, "request", &g, what)).await?;
                let id = g.id.clone();
                self.begin(g, AUTO).await?;
                Ok(Requested::Preparing(id))
            }
        }
    }

    async fn approve(&mut self, by: &str, id: &str) -> Result<(), AccessError> {
        self.admin(by, "approve")?;
        let g = self.load(id).await?;
        if g.state != GrantState::Pending {
            return Err(AccessError::WrongState { id: id.into(), state: g.state, action: "approve" });
        }
        // Limits may have changed since the request; max_grant still binds admins.
        if g.duration > self.fleet.access.max_grant {
            return Err(AccessError::Forbidden(format!(
                "{} is longer than the longest grant this fleet allows ({})",
                human(g.duration),
                human(self.fleet.access.max_grant)
            )));
        }
        self.begin(g, by).await
    }

    fn admin(&self, by: &str, action: &str) -> Result<(), AccessError> {
        let u = self.fleet.user(by).ok_or_else(|| AccessError::UnknownUser(by.into()))?;
        if u.role != crate::config::Role::Admin {
            return Err(AccessError::Forbidden(format!("`{by}` is not an admin; only admins may {action} access requests")));
        }
        Ok(())
    }

    /// Approves `g` and starts preparing its VM.
    async fn begin(&mut self, mut g: Grant, by: &str) -> Result<(), AccessError> {
        let from = Self::transition(&mut g, GrantState::Approved, "approve")?;
        let now = self.now();
        g.decided_by = Some(by.into());
        g.starts_at = Some(now);
        g.ends_at = Some(now + chrono::Duration::from_std(g.duration).unwrap_or(chrono::Duration::MAX));
        g.detail = None;
        let how = if by == AUTO { "approved by policy" } else { "approved" };
        let entry = audit(by, "approve", &g, format!("{how}; ends {}", g.ends_at.unwrap().to_rfc3339()));
        self.save(&g, from, Some(entry)).await?;
        info!(grant = %g.id, user = %g.user, by, "access approved");

        let fleet = self.fleet.clone();
        let machines = self.machines.clone();
        let store = self.store.clone();
        let tx = self.tx.clone();
        let ca_line = self.ca.public_line();
        // Other live grants on a held run's VM keep it at least until their ends.
        let others_end = self.others_end(&g).await?;
        tokio::spawn(async move {
            let outcome = prepare(&fleet, &*machines, &store, &g, &ca_line, others_end).await;
            let _ = tx.send(Cmd::Prepared { id: g.id.clone(), outcome });
        });
        Ok(())
    }

    /// The latest end of the other live grants on the VM `g` uses (or would use).
    async fn others_end(&self, g: &Grant) -> Result<Option<DateTime<Utc>>, AccessError> {
        let vm = match (&g.vm_name, &g.target) {
            (Some(v), _) => Some(v.clone()),
            (None, Target::Run(r)) => self.store.run(r).await?.and_then(|r| r.vm_name),
            (None, Target::Image(_)) => None,
        };
        let Some(vm) = vm else { return Ok(None) };
        let live = self.store.grants(&["approved", "active"]).await?;
        Ok(live.iter().filter(|o| o.id != g.id && o.vm_name.as_deref() == Some(&vm)).filter_map(|o| o.ends_at).max())
    }

    async fn prepared(&mut self, id: &str, p: Prepared) {
        let waiters = self.waiters.remove(id).unwrap_or_default();
        let result = self.finish_prepare(id, p).await;
        if let Err(e) = &result {
            warn!(grant = %id, error = %chain(e), "grant not activated");
        }
        let mut result = Some(result);
        for w in waiters {
            let r = match result.take() {
                Some(r) => r,
                // A second waiter (two approvals racing) gets the grant without certificates.
                None => self.load(id).await.map(|grant| GrantAnswer { grant, certificates: Vec::new(), ssh_command: None }),
            };
            let _ = w.send(r);
        }
    }

    async fn finish_prepare(&mut self, id: &str, p: Prepared) -> Result<GrantAnswer, AccessError> {
        let mut g = self.load(id).await?;
        let fleet = self.fleet.clone();
        let image = image_of(&fleet, &self.store, &g).await?;
        if let Some(pl) = &p.placed {
            g.vm_name = Some(pl.name.clone());
            g.endpoint = Some(Endpoint { host: pl.host.clone(), port: pl.port, user: image.user.clone() });
        }
        g.vm_owned = p.vm_owned;
        g.run_hold_until = p.run_hold_until;
        g.keys_installed = p.keys_installed;
        if g.state != GrantState::Approved {
            // Revoked or ended while its VM was being prepared: record what
            // exists, so the clean-up removes it.
            let state = g.state;
            self.save(&g, state, None).await?;
            self.cleanup(g.clone()).await;
            return Err(AccessError::WrongState { id: id.into(), state, action: "activate" });
        }
        if let Some(err) = p.error {
            let from = Self::transition(&mut g, GrantState::Failed, "fail")?;
            g.detail = Some(err.clone());
            self.save(&g, from, Some(audit(SYSTEM, "failed", &g, err.clone()))).await?;
            self.cleanup(g).await;
            return Err(AccessError::Provision { id: id.into(), message: err });
        }
        if g.ends_at.is_some_and(|t| t <= self.now()) {
            // Preparing took the whole grant.
            self.save(&g, GrantState::Approved, None).await?;
            let g = self.end(g, GrantState::Expired, SYSTEM).await?;
            self.cleanup(g).await;
            return Err(AccessError::WrongState { id: id.into(), state: GrantState::Expired, action: "activate" });
        }
        let from = Self::transition(&mut g, GrantState::Active, "activate")?;
        let ep = g.endpoint.clone().expect("a prepared grant has an endpoint");
        let how = if g.keys_installed { "user's keys installed" } else { "certificates" };
        let detail = format!("vm {} at {}:{} as {}; {how}", g.vm_name.as_deref().unwrap_or("?"), ep.host, ep.port, ep.user);
        self.save(&g, from, Some(audit(SYSTEM, "active", &g, detail))).await?;
        info!(grant = %g.id, user = %g.user, vm = ?g.vm_name, "access active");
        let certificates = if image.trusts_fleet_ca { self.issue(&g).await? } else { Vec::new() };
        let ssh = ssh_command(&ep, image.trusts_fleet_ca);
        Ok(GrantAnswer { grant: g, certificates, ssh_command: Some(ssh) })
    }

    /// One certificate per key of the grant's user, valid until the grant's end.
    async fn issue(&self, g: &Grant) -> Result<Vec<IssuedCert>, AccessError> {
        let user = self.fleet.user(&g.user).ok_or_else(|| AccessError::UnknownUser(g.user.clone()))?;
        let ep = g.endpoint.as_ref().ok_or_else(|| AccessError::Provision { id: g.id.clone(), message: "no endpoint".into() })?;
        let now = self.now();
        let after = now - chrono::Duration::from_std(self.cfg.skew).unwrap_or_default();
        let before = g.ends_at.unwrap_or(now);
        let mut out = Vec::new();
        for key in &user.ssh_keys {
            let fp = key.fingerprint(Default::default()).to_string();
            let rec = CertRecord {
                serial: 0,
                grant_id: g.id.clone(),
                user: g.user.clone(),
                fingerprint: fp.clone(),
                principal: ep.user.clone(),
                valid_after: after,
                valid_before: before,
            };
            let detail = format!("key {fp}, principal {}, valid {} to {}", ep.user, after.to_rfc3339(), before.to_rfc3339());
            let serial = self.store.record_certificate(&rec, audit(SYSTEM, "certificate", g, detail)).await?;
            let cert = self
                .ca
                .issue(&CertSpec {
                    key,
                    principal: &ep.user,
                    key_id: format!("paddock:{}:{}", g.user, g.id),
                    serial,
                    valid_after: after,
                    valid_before: before,
                })
                .map_err(|source| AccessError::Certificate { id: g.id.clone(), source })?;
            out.push(IssuedCert { serial, key_fingerprint: fp, key: key.to_openssh().unwrap_or_default(), certificate: cert_line(&cert) });
        }
        Ok(out)
    }

    async fn deny(&mut self, by: &str, id: &str, reason: &str) -> Result<Grant, AccessError> {
        self.admin(by, "deny")?;
        let mut g = self.load(id).await?;
        let from = Self::transition(&mut g, GrantState::Denied, "deny")?;
        g.decided_by = Some(by.into());
        g.detail = Some(if reason.is_empty() { "denied".into() } else { reason.into() });
        self.save(&g, from, Some(audit(by, "deny", &g, reason))).await?;
        Ok(g)
    }

    async fn extend(&mut self, by: &str, id: &str, extra: Duration) -> Result<GrantAnswer, AccessError> {
        let fleet = self.fleet.clone();
        let user = fleet.user(by).ok_or_else(|| AccessError::UnknownUser(by.into()))?;
        let mut g = self.load(id).await?;
        if g.state != GrantState::Active {
            return Err(AccessError::WrongState { id: id.into(), state: g.state, action: "extend" });
        }
        if extra.is_zero() {
            return Err(AccessError::Invalid("an extension must be longer than zero".into()));
        }
        let run = match &g.target {
            Target::Run(r) => self.store.run(r).await?,
            Target::Image(_) => None,
        };
        // A held run stays extendable after its own hold ended: the grant keeps its VM.
        let subject = match (&g.target, &run) {
            (Target::Run(rid), Some(r)) => Subject::HeldRun { run_id: rid, job: &r.job, held: true },
            (t, r) => self.subject_of(t, r.as_ref()),
        };
        let Some(cap) = policy::extension_cap(&fleet, user, &g.user, &subject) else {
            return Err(AccessError::Forbidden(format!(
                "`{by}` may not extend grant {id}; its user may extend it within their auto-approval limit, admins up to the fleet's maximum"
            )));
        };
        let (start, end) = (g.starts_at.unwrap_or(g.created_at), g.ends_at.unwrap_or(g.created_at));
        let cap_end = start + chrono::Duration::from_std(cap).unwrap_or(chrono::Duration::MAX);
        let want = end + chrono::Duration::from_std(extra).unwrap_or(chrono::Duration::MAX);
        let new_end = want.min(cap_end);
        if new_end <= end {
            return Err(AccessError::Forbidden(format!("grant {id} is already at its longest ({}) for `{by}`", human(cap))));
        }
        // The VM must outlive the new end (a grant's own VM is held until its end too).
        if let Some(vm) = &g.vm_name {
            let others = self.others_end(&g).await?;
            let until = [Some(new_end), others, g.run_hold_until].into_iter().flatten().max().unwrap_or(new_end);
            self.machines.hold(vm, until).await.map_err(|e| AccessError::Provision { id: id.into(), message: e.to_string() })?;
        }
        g.ends_at = Some(new_end);
        g.duration = (new_end - start).to_std().unwrap_or(g.duration);
        let capped = if new_end < want { " (capped)" } else { "" };
        let detail = format!("ends {}{capped}", new_end.to_rfc3339());
        self.save(&g, GrantState::Active, Some(audit(by, "extend", &g, detail))).await?;
        let image = image_of(&fleet, &self.store, &g).await?;
        let certificates = if image.trusts_fleet_ca { self.issue(&g).await? } else { Vec::new() };
        let ssh = g.endpoint.as_ref().map(|e| ssh_command(e, image.trusts_fleet_ca));
        Ok(GrantAnswer { grant: g, certificates, ssh_command: ssh })
    }

    async fn revoke(&mut self, by: &str, id: &str) -> Result<Grant, AccessError> {
        let u = self.fleet.user(by).ok_or_else(|| AccessError::UnknownUser(by.into()))?;
        let g = self.load(id).await?;
        if u.role != crate::config::Role::Admin && g.user != by {
            return Err(AccessError::Forbidden(format!("`{by}` may not revoke grant {id} of `{}`", g.user)));
        }
        self.end(g, GrantState::Revoked, by).await
    }

    /// Ends a grant (revoked or expired) and starts its clean-up.
    async fn end(&mut self, mut g: Grant, next: GrantState, by: &str) -> Result<Grant, AccessError> {
        let was = g.state;
        let from = Self::transition(&mut g, next, if next == GrantState::Revoked { "revoke" } else { "expire" })?;
        let action = if next == GrantState::Revoked { "revoke" } else { "expire" };
        let detail = match next {
            GrantState::Expired => format!("ended at {}", g.ends_at.map(|t| t.to_rfc3339()).unwrap_or_default()),
            _ => format!("was {was}"),
        };
        self.save(&g, from, Some(audit(by, action, &g, detail))).await?;
        info!(grant = %g.id, user = %g.user, by, "access {action}d");
        // A grant still being prepared is cleaned up when its preparation reports.
        if was != GrantState::Approved {
            self.cleanup(g.clone()).await;
        }
        Ok(g)
    }

    /// Removes what an ended grant left: installed keys, its own VM, or its
    /// share in a held run's VM.
    async fn cleanup(&mut self, mut g: Grant) {
        if g.cleaned_at.is_some() || self.cleaning.contains_key(&g.id) {
            return;
        }
        if g.vm_name.is_none() && !g.keys_installed {
            g.cleaned_at = Some(self.now());
            let state = g.state;
            if let Err(e) = self.save(&g, state, None).await {
                warn!(grant = %g.id, error = %chain(&e), "cannot record the clean-up");
            }
            return;
        }
        let others = match self.others_end(&g).await {
            Ok(o) => o,
            Err(e) => {
                warn!(grant = %g.id, error = %chain(&e), "cannot read grants; clean-up retried later");
                self.retry_at = Some(self.now() + chrono::Duration::from_std(self.cfg.cleanup_retry).unwrap_or_default());
                return;
            }
        };
        self.cleaning.insert(g.id.clone(), ());
        let (fleet, store, machines, tx, now) =
            (self.fleet.clone(), self.store.clone(), self.machines.clone(), self.tx.clone(), self.now());
        tokio::spawn(async move {
            let result = clean(&fleet, &store, &*machines, &g, others, now).await;
            let _ = tx.send(Cmd::Cleaned { id: g.id.clone(), result });
        });
    }

    async fn cleaned(&mut self, id: &str, result: Result<Vec<String>, String>) {
        self.cleaning.remove(id);
        let g = match self.load(id).await {
            Ok(g) => g,
            Err(e) => return warn!(grant = %id, error = %chain(&e), "cannot load a cleaned grant"),
        };
        let state = g.state;
        let (g2, entry) = match result {
            Ok(notes) => {
                let mut g2 = g.clone();
                g2.cleaned_at = Some(self.now());
                g2.keys_installed = false;
                let e = audit(SYSTEM, "cleanup", &g2, notes.join("; "));
                (g2, e)
            }
            Err(err) => {
                warn!(grant = %id, error = %err, "clean-up failed; retried later");
                self.retry_at = Some(self.now() + chrono::Duration::from_std(self.cfg.cleanup_retry).unwrap_or_default());
                (g.clone(), audit(SYSTEM, "cleanup_failed", &g, err))
            }
        };
        if let Err(e) = self.save(&g2, state, Some(entry)).await {
            warn!(grant = %id, error = %chain(&e), "cannot record the clean-up");
        }
    }

    /// Ends grants whose end has come; retries owed clean-ups.
    async fn on_timer(&mut self) {
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

    async fn retry_cleanups(&mut self) {
        let ended = match self.store.grants(&["expired", "revoked", "failed"]).await {
            Ok(r) => r,
            Err(e) => return warn!(error = %chain(&e), "cannot read grants"),
        };
        for row in ended.into_iter().filter(|r| r.cleaned_at.is_none()) {
            match Grant::from_row(row) {
                Ok(g) => self.cleanup(g).await,
                Err(e) => warn!(error = %chain(&e), "bad grant row"),
            }
        }
    }

    /// At start: grants caught mid-preparation failed (the daemon went away
    /// under them); everything else is handled by the timer and clean-up retry.
    async fn recover(&mut self) -> Result<(), AccessError> {
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

/// What became of a new request.
enum Requested {
    /// Waiting for an admin: answered at once.
    Pending(GrantAnswer),
    /// Approved; answered when the grant is active.
    Preparing(String),
}

async fn image_of(fleet: &Fleet, store: &Store, g: &Grant) -> Result<crate::config::Image, AccessError> {
    let name = match &g.target {
        Target::Image(i) => i.clone(),
        Target::Run(r) => store.run(r).await?.ok_or_else(|| AccessError::UnknownRun(r.clone()))?.image,
    };
    fleet.image(&name).cloned().ok_or(AccessError::UnknownImage(name))
}

/// Gets a VM for `g` and, for images without the CA, installs the user's keys.
async fn prepare(
    fleet: &Fleet,
    machines: &dyn Machines,
    store: &Store,
    g: &Grant,
    ca_line: &str,
    others_end: Option<DateTime<Utc>>,
) -> Prepared {
    let mut p = Prepared { placed: None, vm_owned: false, run_hold_until: None, keys_installed: false, error: None };
    let image = match image_of(fleet, store, g).await {
        Ok(i) => i,
        Err(e) => {
            p.error = Some(chain(&e));
            return p;
        }
    };
    let ends = g.ends_at.unwrap_or_else(Utc::now);
    let placed = match &g.target {
        Target::Image(_) => {
            p.vm_owned = true;
            machines.launch(&g.id, &image, ca_line, ends).await
        }
        Target::Run(r) => match held_vm(fleet, store, r).await {
            Err(e) => {
                p.error = Some(e);
                return p;
            }
            Ok((vm, run_hold)) => {
                p.run_hold_until = run_hold;
                let until = [Some(ends), others_end, run_hold].into_iter().flatten().max().unwrap_or(ends);
                match machines.hold(&vm, until).await {
                    Ok(()) => machines.locate(&vm).await,
                    Err(e) => Err(e),
                }
            }
        },
    };
    match placed {
        Ok(pl) => p.placed = Some(pl),
        Err(e) => {
            p.error = Some(e.to_string());
            return p;
        }
    }
    if !image.trusts_fleet_ca {
        let keys: Vec<String> =
            fleet.user(&g.user).map(|u| u.ssh_keys.iter().filter_map(|k| k.to_openssh().ok()).collect()).unwrap_or_default();
        let vm = p.placed.as_ref().map(|pl| pl.name.clone()).unwrap_or_default();
        // Marked before the attempt: a half-done install is removed at the end too.
        p.keys_installed = true;
        if let Err(e) = machines.run_ops(&vm, &image, install_ops(image.os, &g.id, &g.user, &keys)).await {
            p.error = Some(e.to_string());
        }
    }
    p
}

/// A held run's VM and when the run's own hold ends.
async fn held_vm(fleet: &Fleet, store: &Store, run_id: &str) -> Result<(String, Option<DateTime<Utc>>), String> {
    let run = match store.run(run_id).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(format!("no run {run_id}")),
        Err(e) => return Err(chain(&e)),
    };
    if RunState::from_db(&run.state) != Some(RunState::Held) {
        return Err(format!("run {run_id} is {}, no longer held", run.state));
    }
    let vm = run.vm_name.clone().ok_or_else(|| format!("held run {run_id} has no VM"))?;
    let hold = fleet
        .job(&run.job)
        .and_then(|j| j.hold_on_failure)
        .map(|h| h.min(fleet.daemon.max_hold))
        .zip(run.finished_at)
        .map(|(h, t)| t + chrono::Duration::from_std(h).unwrap_or_default());
    Ok((vm, hold))
}

/// The clean-up of one ended grant; returns notes for the audit line.
async fn clean(
    fleet: &Fleet,
    store: &Store,
    machines: &dyn Machines,
    g: &Grant,
    others_end: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    let Some(vm) = &g.vm_name else { return Ok(vec!["nothing to clean".into()]) };
    if g.keys_installed && !g.vm_owned {
        // On a VM that goes away anyway the keys go with it.
        let image = image_of(fleet, store, g).await.map_err(|e| chain(&e))?;
        machines.run_ops(vm, &image, removal_ops(image.os, &g.id, &g.user)).await.map_err(|e| e.to_string())?;
        notes.push(format!("keys removed from {vm}"));
    }
    if g.vm_owned {
        machines.destroy(vm).await.map_err(|e| e.to_string())?;
        notes.push(format!("vm {vm} destroyed"));
    } else {
        // The held run's VM stays while its own hold or another grant needs it.
        let until = [g.run_hold_until, others_end].into_iter().flatten().max();
        match until {
            Some(t) if t > now => {
                // Sessions must not outlive the grant. With another grant still on
                // this VM they are left alone: sessions do not say which grant let
                // them in.
                if others_end.is_none_or(|o| o <= now) {
                    let image = image_of(fleet, store, g).await.map_err(|e| chain(&e))?;
                    machines.run_ops(vm, &image, end_sessions_ops(image.os)).await.map_err(|e| e.to_string())?;
                    notes.push(format!("sessions on {vm} ended"));
                }
                machines.hold(vm, t).await.map_err(|e| e.to_string())?;
                notes.push(format!("vm {vm} kept until {}", t.to_rfc3339()));
            }
            _ => {
                machines.hold(vm, now).await.map_err(|e| e.to_string())?;
                notes.push(format!("vm {vm} released"));
            }
        }
    }
    Ok(notes)
}
