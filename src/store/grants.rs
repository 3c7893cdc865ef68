//! Rows of `access_requests` (grants) and `certificates`, written with their
//! audit entry in one transaction.
//!
//! The access module owns the meaning of `state`; the store keeps it as text
//! and only refuses an update whose expected previous state no longer holds.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};

use super::{Result, Store, StoreError, parse_ts, ts};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
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
    pub detail: Option<String>,
    pub ssh_host: Option<String>,
    pub ssh_port: Option<u16>,
    pub login_user: Option<String>,
    pub vm_owned: bool,
    pub run_hold_until: Option<DateTime<Utc>>,
    pub keys_installed: bool,
    pub cleaned_at: Option<DateTime<Utc>>,
}

/// One line of the audit trail, written with the change it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

/// A certificate's record; `serial` is assigned by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    pub serial: u64,
    pub grant_id: String,
    pub user: String,
    pub fingerprint: String,
    pub principal: String,
    pub valid_after: DateTime<Utc>,
    pub valid_before: DateTime<Utc>,
}

const COLS: &str = "id, user, image, run_id, duration_s, reason, state, decided_by, created_at, starts_at, \
                    ends_at, vm_name, detail, ssh_host, ssh_port, login_user, vm_owned, run_hold_until, keys_installed, cleaned_at";

type Times = [Option<String>; 5];

fn from_row(r: &Row<'_>) -> rusqlite::Result<(GrantRow, Times)> {
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    Ok((
        GrantRow {
            id: r.get(0)?,
            user: r.get(1)?,
            image: r.get(2)?,
            run_id: r.get(3)?,
            duration_s: r.get(4)?,
            reason: r.get(5)?,
            state: r.get(6)?,
            decided_by: r.get(7)?,
            created_at: epoch,
            starts_at: None,
            ends_at: None,
            vm_name: r.get(11)?,
            detail: r.get(12)?,
            ssh_host: r.get(13)?,
            ssh_port: r.get::<_, Option<i64>>(14)?.map(|p| p as u16),
            login_user: r.get(15)?,
            vm_owned: r.get::<_, i64>(16)? != 0,
            run_hold_until: None,
            keys_installed: r.get::<_, i64>(18)? != 0,
            cleaned_at: None,
        },
        [r.get(8)?, r.get(9)?, r.get(10)?, r.get(17)?, r.get(19)?],
    ))
}

fn finish((mut row, t): (GrantRow, Times)) -> Result<GrantRow> {
    let opt = |s: &Option<String>| s.as_deref().map(parse_ts).transpose();
    row.created_at = opt(&t[0])?.ok_or_else(|| StoreError::Corrupt(format!("grant {} has no created_at", row.id)))?;
    row.starts_at = opt(&t[1])?;
    row.ends_at = opt(&t[2])?;
    row.run_hold_until = opt(&t[3])?;
    row.cleaned_at = opt(&t[4])?;
    Ok(row)
}

fn write_audit(c: &rusqlite::Connection, a: &AuditEntry) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![ts(Utc::now()), a.actor, a.action, a.subject, a.detail],
    )?;
    Ok(())
}

fn values(g: &GrantRow) -> [rusqlite::types::Value; 20] {
    use rusqlite::types::Value;
    let s = |v: &Option<String>| v.clone().map_or(Value::Null, Value::Text);
    let t = |v: Option<DateTime<Utc>>| v.map_or(Value::Null, |t| Value::Text(ts(t)));
    [
        Value::Text(g.id.clone()),
        Value::Text(g.user.clone()),
        s(&g.image),
        s(&g.run_id),
        Value::Integer(g.duration_s),
        Value::Text(g.reason.clone()),
        Value::Text(g.state.clone()),
        s(&g.decided_by),
        Value::Text(ts(g.created_at)),
        t(g.starts_at),
        t(g.ends_at),
        s(&g.vm_name),
        s(&g.detail),
        s(&g.ssh_host),
        g.ssh_port.map_or(Value::Null, |p| Value::Integer(i64::from(p))),
        s(&g.login_user),
        Value::Integer(i64::from(g.vm_owned)),
        t(g.run_hold_until),
        Value::Integer(i64::from(g.keys_installed)),
        t(g.cleaned_at),
    ]
}

