//! The scheduler's memory: the last cron tick handled per job, so that a
//! restarted daemon neither repeats a fire nor forgets one it missed.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{Result, Store, parse_ts, ts};

impl Store {
    pub async fn last_fire(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        let job = job.to_string();
        self.call(move |c| {
            let s: Option<String> = c.query_row("SELECT last_fire FROM schedule_state WHERE job = ?1", [job], |r| r.get(0)).optional()?;
            s.as_deref().map(parse_ts).transpose()
        })
        .await
    }

    pub async fn set_last_fire(&self, job: &str, at: DateTime<Utc>) -> Result<()> {
        let job = job.to_string();
        self.call(move |c| {
            c.execute(
                "INSERT INTO schedule_state (job, last_fire) VALUES (?1, ?2)
                 ON CONFLICT(job) DO UPDATE SET last_fire = excluded.last_fire",
                params![job, ts(at)],
            )?;
            Ok(())
        })
        .await
    }
}
