//! Wakes whoever follows a run: a `watch` per followed run, bumped after each change of the
//! run's row (by the store itself) and each append to its `run.log` (by the log writer).
//!
//! Live log follows wait on it instead of polling the file and the store: a follow reads the
//! log only after a log pulse and the run's row only after a row pulse, so a quiet run costs
//! nothing, however many follow it.
//!
//! Implementation note: a plain mutex over a map, held only to find or make one entry; an entry
//! lives while someone subscribes to it and is dropped at the next pulse or subscription after
//! its last follower left, so the map holds at most the runs being followed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// How often a run's row and its log have changed since the first follower subscribed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pulse {
    pub row: u64,
    pub log: u64,
}

#[derive(Clone, Default)]
pub struct RunPulses(Arc<Mutex<HashMap<String, watch::Sender<Pulse>>>>);

impl RunPulses {
    /// A receiver that sees every later change of run `id`.
    pub fn subscribe(&self, id: &str) -> watch::Receiver<Pulse> {
        let mut map = self.0.lock().expect("pulse map");
        map.retain(|_, tx| tx.receiver_count() > 0);
        map.entry(id.to_owned()).or_insert_with(|| watch::channel(Pulse::default()).0).subscribe()
    }

    /// The run's row changed (a state, its end).
    pub fn row_changed(&self, id: &str) {
        self.bump(id, |p| p.row += 1);
    }

    /// Bytes were appended to the run's log.
    pub fn log_written(&self, id: &str) {
        self.bump(id, |p| p.log += 1);
    }

    fn bump(&self, id: &str, f: impl FnOnce(&mut Pulse)) {
        let mut map = self.0.lock().expect("pulse map");
        if let Some(tx) = map.get(id) {
            if tx.receiver_count() == 0 {
                map.remove(id);
            } else {
                tx.send_modify(f);
            }
        }
    }

    /// Runs with a follower right now (for tests).
    pub fn followed(&self) -> usize {
        self.0.lock().expect("pulse map").values().filter(|tx| tx.receiver_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_sees_row_and_log_changes_of_its_own_run_only() {
        let p = RunPulses::default();
        // Nobody follows: pulses cost nothing and keep nothing.
        p.log_written("r1");
        assert_eq!(p.followed(), 0);
        let mut rx = p.subscribe("r1");
        let other = p.subscribe("r2");
        p.log_written("r1");
        p.row_changed("r1");
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), Pulse { row: 1, log: 1 });
        assert!(!other.has_changed().unwrap());
        drop(other);
        p.row_changed("r2");
        assert_eq!(p.followed(), 1);
        drop(rx);
        p.row_changed("r1");
        assert_eq!(p.0.lock().unwrap().len(), 0);
    }
}
