//! Deciding: new requests (through the policy), approvals and denials by
//! admins, extensions, revocations and expiry.

use std::time::Duration;

use rand::Rng;
use tracing::info;

use crate::access::policy::{self, Decision, Subject};
use crate::access::{AccessError, Grant, GrantAnswer, GrantState, Target, ssh_command};
use crate::runs::RunState;
use crate::store::AuditEntry;

use super::owner::Owner;
use super::preparation::image_of;
use super::{AUTO, audit, human, later};

/// What became of a new request.
pub(super) enum Requested {
    /// Waiting for an admin: answered at once.
    Pending(Box<GrantAnswer>),
    /// Approved; answered when the grant is active.
    Preparing(String),
}

pub(super) fn new_id() -> String {
    let mut b = [0u8; 5];
    rand::rng().fill(&mut b[..]);
    format!("g{}", hex::encode(b))
}

impl Owner {
    pub(super) fn subject_of<'a>(&self, target: &'a Target, run: Option<&'a crate::store::RunRow>) -> Subject<'a> {
        match (target, run) {
            (Target::Image(i), _) => Subject::Image(i),
            (Target::Run(id), Some(r)) => {
                Subject::HeldRun { run_id: id, job: &r.job, held: RunState::from_db(&r.state) == Some(RunState::Held) }
            }
            (Target::Run(id), None) => Subject::HeldRun { run_id: id, job: "", held: false },
        }
    }

    /// Records a request and approves it when the policy allows.
    pub(super) async fn request(&mut self, by: &str, target: Target, duration: Duration, reason: &str) -> Result<Requested, AccessError> {
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
                Ok(Requested::Pending(Box::new(GrantAnswer { grant: g, certificates: Vec::new(), ssh_command: None })))
            }
            Decision::Approve => {
                self.store.insert_grant(&g.to_row(), audit(by, "request", &g, what)).await?;
                let id = g.id.clone();
                self.begin(g, AUTO).await?;
                Ok(Requested::Preparing(id))
            }
        }
    }

    pub(super) async fn approve(&mut self, by: &str, id: &str) -> Result<(), AccessError> {
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

    pub(super) fn admin(&self, by: &str, action: &str) -> Result<(), AccessError> {
        let u = self.fleet.user(by).ok_or_else(|| AccessError::UnknownUser(by.into()))?;
        if u.role != crate::config::Role::Admin {
            return Err(AccessError::Forbidden(format!("`{by}` is not an admin; only admins may {action} access requests")));
        }
        Ok(())
    }

    pub(super) async fn deny(&mut self, by: &str, id: &str, reason: &str) -> Result<Grant, AccessError> {
        self.admin(by, "deny")?;
        let mut g = self.load(id).await?;
        let from = Self::transition(&mut g, GrantState::Denied, "deny")?;
        g.decided_by = Some(by.into());
        g.detail = Some(if reason.is_empty() { "denied".into() } else { reason.into() });
        self.save(&g, from, Some(audit(by, "deny", &g, reason))).await?;
        Ok(g)
    }

    pub(super) async fn extend(&mut self, by: &str, id: &str, extra: Duration) -> Result<GrantAnswer, AccessError> {
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
        let cap_end = later(start, cap)?;
        let want = later(end, extra)?;
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
        let certificates = if image.trusts_fleet_ca { self.issue(&g, &image).await? } else { Vec::new() };
        let ssh = g.endpoint.as_ref().map(|e| ssh_command(e, image.trusts_fleet_ca));
        Ok(GrantAnswer { grant: g, certificates, ssh_command: ssh })
    }

    pub(super) async fn revoke(&mut self, by: &str, id: &str) -> Result<Grant, AccessError> {
        let u = self.fleet.user(by).ok_or_else(|| AccessError::UnknownUser(by.into()))?;
        let g = self.load(id).await?;
        if u.role != crate::config::Role::Admin && g.user != by {
            return Err(AccessError::Forbidden(format!("`{by}` may not revoke grant {id} of `{}`", g.user)));
        }
        self.end(g, GrantState::Revoked, by).await
    }

    /// Ends a grant (revoked or expired) and starts its clean-up.
    pub(super) async fn end(&mut self, mut g: Grant, next: GrantState, by: &str) -> Result<Grant, AccessError> {
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
}
