//! The event log: things an operator may want to look back on (reaped domains,
//! skipped fires, hosts going down), kept as plain rows.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{Result, Store, parse_ts, ts};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub subject: String,
    pub detail: String,
}

impl Store {
    pub async fn record_event(&self, kind: &str, subject: &str, detail: &str) -> Result<()> {
        let (kind, subject, detail) = (kind.to_string(), subject.to_string(), detail.to_string());
        self.call(move |c| {
            c.execute(
                "INSERT INTO events (at, kind, subject, detail) VALUES (?1, ?2, ?3, ?4)",
                params![ts(Utc::now()), kind, subject, detail],
            )?;
            Ok(())
        })
        .await
    }

    /// The newest events of `kind` (all kinds when `None`), newest first.
    pub async fn events(&self, kind: Option<&str>, limit: usize) -> Result<Vec<Event>> {
        let kind = kind.map(str::to_string);
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT at, kind, subject, detail FROM events
                 WHERE ?1 IS NULL OR kind = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![kind, limit as i64], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (at, kind, subject, detail) = row?;
                out.push(Event { at: parse_ts(&at)?, kind, subject, detail });
            }
            Ok(out)
        })
        .await
    }
}
