//! Rows of the `vms` table: every VM paddock has created and not yet seen gone.
//!
//! The VM module owns the meaning of `state`; the store keeps it as text.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};

use super::{Result, Store, parse_ts, ts};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    pub name: String,
    pub run_id: Option<String>,
    pub image: String,
    pub host: Option<String>,
    pub state: String,
    pub ssh_port: Option<u16>,
    pub overlay_path: Option<String>,
    pub console_path: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ready_at: Option<DateTime<Utc>>,
    pub hold_until: Option<DateTime<Utc>>,
}

const COLS: &str = "name, run_id, image, host, state, ssh_port, overlay_path, console_path, error, \
                    created_at, updated_at, ready_at, hold_until";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(VmRow, [Option<String>; 4])> {
    Ok((
        VmRow {
            name: r.get(0)?,
            run_id: r.get(1)?,
            image: r.get(2)?,
            host: r.get(3)?,
            state: r.get(4)?,
            ssh_port: r.get::<_, Option<i64>>(5)?.map(|p| p as u16),
            overlay_path: r.get(6)?,
            console_path: r.get(7)?,
            error: r.get(8)?,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            ready_at: None,
            hold_until: None,
        },
        [r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?],
    ))
}

fn finish((mut row, times): (VmRow, [Option<String>; 4])) -> Result<VmRow> {
    let opt = |s: &Option<String>| s.as_deref().map(parse_ts).transpose();
    row.created_at = opt(&times[0])?.unwrap_or_else(Utc::now);
    row.updated_at = opt(&times[1])?.unwrap_or_else(Utc::now);
    row.ready_at = opt(&times[2])?;
    row.hold_until = opt(&times[3])?;
    Ok(row)
}

impl Store {
    /// Inserts or replaces the whole row for `vm.name`.
    pub async fn put_vm(&self, vm: &VmRow) -> Result<()> {
        let vm = vm.clone();
        self.call(move |c| {
            c.execute(
                &format!("INSERT OR REPLACE INTO vms ({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)"),
                params![
                    vm.name,
                    vm.run_id,
                    vm.image,
                    vm.host,
                    vm.state,
                    vm.ssh_port.map(i64::from),
                    vm.overlay_path,
                    vm.console_path,
                    vm.error,
                    ts(vm.created_at),
                    ts(vm.updated_at),
                    vm.ready_at.map(ts),
                    vm.hold_until.map(ts),
                ],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn vm(&self, name: &str) -> Result<Option<VmRow>> {
        let name = name.to_string();
        self.call(move |c| {
            c.query_row(&format!("SELECT {COLS} FROM vms WHERE name = ?1"), [name], from_row).optional()?.map(finish).transpose()
        })
        .await
    }

    /// All VM rows, oldest first.
    pub async fn vms(&self) -> Result<Vec<VmRow>> {
        self.call(move |c| {
            let mut stmt = c.prepare(&format!("SELECT {COLS} FROM vms ORDER BY created_at"))?;
            let rows = stmt.query_map([], from_row)?;
            rows.map(|r| finish(r?)).collect()
        })
        .await
    }

    /// Pins VM `name`'s SSH host key (an OpenSSH public key line), before it boots.
    pub async fn set_vm_host_key(&self, name: &str, line: &str) -> Result<()> {
        let (name, line) = (name.to_string(), line.to_string());
        self.call(move |c| {
            c.execute("INSERT OR REPLACE INTO vm_host_keys (vm, host_key) VALUES (?1, ?2)", [name, line])?;
            Ok(())
        })
        .await
    }

    /// VM `name`'s pinned host key line, if paddock generated one for it.
    pub async fn vm_host_key(&self, name: &str) -> Result<Option<String>> {
        let name = name.to_string();
        self.call(move |c| Ok(c.query_row("SELECT host_key FROM vm_host_keys WHERE vm = ?1", [name], |r| r.get(0)).optional()?)).await
    }

    /// Every pinned host key, by VM name.
    pub async fn vm_host_keys(&self) -> Result<std::collections::BTreeMap<String, String>> {
        self.call(move |c| {
            let mut stmt = c.prepare("SELECT vm, host_key FROM vm_host_keys")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    pub async fn delete_vm(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM vm_host_keys WHERE vm = ?1", [&name])?;
            tx.execute("DELETE FROM vms WHERE name = ?1", [&name])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn vm_rows_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let now = Utc::now();
        let row = VmRow {
            name: "paddock-abc-1".into(),
            run_id: Some("r1".into()),
            image: "tiny".into(),
            host: Some("local".into()),
            state: "booting".into(),
            ssh_port: Some(22201),
            overlay_path: None,
            console_path: Some("/tmp/c.log".into()),
            error: None,
            created_at: now,
            updated_at: now,
            ready_at: None,
            hold_until: Some(now),
        };
        store.put_vm(&row).await.unwrap();
        let got = store.vm("paddock-abc-1").await.unwrap().unwrap();
        assert_eq!(got.ssh_port, Some(22201));
        assert_eq!(got.state, "booting");
        assert_eq!(ts(got.hold_until.unwrap()), ts(now));
        assert_eq!(store.vms().await.unwrap().len(), 1);
        // A pinned host key survives whole-row rewrites and goes with the row.
        store.set_vm_host_key("paddock-abc-1", "ssh-ed25519 AAAA k").await.unwrap();
        store.put_vm(&row).await.unwrap();
        assert_eq!(store.vm_host_key("paddock-abc-1").await.unwrap().as_deref(), Some("ssh-ed25519 AAAA k"));
        assert_eq!(store.vm_host_keys().await.unwrap().len(), 1);
        store.delete_vm("paddock-abc-1").await.unwrap();
        assert!(store.vm("paddock-abc-1").await.unwrap().is_none());
        assert_eq!(store.vm_host_key("paddock-abc-1").await.unwrap(), None);
    }
}