impl Store {
    /// Inserts a new grant and its audit entry together.
    pub async fn insert_grant(&self, g: &GrantRow, audit: AuditEntry) -> Result<()> {
        let v = values(g);
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                &format!(
                    "INSERT INTO access_requests ({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20)"
                ),
                rusqlite::params_from_iter(v),
            )?;
            write_audit(&tx, &audit)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Replaces the grant's row if its state is still `expect_state`, writing
    /// `audit` in the same transaction. Returns whether it was replaced.
    pub async fn update_grant(&self, g: &GrantRow, expect_state: &str, audit: Option<AuditEntry>) -> Result<bool> {
        let v = values(g);
        let expect = expect_state.to_string();
        self.call(move |c| {
            let tx = c.transaction()?;
            let sets: Vec<String> = COLS.split(", ").enumerate().skip(1).map(|(i, col)| format!("{col} = ?{}", i + 1)).collect();
            let mut params: Vec<rusqlite::types::Value> = v.to_vec();
            params.push(rusqlite::types::Value::Text(expect));
            let n = tx.execute(
                &format!("UPDATE access_requests SET {} WHERE id = ?1 AND state = ?21", sets.join(", ")),
                rusqlite::params_from_iter(params),
            )?;
            if n == 1
                && let Some(a) = &audit
            {
                write_audit(&tx, a)?;
            }
            tx.commit()?;
            Ok(n == 1)
        })
        .await
    }

    pub async fn grant(&self, id: &str) -> Result<Option<GrantRow>> {
        let id = id.to_string();
        self.call(move |c| {
            c.query_row(&format!("SELECT {COLS} FROM access_requests WHERE id = ?1"), [id], from_row).optional()?.map(finish).transpose()
        })
        .await
    }

