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
//! writer itself bounds the WAL (`bound`): after a commit that left it longer than `RESTART_AT`
//! frames, it runs a RESTART checkpoint, which copies what the task has not copied yet (usually
//! little) and makes the next transaction rewind the WAL.
//!
//! The two never run a checkpoint at once (`Gate`): a RESTART that meets the task's PASSIVE
//! inside SQLite waits in SQLite's busy handler, which sleeps in steps of 1 to 100 ms, and with
//! it every submission of the group. So the writer only tries the gate and, finding the task
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
/// WAL length (frames, ~4 KiB each) past which a checkpoint also rewinds the WAL.
pub(super) const RESTART_AT: i64 = 4096;

/// `(frames in the WAL, frames of it already copied into the database file)`.
pub(super) fn status(conn: &rusqlite::Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| Ok((r.get(1)?, r.get(2)?)))
}

/// One look at the WAL and whatever checkpoint it calls for.
fn step(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let (log, copied) = status(conn, "NOOP")?;
    if log - copied < START_AT {
        return Ok(());
    }
    status(conn, "PASSIVE").map(|_| ())
}

/// Run by the writer after a commit: rewinds a WAL longer than `RESTART_AT` frames, unless the
/// checkpoint task holds the gate (then a later commit does).
pub(super) fn bound(conn: &rusqlite::Connection, gate: &Gate) -> rusqlite::Result<()> {
    let Ok(_held) = gate.0.try_lock() else { return Ok(()) };
    if status(conn, "NOOP")?.0 >= RESTART_AT {
        status(conn, "RESTART")?;
    }
    Ok(())
}

/// Runs checkpoints on `conn` each time it is woken, until every sender is gone.
pub(super) async fn run(conn: tokio_rusqlite::Connection, gate: Gate, mut wake: mpsc::Receiver<()>) {
    while wake.recv().await.is_some() {
        let gate = gate.clone();
        match conn.call(move |c| gate.hold(|| step(c))).await {
            Ok(()) => {}
            Err(tokio_rusqlite::Error::Error(e)) => {
                tracing::warn!(error = %e, "recorder WAL checkpoint failed; the next write tries again");
            }
            Err(_) => return,
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
}
