//! Cleaning up after ended grants: installed keys removed, a grant's own VM
//! destroyed, a held run's VM kept only while its hold or another grant needs
//! it; failed clean-ups are retried, also after a restart.

use chrono::{DateTime, Utc};
use tracing::warn;

use crate::access::keys::{end_sessions_ops, removal_ops, revoke_principals_ops};
use crate::access::{Grant, Machines};
use crate::config::{Fleet, HostKeyPolicy};
use crate::error::chain;
use crate::store::Store;

use super::owner::Owner;
use super::preparation::image_of;
use super::{Cmd, SYSTEM, audit};

impl Owner {
    /// Removes what an ended grant left: installed keys, its own VM, or its
    /// share in a held run's VM.
    pub(super) async fn cleanup(&mut self, mut g: Grant) {
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

    pub(super) async fn cleaned(&mut self, id: &str, result: Result<Vec<String>, String>) {
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

    pub(super) async fn retry_cleanups(&mut self) {
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
                    // First the way in: a guest with its own identity stops accepting its
                    // principal, so the grant's certificates are useless at once, long
                    // before they expire. Then whatever sessions are still open.
                    if image.trusts_fleet_ca && image.host_key == HostKeyPolicy::PerVm {
                        machines.run_ops(vm, &image, revoke_principals_ops(image.os, &image.user)).await.map_err(|e| e.to_string())?;
                        notes.push(format!("certificates for {vm} no longer accepted"));
                    }
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
