//! Read-only listings for the API and dashboard: the audit trail and access
//! requests (written by the modules that own them).

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{Result, Store, parse_ts};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRow {
    pub id: String,
    pub user: String,
    pub image: Option<String>,
    pub run_id: Option<String>,
    pub duration_s: i64,
    pub reason: String,
    pub state: String,
    pub decided_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub vm_name: Option<String>,
}

impl Store {
    /// The newest audit entries, newest first.
    pub async fn audit_entries(&self, limit: usize) -> Result<Vec<AuditRow>> {
        self.call(move |c| {
            let mut stmt = c.prepare("SELECT id, at, actor, action, subject, detail FROM audit ORDER BY id DESC LIMIT ?1")?;
            let rows = stmt.query_map([limit as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, at, actor, action, subject, detail) = row?;
                out.push(AuditRow { id, at: parse_ts(&at)?, actor, action, subject, detail });
            }
            Ok(out)
        })
        .await
    }

    /// Access requests in `state` (all when `None`), newest first.
    pub async fn access_requests(&self, state: Option<&str>) -> Result<Vec<AccessRow>> {
        let state = state.map(str::to_string);
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, user, image, run_id, duration_s, reason, state, decided_by, created_at, starts_at,
                        ends_at, vm_name
                 FROM access_requests WHERE ?1 IS NULL OR state = ?1 ORDER BY created_at DESC",
            )?;
            let rows = stmt.query_map(params![state], |r| {
                Ok((
                    AccessRow {
                        id: r.get(0)?,
                        user: r.get(1)?,
                        image: r.get(2)?,
                        run_id: r.get(3)?,
                        duration_s: r.get(4)?,
                        reason: r.get(5)?,
                        state: r.get(6)?,
                        decided_by: r.get(7)?,
                        created_at: Utc::now(),
                        starts_at: None,
                        ends_at: None,
                        vm_name: r.get(11)?,
                    },
                    r.get::<_, String>(8)?,
                    r.get::<_, Option<String>>(9)?,
                    r.get::<_, Option<String>>(10)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (mut a, created, starts, ends) = row?;
                a.created_at = parse_ts(&created)?;
                a.starts_at = starts.as_deref().map(parse_ts).transpose()?;
                a.ends_at = ends.as_deref().map(parse_ts).transpose()?;
                out.push(a);
            }
            Ok(out)
        })
        .await
    }
}
