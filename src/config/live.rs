//! The fleet in force: one owner (the daemon's reload) may replace it, every
//! reader takes the current value when it starts a piece of work.
//!
//! Implementation note: a `watch` channel rather than a lock. The sender is the
//! one owner; readers clone the `Arc<Fleet>` out of `borrow()` at once and never
//! hold the borrow across an `.await`, so a reload never waits for a reader.

use std::sync::Arc;

use tokio::sync::watch;

use super::Fleet;

/// A cheap-to-clone view of the fleet currently in force.
#[derive(Debug, Clone)]
pub struct LiveFleet {
    rx: watch::Receiver<Arc<Fleet>>,
}

/// The one handle that may replace the fleet in force (held by the daemon).
#[derive(Debug)]
pub struct FleetUpdater {
    tx: watch::Sender<Arc<Fleet>>,
}

/// A fleet that can be replaced later through the returned updater.
pub fn live(fleet: Arc<Fleet>) -> (FleetUpdater, LiveFleet) {
    let (tx, rx) = watch::channel(fleet);
    (FleetUpdater { tx }, LiveFleet { rx })
}

impl LiveFleet {
    /// The fleet in force now. A run, a request or a fire takes it once and
    /// keeps that value to its end, so a reload never changes work under way.
    pub fn current(&self) -> Arc<Fleet> {
        self.rx.borrow().clone()
    }
}

/// A fleet that never changes (tools and tests that do not reload).
impl From<Arc<Fleet>> for LiveFleet {
    fn from(fleet: Arc<Fleet>) -> LiveFleet {
        // The receiver keeps the last value after its sender is gone.
        live(fleet).1
    }
}

impl FleetUpdater {
    pub fn current(&self) -> Arc<Fleet> {
        self.tx.borrow().clone()
    }

    /// Puts `fleet` in force for every reader.
    pub fn replace(&self, fleet: Arc<Fleet>) {
        self.tx.send_replace(fleet);
    }
}

/// The sections of `new` that differ from `old` and that only a restart puts
/// in force: the VM manager, the access service, the forwarder and the HTTP
/// listener are built from them at start. Only `[[jobs]]` may change on a reload.
pub fn restart_only_changes(old: &Fleet, new: &Fleet) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.daemon != new.daemon {
        changed.push("[daemon]");
    }
    if old.hosts != new.hosts {
        changed.push("[[hosts]]");
    }
    if old.images != new.images {
        changed.push("[[images]]");
    }
    if old.users != new.users {
        changed.push("[[users]]");
    }
    if old.recorders != new.recorders {
        changed.push("[[recorders]]");
    }
    if old.access != new.access {
        changed.push("[access]");
    }
    if old.retention != new.retention {
        changed.push("[retention]");
    }
    changed
}

/// How the jobs of two fleets differ, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl JobChanges {
    pub fn between(old: &Fleet, new: &Fleet) -> JobChanges {
        let mut out = JobChanges::default();
        for j in &new.jobs {
            match old.job(&j.name) {
                None => out.added.push(j.name.clone()),
                // A job is plain data; its Debug form covers every field (the
                // parsed cron has no `PartialEq`, its expression is beside it).
                Some(o) if format!("{o:?}") != format!("{j:?}") => out.changed.push(j.name.clone()),
                Some(_) => {}
            }
        }
        out.removed = old.jobs.iter().filter(|j| new.job(&j.name).is_none()).map(|j| j.name.clone()).collect();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn fleet(edit: impl Fn(String) -> String) -> Fleet {
        crate::config::parse(&edit(include_str!("../../fleet.toml").to_string()), Path::new("fleet.toml")).unwrap()
    }

    #[test]
    fn only_jobs_may_change_without_a_restart() {
        let old = fleet(|s| s);
        assert_eq!(restart_only_changes(&old, &fleet(|s| s.replace("# paddock fleet", "# a comment edit"))), Vec::<&str>::new());
        let new = fleet(|s| s.replacen("max_vms = 4", "max_vms = 5", 1).replacen("max_grant = \"24h\"", "max_grant = \"12h\"", 1));
        assert_eq!(restart_only_changes(&old, &new), ["[[hosts]]", "[access]"]);
        let new = fleet(|s| s.replacen("memory_mib = 512", "memory_mib = 768", 1).replacen("role = \"admin\"", "role = \"viewer\"", 1));
        assert_eq!(restart_only_changes(&old, &new), ["[[images]]", "[[users]]"]);
        let new = fleet(|s| s.replacen("max_hold = \"24h\"", "max_hold = \"2h\"", 1));
        assert_eq!(restart_only_changes(&old, &new), ["[daemon]"]);
    }

    #[test]
    fn job_changes_name_added_removed_and_changed_jobs() {
        let old = fleet(|s| s);
        let same = JobChanges::between(&old, &fleet(|s| s));
        assert!(same.is_empty(), "{same:?}");
        let new =
            fleet(|s| s.replacen("name = \"arches\"", "name = \"arches2\"", 1).replacen("command = \"uname -a", "command = \"uname -r", 1));
        let c = JobChanges::between(&old, &new);
        assert_eq!((c.added, c.removed, c.changed), (vec!["arches2".to_string()], vec!["arches".to_string()], vec!["demo".to_string()]));
    }

    #[test]
    fn readers_see_a_replaced_fleet_and_keep_what_they_took() {
        let (updater, live) = live(Arc::new(fleet(|s| s)));
        let taken = live.current();
        updater.replace(Arc::new(fleet(|s| s.replacen("name = \"arches\"", "name = \"arches2\"", 1))));
        assert!(live.current().job("arches2").is_some());
        assert!(taken.job("arches").is_some() && taken.job("arches2").is_none());
        let fixed = LiveFleet::from(taken.clone());
        assert!(fixed.current().job("arches").is_some());
    }
}
