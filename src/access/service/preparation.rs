//! Preparing an approved grant: its VM (a fresh one, or a held run's whose
//! hold it extends) on a task of its own, the user's keys for images without
//! the fleet CA, activation, and certificates.

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::access::ca::{CertSpec, cert_line};
use crate::access::keys::{allow_principal_ops, install_ops};
use crate::access::{AccessError, Endpoint, Grant, GrantAnswer, GrantState, IssuedCert, Machines, Placed, Target, ssh_command};
use crate::config::Fleet;
use crate::error::chain;
use crate::runs::RunState;
use crate::store::{CertRecord, Store};

use super::owner::Owner;
use super::{AUTO, Cmd, SYSTEM, audit};

/// What preparing a grant achieved, also when it failed part-way.
pub(super) struct Prepared {
    pub(super) placed: Option<Placed>,
    pub(super) vm_owned: bool,
    pub(super) run_hold_until: Option<DateTime<Utc>>,
    pub(super) keys_installed: bool,
    pub(super) error: Option<String>,
}

impl Owner {
    /// Approves `g` and starts preparing its VM.
    pub(super) async fn begin(&mut self, mut g: Grant, by: &str) -> Result<(), AccessError> {
        let from = Self::transition(&mut g, GrantState::Approved, "approve")?;
        let now = self.now();
        g.decided_by = Some(by.into());
        g.starts_at = Some(now);
        g.ends_at = Some(super::later(now, g.duration)?);
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
    pub(super) async fn others_end(&self, g: &Grant) -> Result<Option<DateTime<Utc>>, AccessError> {
        let vm = match (&g.vm_name, &g.target) {
            (Some(v), _) => Some(v.clone()),
            (None, Target::Run(r)) => self.store.run(r).await?.and_then(|r| r.vm_name),
            (None, Target::Image(_)) => None,
        };
        let Some(vm) = vm else { return Ok(None) };
        let live = self.store.grants(&["approved", "active"]).await?;
        Ok(live.iter().filter(|o| o.id != g.id && o.vm_name.as_deref() == Some(&vm)).filter_map(|o| o.ends_at).max())
    }

    pub(super) async fn prepared(&mut self, id: &str, p: Prepared) {
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

    pub(super) async fn finish_prepare(&mut self, id: &str, p: Prepared) -> Result<GrantAnswer, AccessError> {
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
        let certificates = if image.trusts_fleet_ca { self.issue(&g, &image).await? } else { Vec::new() };
        let ssh = ssh_command(&ep, image.trusts_fleet_ca);
        Ok(GrantAnswer { grant: g, certificates, ssh_command: Some(ssh) })
    }

    /// One certificate per key of the grant's user, valid until the grant's end.
    pub(super) async fn issue(&self, g: &Grant, image: &crate::config::Image) -> Result<Vec<IssuedCert>, AccessError> {
        let user = self.fleet.user(&g.user).ok_or_else(|| AccessError::UnknownUser(g.user.clone()))?;
        let ep = g.endpoint.as_ref().ok_or_else(|| AccessError::Provision { id: g.id.clone(), message: "no endpoint".into() })?;
        // A guest with its own identity accepts only certificates naming it: a grant on
        // one VM opens no other. Others (the bundled guest) know only the login user.
        let principal = match (&image.host_key, &g.vm_name) {
            (crate::config::HostKeyPolicy::PerVm, Some(vm)) => vm.clone(),
            _ => ep.user.clone(),
        };
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
                principal: principal.clone(),
                valid_after: after,
                valid_before: before,
            };
            let detail = format!("key {fp}, principal {principal}, valid {} to {}", after.to_rfc3339(), before.to_rfc3339());
            let serial = self.store.record_certificate(&rec, audit(SYSTEM, "certificate", g, detail)).await?;
            let cert = self
                .ca
                .issue(&CertSpec {
                    key,
                    principal: &principal,
                    forwarding: self.fleet.access.allow_forwarding,
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
}

pub(super) async fn image_of(fleet: &Fleet, store: &Store, g: &Grant) -> Result<crate::config::Image, AccessError> {
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
    // A held VM whose earlier grant was revoked no longer accepts its own principal:
    // make it the one again (a fresh VM has it from its seed).
    if image.trusts_fleet_ca && image.host_key == crate::config::HostKeyPolicy::PerVm && !p.vm_owned {
        let vm = p.placed.as_ref().map(|pl| pl.name.clone()).unwrap_or_default();
        if let Err(e) = machines.run_ops(&vm, &image, allow_principal_ops(image.os, &image.user, &vm)).await {
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