    /// Grants, oldest first; only those in one of `states` when it is not empty.
    pub async fn grants(&self, states: &[&str]) -> Result<Vec<GrantRow>> {
        let states: Vec<String> = states.iter().map(|s| s.to_string()).collect();
        self.call(move |c| {
            let mut stmt = c.prepare(&format!("SELECT {COLS} FROM access_requests ORDER BY created_at, id"))?;
            let rows = stmt.query_map([], from_row)?;
            let mut out = Vec::new();
            for r in rows {
                let g = finish(r?)?;
                if states.is_empty() || states.contains(&g.state) {
                    out.push(g);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Reserves the next certificate serial and records what it will certify.
    pub async fn record_certificate(&self, rec: &CertRecord, audit: AuditEntry) -> Result<u64> {
        let rec = rec.clone();
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO certificates (grant_id, user, fingerprint, principal, valid_after, valid_before, issued_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![rec.grant_id, rec.user, rec.fingerprint, rec.principal, ts(rec.valid_after), ts(rec.valid_before), ts(Utc::now())],
            )?;
            let serial = tx.last_insert_rowid() as u64;
            let mut audit = audit;
            audit.detail = format!("serial {serial}; {}", audit.detail);
            write_audit(&tx, &audit)?;
            tx.commit()?;
            Ok(serial)
        })
        .await
    }

    pub async fn certificates_of(&self, grant_id: &str) -> Result<Vec<CertRecord>> {
        let id = grant_id.to_string();
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT serial, grant_id, user, fingerprint, principal, valid_after, valid_before
                 FROM certificates WHERE grant_id = ?1 ORDER BY serial",
            )?;
            let rows = stmt.query_map([id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get::<_, String>(5)?, r.get::<_, String>(6)?))
            })?;
            let mut out = Vec::new();
            for r in rows {
                let (serial, grant_id, user, fingerprint, principal, a, b) = r?;
                out.push(CertRecord {
                    serial: serial as u64,
                    grant_id,
                    user,
                    fingerprint,
                    principal,
                    valid_after: parse_ts(&a)?,
                    valid_before: parse_ts(&b)?,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Audit entries about `subject`, oldest first.
    pub async fn audit_of(&self, subject: &str) -> Result<Vec<(DateTime<Utc>, AuditEntry)>> {
        let subject = subject.to_string();
        self.call(move |c| {
            let mut stmt = c.prepare("SELECT at, actor, action, subject, detail FROM audit WHERE subject = ?1 ORDER BY id")?;
            let rows = stmt.query_map([subject], |r| {
                Ok((r.get::<_, String>(0)?, AuditEntry { actor: r.get(1)?, action: r.get(2)?, subject: r.get(3)?, detail: r.get(4)? }))
            })?;
            let mut out = Vec::new();
            for r in rows {
                let (at, a) = r?;
                out.push((parse_ts(&at)?, a));
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit(action: &str) -> AuditEntry {
        AuditEntry { actor: "mia".into(), action: action.into(), subject: "g1".into(), detail: "d".into() }
    }

    #[tokio::test]
    async fn grant_rows_round_trip_and_guard_their_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Store::open(&path).await.unwrap();
        let now = DateTime::parse_from_rfc3339("2026-03-01T10:00:00.123Z").unwrap().with_timezone(&Utc);
        let mut g = GrantRow {
            id: "g1".into(),
            user: "mia".into(),
            image: None,
            run_id: Some("r1".into()),
            duration_s: 3600,
            reason: "why".into(),
            state: "pending".into(),
            decided_by: None,
            created_at: now,
            starts_at: None,
            ends_at: None,
            vm_name: None,
            detail: None,
            ssh_host: None,
            ssh_port: None,
            login_user: None,
            vm_owned: false,
            run_hold_until: None,
            keys_installed: false,
            cleaned_at: None,
        };
        store.insert_grant(&g, audit("request")).await.unwrap();
        assert_eq!(store.grant("g1").await.unwrap().unwrap(), g);

        g.state = "active".into();
        g.starts_at = Some(now);
        g.ends_at = Some(now + chrono::Duration::hours(1));
        g.vm_name = Some("paddock-x-1".into());
        g.ssh_host = Some("127.0.0.1".into());
        g.ssh_port = Some(22201);
        g.login_user = Some("root".into());
        g.vm_owned = true;
        g.run_hold_until = Some(now + chrono::Duration::minutes(5));
        g.keys_installed = true;
        g.cleaned_at = Some(now);
        g.decided_by = Some("ada".into());
        assert!(store.update_grant(&g, "pending", Some(audit("approve"))).await.unwrap());
        // A second writer expecting the old state loses, and writes no audit line.
        assert!(!store.update_grant(&g, "pending", Some(audit("approve"))).await.unwrap());
        drop(store);

        // Survives a reopen of the file.
        let store = Store::open(&path).await.unwrap();
        assert_eq!(store.grant("g1").await.unwrap().unwrap(), g);
        assert_eq!(store.grants(&["active"]).await.unwrap(), vec![g.clone()]);
        assert!(store.grants(&["pending"]).await.unwrap().is_empty());
        let trail: Vec<String> = store.audit_of("g1").await.unwrap().into_iter().map(|(_, a)| a.action).collect();
        assert_eq!(trail, ["request", "approve"]);
    }

    #[tokio::test]
    async fn certificate_serials_are_unique_and_increasing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let now = Utc::now();
        let rec = CertRecord {
            serial: 0,
            grant_id: "g1".into(),
            user: "mia".into(),
            fingerprint: "SHA256:x".into(),
            principal: "root".into(),
            valid_after: now,
            valid_before: now,
        };
        let a = store.record_certificate(&rec, audit("certificate")).await.unwrap();
        let b = store.record_certificate(&rec, audit("certificate")).await.unwrap();
        assert!(b > a && a > 0);
        let certs = store.certificates_of("g1").await.unwrap();
        assert_eq!(certs.iter().map(|c| c.serial).collect::<Vec<_>>(), [a, b]);
        let trail = store.audit_of("g1").await.unwrap();
        assert_eq!(trail[0].1.detail, format!("serial {a}; d"));
    }
}
