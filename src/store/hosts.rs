//! Donated hosts' rows: drain/quarantine blocks, launch history, up/down
//! periods and uploaded image volumes.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::grants::AuditEntry;
use super::{Result, Store, StoreError, parse_ts, ts};
use crate::hosts::{Block, HostHealth};

/// One up or down stretch of a host; `until` is `None` while it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPeriod {
    pub up: bool,
    pub since: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

/// An image file paddock uploaded to a host as a storage volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVolume {
    pub host: String,
    pub image: String,
    pub role: String,
    pub sha256: String,
    pub pool: String,
    pub volume: String,
    pub path: String,
}

impl Store {
    /// Sets (or with `None` lifts) a host's block, with its audit line in the same transaction.
    pub async fn set_host_block(&self, host: &str, block: Option<Block>, audit: Option<AuditEntry>) -> Result<()> {
        let host = host.to_string();
        self.call(move |c| {
            let tx = c.transaction()?;
            match &block {
                None => {
                    tx.execute("DELETE FROM host_blocks WHERE host = ?1", params![host])?;
                }
                Some(b) => {
                    let by = match b {
                        Block::Drained { by, .. } => by.as_str(),
                        Block::Quarantined { .. } => "paddock",
                    };
                    tx.execute(
                        "INSERT INTO host_blocks (host, kind, reason, by, at) VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT(host) DO UPDATE SET kind = ?2, reason = ?3, by = ?4, at = ?5",
                        params![host, b.kind(), b.reason(), by, ts(b.since())],
                    )?;
                }
            }
            if let Some(a) = audit {
                tx.execute(
                    "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![ts(Utc::now()), a.actor, a.action, a.subject, a.detail],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Every blocked host.
    pub async fn host_blocks(&self) -> Result<Vec<(String, Block)>> {
        self.call(|c| {
            let mut stmt = c.prepare("SELECT host, kind, reason, by, at FROM host_blocks ORDER BY host")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (host, kind, reason, by, at) = row?;
                let at = parse_ts(&at)?;
                let block = match kind.as_str() {
                    "drained" => Block::Drained { reason, by, at },
                    "quarantined" => Block::Quarantined { reason, at },
                    k => return Err(StoreError::Corrupt(format!("host block kind `{k}`"))),
                };
                out.push((host, block));
            }
            Ok(out)
        })
        .await
    }

    pub async fn record_launch(&self, host: &str, vm: &str, ok: bool, boot_ms: Option<u64>, error: Option<&str>) -> Result<()> {
        let (host, vm, error) = (host.to_string(), vm.to_string(), error.map(str::to_string));
        self.call(move |c| {
            c.execute(
                "INSERT INTO host_launches (host, vm, at, ok, boot_ms, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![host, vm, ts(Utc::now()), ok, boot_ms.map(|b| b as i64), error],
            )?;
            Ok(())
        })
        .await
    }

    /// Launch counts, boot times and the current run of failures of `host`.
    pub async fn host_health(&self, host: &str) -> Result<HostHealth> {
        let host = host.to_string();
        self.call(move |c| {
            let (launches, failures, mean): (i64, i64, Option<f64>) = c.query_row(
                "SELECT count(*), coalesce(sum(ok = 0), 0), avg(boot_ms) FROM host_launches WHERE host = ?1",
                params![host],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let last_ok: i64 =
                c.query_row("SELECT coalesce(max(id), 0) FROM host_launches WHERE host = ?1 AND ok = 1", params![host], |r| r.get(0))?;
            let consecutive: i64 =
                c.query_row("SELECT count(*) FROM host_launches WHERE host = ?1 AND ok = 0 AND id > ?2", params![host, last_ok], |r| {
                    r.get(0)
                })?;
            let last_boot: Option<i64> = c
                .query_row("SELECT boot_ms FROM host_launches WHERE host = ?1 AND ok = 1 ORDER BY id DESC LIMIT 1", params![host], |r| {
                    r.get(0)
                })
                .optional()?
                .flatten();
            Ok(HostHealth {
                launches: launches as u64,
                failures: failures as u64,
                consecutive_failures: consecutive as u32,
                mean_boot_ms: mean.map(|m| m.round() as u64),
                last_boot_ms: last_boot.map(|b| b as u64),
            })
        })
        .await
    }

    /// Notes that `host` is now up or down; a period in the same state goes on.
    /// Returns whether the state changed.
    pub async fn record_host_state(&self, host: &str, up: bool, reason: Option<&str>) -> Result<bool> {
        let (host, reason) = (host.to_string(), reason.map(str::to_string));
        self.call(move |c| {
            let tx = c.transaction()?;
            let open: Option<(i64, bool)> = tx
                .query_row(
                    "SELECT id, up FROM host_periods WHERE host = ?1 AND until IS NULL ORDER BY id DESC LIMIT 1",
                    params![host],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if open.is_some_and(|(_, was)| was == up) {
                return Ok(false);
            }
            let now = ts(Utc::now());
            if let Some((id, _)) = open {
                tx.execute("UPDATE host_periods SET until = ?1 WHERE id = ?2", params![now, id])?;
            }
            tx.execute("INSERT INTO host_periods (host, up, since, reason) VALUES (?1, ?2, ?3, ?4)", params![host, up, now, reason])?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// The newest `limit` periods of `host`, newest first.
    pub async fn host_periods(&self, host: &str, limit: usize) -> Result<Vec<HostPeriod>> {
        let host = host.to_string();
        self.call(move |c| {
            let mut stmt = c.prepare("SELECT up, since, until, reason FROM host_periods WHERE host = ?1 ORDER BY id DESC LIMIT ?2")?;
            let rows = stmt.query_map(params![host, limit as i64], |r| {
                Ok((r.get::<_, bool>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?, r.get(3)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (up, since, until, reason) = row?;
                out.push(HostPeriod { up, since: parse_ts(&since)?, until: until.as_deref().map(parse_ts).transpose()?, reason });
            }
            Ok(out)
        })
        .await
    }

    pub async fn put_host_volume(&self, v: &HostVolume) -> Result<()> {
        let v = v.clone();
        self.call(move |c| {
            c.execute(
                "INSERT INTO host_volumes (host, image, role, sha256, pool, volume, path, uploaded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(host, image, role) DO UPDATE SET sha256 = ?4, pool = ?5, volume = ?6, path = ?7, uploaded_at = ?8",
                params![v.host, v.image, v.role, v.sha256, v.pool, v.volume, v.path, ts(Utc::now())],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn host_volumes(&self, host: &str) -> Result<Vec<HostVolume>> {
        let host = host.to_string();
        self.call(move |c| {
            let mut stmt =
                c.prepare("SELECT host, image, role, sha256, pool, volume, path FROM host_volumes WHERE host = ?1 ORDER BY image, role")?;
            let rows = stmt.query_map(params![host], |r| {
                Ok(HostVolume {
                    host: r.get(0)?,
                    image: r.get(1)?,
                    role: r.get(2)?,
                    sha256: r.get(3)?,
                    pool: r.get(4)?,
                    volume: r.get(5)?,
                    path: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blocks_health_and_periods_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paddock.db");
        let store = Store::open(&path).await.unwrap();
        let at = Utc::now();
        let audit = AuditEntry { actor: "alice".into(), action: "host.drain".into(), subject: "h1".into(), detail: "disk swap".into() };
        store.set_host_block("h1", Some(Block::Drained { reason: "disk swap".into(), by: "alice".into(), at }), Some(audit)).await.unwrap();
        for (ok, boot) in [(true, Some(100)), (false, None), (true, Some(300)), (false, None), (false, None)] {
            store.record_launch("h1", "vm", ok, boot, (!ok).then_some("boom")).await.unwrap();
        }
        assert!(store.record_host_state("h1", true, None).await.unwrap());
        assert!(!store.record_host_state("h1", true, None).await.unwrap());
        assert!(store.record_host_state("h1", false, Some("connection lost")).await.unwrap());
        drop(store);

        let store = Store::open(&path).await.unwrap();
        let blocks = store.host_blocks().await.unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].0, "h1");
        assert_eq!(blocks[0].1.reason(), "disk swap");
        assert_eq!(blocks[0].1.kind(), "drained");
        assert_eq!(store.audit_entries(10).await.unwrap()[0].action, "host.drain");
        let h = store.host_health("h1").await.unwrap();
        assert_eq!(h, HostHealth { launches: 5, failures: 3, consecutive_failures: 2, mean_boot_ms: Some(200), last_boot_ms: Some(300) });
        assert_eq!(store.host_health("other").await.unwrap(), HostHealth::default());
        let periods = store.host_periods("h1", 10).await.unwrap();
        assert_eq!(periods.len(), 2);
        assert!(!periods[0].up && periods[0].until.is_none());
        assert_eq!(periods[0].reason.as_deref(), Some("connection lost"));
        assert!(periods[1].up && periods[1].until.is_some());
        store.set_host_block("h1", None, None).await.unwrap();
        assert!(store.host_blocks().await.unwrap().is_empty());
    }
}
