//! The recorder's WAL checkpoints, run on a connection of their own beside the writer, so that
//! copying committed pages into the database file (and its two `fsync`s) never sits between a
//! submission and its answer.
//!
//! Implementation note: the writer connection has `wal_autocheckpoint = 0`, so a commit only
//! appends to the WAL; after each write it wakes this task (a channel of one slot, so wake-ups
//! coalesce). The task asks SQLite how far the WAL is ahead of the database file
//! (`wal_checkpoint(NOOP)`, no I/O) and, past `START_AT` frames (SQLite's own auto-checkpoint
//! threshold), runs a PASSIVE checkpoint, which never blocks the writer. A writer that never
//! pauses keeps the WAL from ever being fully copied when its next transaction starts, so it
//! never starts over at its beginning and its file grows; a RESTART checkpoint from this task
//! would wait for a gap between the writer's transactions that a busy writer never leaves. So the
//! writer itself bounds the WAL (`bound`, after a group's answers): once the WAL is longer than
//! `RESTART_AT` frames and nearly copied (at most `REWIND_SLACK` frames left), it runs a RESTART
//! checkpoint, which copies that little and makes the next transaction rewind the WAL. Past
//! `RESTART_AT` the task copies whatever is there, so that moment comes soon; a RESTART with
//! much left to copy (its copy and two `fsync`s, tens of milliseconds on a busy disk, with every
//! submission behind it waiting) runs only past `FORCE_AT`, the hard bound, for which the writer
//! waits for the task's copy to end (the task, woken after the writer's check, copies little).
//!
//! The two never run a checkpoint at once (`Gate`): a RESTART that meets the task's PASSIVE
//! inside SQLite waits in SQLite's busy handler, which sleeps in steps of 1 to 100 ms, and with
//! it every submission of the group. So below `FORCE_AT` the writer only tries the gate and, finding the task
//! copying, leaves the rewind to a later commit (the task has just copied most of the WAL then,
//! so the rewind copies little); the task waits for the gate, which costs no submission anything.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// Held by whoever runs a checkpoint; shared by the writer and the checkpoint task.
#[derive(Clone, Default)]
pub(super) struct Gate(Arc<Mutex<()>>);

impl Gate {
    /// Runs `f` holding the gate, waiting for it.
    pub(super) fn hold<T>(&self, f: impl FnOnce() -> T) -> T {
        let _held = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f()
    }
}

/// Frames the WAL may be ahead of the database file before a checkpoint runs (SQLite's default
/// `wal_autocheckpoint`).
pub(super) const START_AT: i64 = 1000;
/// WAL length (frames, ~4 KiB each) past which the writer rewinds the WAL once it is nearly
/// copied.
pub(super) const RESTART_AT: i64 = 4096;
/// Frames left to copy under which the writer's rewind is cheap (~1 MiB).
pub(super) const REWIND_SLACK: i64 = 256;
/// WAL length past which the writer rewinds it however much is left to copy.
pub(super) const FORCE_AT: i64 = 2 * RESTART_AT;

/// `(frames in the WAL, frames of it already copied into the database file)`.
pub(super) fn status(conn: &rusqlite::Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| Ok((r.get(1)?, r.get(2)?)))
}

/// One look at the WAL and whatever checkpoint it calls for.
fn step(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let (log, copied) = status(conn, "NOOP")?;
    let behind = log - copied;
    // Past RESTART_AT any frame left delays the writer's cheap rewind.
    if behind < START_AT && (log < RESTART_AT || behind == 0) {
        return Ok(());
    }
    status(conn, "PASSIVE").map(|_| ())
}

/// Run by the writer after a commit: rewinds a WAL longer than `RESTART_AT` frames once at most
/// `REWIND_SLACK` of it is left to copy, unless the checkpoint task holds the gate (then a later
/// commit does); a WAL longer than `FORCE_AT` in any case, waiting for the task's copy to end.
pub(super) fn bound(conn: &rusqlite::Connection, gate: &Gate) -> rusqlite::Result<()> {
    let (log, copied) = status(conn, "NOOP")?;
    if log < FORCE_AT && (log < RESTART_AT || log - copied > REWIND_SLACK) {
        return Ok(());
    }
    let _held = if log >= FORCE_AT {
        gate.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    } else {
        match gate.0.try_lock() {
            Ok(held) => held,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
        }
    };
    status(conn, "RESTART").map(|_| ())
}

