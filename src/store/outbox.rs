//! Rows of the `outbox` table: results waiting to reach each recorder.
//!
//! Entries are added only by [`Store::finish_run`], in the run's final
//! transaction. Each recorder's entries are delivered oldest first.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};

use super::{Result, Store, parse_ts, ts};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: i64,
    pub run_id: String,
    pub recorder: String,
    pub payload: String,
    pub created_at: DateTime<Utc>,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub remote_key: Option<String>,
}

const COLS: &str = "id, run_id, recorder, payload, created_at, attempts, next_attempt_at, last_error, delivered_at, remote_key";

fn read(r: &Row<'_>) -> rusqlite::Result<(OutboxEntry, [Option<String>; 3])> {
    Ok((
        OutboxEntry {
            id: r.get(0)?,
            run_id: r.get(1)?,
            recorder: r.get(2)?,
            payload: r.get(3)?,
            created_at: Utc::now(),
            attempts: r.get::<_, i64>(5)? as u32,
            next_attempt_at: Utc::now(),
            last_error: r.get(7)?,
            delivered_at: None,
            remote_key: r.get(9)?,
        },
        [Some(r.get(4)?), Some(r.get(6)?), r.get(8)?],
    ))
}

fn finish((mut e, t): (OutboxEntry, [Option<String>; 3])) -> Result<OutboxEntry> {
    let opt = |s: &Option<String>| s.as_deref().map(parse_ts).transpose();
    e.created_at = opt(&t[0])?.unwrap_or_else(Utc::now);
    e.next_attempt_at = opt(&t[1])?.unwrap_or_else(Utc::now);
    e.delivered_at = opt(&t[2])?;
    Ok(e)
}

impl Store {
    /// The oldest undelivered entry for `recorder`, due or not.
    pub async fn outbox_head(&self, recorder: &str) -> Result<Option<OutboxEntry>> {
        let recorder = recorder.to_string();
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {COLS} FROM outbox WHERE recorder = ?1 AND delivered_at IS NULL ORDER BY id LIMIT 1"),
                [recorder],
                read,
            )
            .optional()?
            .map(finish)
            .transpose()
        })
        .await
    }

    pub async fn outbox_delivered(&self, id: i64, remote_key: Option<String>) -> Result<()> {
        self.call(move |c| {
            c.execute(
                "UPDATE outbox SET delivered_at = ?2, remote_key = ?3, attempts = attempts + 1, last_error = NULL
                 WHERE id = ?1",
                params![id, ts(Utc::now()), remote_key],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn outbox_failed(&self, id: i64, error: &str, next_attempt_at: DateTime<Utc>) -> Result<()> {
        let error = error.to_string();
        self.call(move |c| {
            c.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3 WHERE id = ?1",
                params![id, error, ts(next_attempt_at)],
            )?;
            Ok(())
        })
        .await
    }

    /// Undelivered entries (all recorders), oldest first.
    pub async fn outbox_pending(&self) -> Result<Vec<OutboxEntry>> {
        self.call(move |c| {
            let mut stmt = c.prepare(&format!("SELECT {COLS} FROM outbox WHERE delivered_at IS NULL ORDER BY id"))?;
            let rows = stmt.query_map([], read)?;
            rows.map(|r| finish(r?)).collect()
        })
        .await
    }

    /// Every entry of one run (delivered or not).
    pub async fn outbox_for_run(&self, run_id: &str) -> Result<Vec<OutboxEntry>> {
        let run_id = run_id.to_string();
        self.call(move |c| {
            let mut stmt = c.prepare(&format!("SELECT {COLS} FROM outbox WHERE run_id = ?1 ORDER BY id"))?;
            let rows = stmt.query_map([run_id], read)?;
            rows.map(|r| finish(r?)).collect()
        })
        .await
    }
}