/// The checkpoint thread: runs checkpoints on `conn` each time it is woken, until every sender
/// is gone. A thread of its own (not a task calling a connection thread), so a wake-up is acted
/// on at once, however busy the runtime's workers are.
pub(super) fn run(conn: rusqlite::Connection, gate: Gate, mut wake: mpsc::Receiver<()>) {
    while wake.blocking_recv().is_some() {
        if let Err(e) = gate.hold(|| step(&conn)) {
            tracing::warn!(error = %e, "recorder WAL checkpoint failed; the next write tries again");
        }
    }
}

/// Wakes the checkpoint task after a write; a wake-up already pending covers this one.
pub(super) fn wake(tx: &mpsc::Sender<()>) {
    let _ = tx.try_send(());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer without auto-checkpoints and a second connection for `step`, as the recorder
    /// has them.
    fn pair() -> (tempfile::TempDir, rusqlite::Connection, rusqlite::Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let writer = rusqlite::Connection::open(&path).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer.execute_batch("CREATE TABLE t (b BLOB NOT NULL)").unwrap();
        let other = rusqlite::Connection::open(&path).unwrap();
        (dir, writer, other)
    }

    fn write_pages(conn: &rusqlite::Connection, pages: i64) {
        conn.execute("INSERT INTO t (b) VALUES (zeroblob(?1))", [pages * 4096]).unwrap();
    }

    #[test]
    fn a_short_wal_is_left_alone() {
        let (_d, writer, other) = pair();
        write_pages(&writer, START_AT / 2);
        step(&other).unwrap();
        let (log, copied) = status(&other, "NOOP").unwrap();
        assert!(log > 0 && copied == 0, "{log} {copied}");
    }

    #[test]
    fn past_the_threshold_the_wal_is_copied_without_rewinding() {
        let (_d, writer, other) = pair();
        write_pages(&writer, START_AT + 100);
        step(&other).unwrap();
        let (log, copied) = status(&other, "NOOP").unwrap();
        assert!(log > START_AT && copied == log, "{log} {copied}");
        // Fully copied and nobody reading: the writer's next commit starts the WAL over by itself.
        write_pages(&writer, 1);
        assert!(status(&other, "NOOP").unwrap().0 < 10);
    }

    /// The writer rewinds a long WAL once it is nearly copied, which the task hastens by copying
    /// whatever is there past RESTART_AT; with much left to copy it waits, up to FORCE_AT.
    #[test]
    fn the_writer_rewinds_a_long_wal_once_nearly_copied_and_past_the_hard_bound_always() {
        let (d, writer, other) = pair();
        let gate = Gate::default();
        write_pages(&writer, RESTART_AT);
        // All of it left to copy: no rewind yet.
        bound(&writer, &gate).unwrap();
        let (log, copied) = status(&other, "NOOP").unwrap();
        assert!(log >= RESTART_AT && copied == 0, "{log} {copied}");
        // A reader of this snapshot keeps the writer's next commit from starting the WAL over.
        let mut reader = rusqlite::Connection::open(d.path().join("w.db")).unwrap();
        let snapshot = reader.transaction().unwrap();
        snapshot.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)).unwrap();
        step(&other).unwrap();
        write_pages(&writer, 10);
        snapshot.commit().unwrap();
        // Fewer than START_AT frames behind, but past RESTART_AT: the task copies them all the same.
        step(&other).unwrap();
        let (log, copied) = status(&other, "NOOP").unwrap();
        assert!(log > RESTART_AT && copied == log, "{log} {copied}");
        bound(&writer, &gate).unwrap();
        write_pages(&writer, 1);
        assert!(status(&other, "NOOP").unwrap().0 < 10, "rewound once copied");

        // Much left to copy: no rewind (and its copy) until the WAL passes FORCE_AT.
        write_pages(&writer, RESTART_AT + REWIND_SLACK * 2);
        bound(&writer, &gate).unwrap();
        let (log, copied) = status(&other, "NOOP").unwrap();
        assert!(log > RESTART_AT && copied == 0, "{log} {copied}");
        write_pages(&writer, FORCE_AT - RESTART_AT);
        bound(&writer, &gate).unwrap();
        write_pages(&writer, 1);
        assert!(status(&other, "NOOP").unwrap().0 < 10, "rewound past FORCE_AT");
    }
}
