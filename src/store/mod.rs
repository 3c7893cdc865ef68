//! The daemon's store: one SQLite file (WAL) in the state directory, with
//! versioned migrations.
//!
//! Implementation note: all access goes through one `tokio_rusqlite::Connection`,
//! which owns a dedicated thread; callers send closures to it. That makes the
//! store the single owner of the database, keeps blocking SQLite calls off the
//! tokio runtime, and serialises writes without locks scattered through the code.

mod events;
mod grants;
mod hosts;
mod listing;
mod outbox;
mod pulse;
mod runs;
mod schedule;
mod tokens;
mod vms;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use rusqlite_migration::{M, Migrations};

pub use events::Event;
pub use grants::{AuditEntry, CertRecord, GrantRow};
pub use hosts::{HostPeriod, HostVolume};
pub use listing::{AccessRow, AuditRow};
pub use outbox::OutboxEntry;
pub use pulse::{Pulse, RunPulses};
pub use runs::{FinishedRun, RetryRow, RunEnd, RunFilter, RunRow, RunUpdate};
pub use tokens::{NewToken, TokenRow};
pub use vms::VmRow;

static MIGRATIONS: LazyLock<Migrations<'static>> = LazyLock::new(|| {
    Migrations::new(vec![
        M::up(include_str!("migrations/001_initial.sql")),
        M::up(include_str!("migrations/002_access.sql")),
        M::up(include_str!("migrations/003_grants.sql")),
        M::up(include_str!("migrations/004_hosts.sql")),
        M::up(include_str!("migrations/005_vm_identity.sql")),
        M::up(include_str!("migrations/006_run_retries.sql")),
    ])
});

/// The number of the newest schema this build knows.
pub fn latest_version() -> usize {
    MIGRATION_COUNT
}
const MIGRATION_COUNT: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {}", path.display())]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error(
        "the store at {} has schema version {found}, newer than this paddock knows ({known}); \
         run a newer paddock or restore a backup",
        path.display()
    )]
    TooNew { path: PathBuf, found: i64, known: usize },
    #[error("migrating the store at {}", path.display())]
    Migrate { path: PathBuf, source: rusqlite_migration::Error },
    /// Split out of `Query` so an operator reads which file system to free, not an SQLite code.
    #[error("the disk holding the store at {} is full", path.display())]
    DiskFull { path: PathBuf, source: rusqlite::Error },
    #[error("store query failed")]
    Query(#[from] rusqlite::Error),
    #[error("the store's connection is closed")]
    Closed,
    #[error("bad value in the store: {0}")]
    Corrupt(String),
}

impl From<tokio_rusqlite::Error<StoreError>> for StoreError {
    fn from(e: tokio_rusqlite::Error<StoreError>) -> Self {
        match e {
            tokio_rusqlite::Error::Error(e) => e,
            _ => StoreError::Closed,
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A handle to the daemon's database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: tokio_rusqlite::Connection,
    path: PathBuf,
    pulses: RunPulses,
}

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    /// A store written by a newer paddock is refused, never downgraded.
    pub async fn open(path: &Path) -> Result<Store> {
        let p = path.to_path_buf();
        let conn = tokio_rusqlite::Connection::open(path).await.map_err(|source| StoreError::Open { path: p.clone(), source })?;
        let pp = p.clone();
        conn.call(move |c| prepare(c, &pp)).await?;
        Ok(Store { conn, path: p, pulses: RunPulses::default() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Change notices per followed run: the store pulses after each write to a run's row.
    pub fn pulses(&self) -> &RunPulses {
        &self.pulses
    }

    /// Runs `f` on the store's thread.
    pub(crate) async fn call<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut rusqlite::Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.conn.call(f).await.map_err(|e| match StoreError::from(e) {
            StoreError::Query(source) if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) => {
                StoreError::DiskFull { path: self.path.clone(), source }
            }
            other => other,
        })
    }

    /// The schema version recorded in the file.
    pub async fn schema_version(&self) -> Result<i64> {
        self.call(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?)).await
    }
}

fn prepare(c: &mut rusqlite::Connection, path: &Path) -> Result<()> {
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    let found: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > MIGRATION_COUNT as i64 {
        return Err(StoreError::TooNew { path: path.to_path_buf(), found, known: MIGRATION_COUNT });
    }
    MIGRATIONS.to_latest(c).map_err(|source| StoreError::Migrate { path: path.to_path_buf(), source })
}

/// Timestamps are stored as RFC 3339 UTC text so that they sort and read well.
pub(crate) fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn parse_ts(s: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| StoreError::Corrupt(format!("bad timestamp `{s}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        MIGRATIONS.validate().unwrap();
        assert_eq!(MIGRATION_COUNT, 6);
    }

    #[tokio::test]
    async fn opens_migrates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paddock.db");
        let store = Store::open(&path).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), MIGRATION_COUNT as i64);
        let mode: String = store.call(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(mode, "wal");
        drop(store);
        let again = Store::open(&path).await.unwrap();
        assert_eq!(again.schema_version().await.unwrap(), MIGRATION_COUNT as i64);
    }

    #[tokio::test]
    async fn migrates_an_old_store_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paddock.db");
        // A store as the first schema left it, before any later migration.
        {
            let mut c = rusqlite::Connection::open(&path).unwrap();
            Migrations::new(vec![M::up(include_str!("migrations/001_initial.sql")), M::up(include_str!("migrations/002_access.sql"))])
                .to_latest(&mut c)
                .unwrap();
            c.execute("INSERT INTO events (at, kind, subject, detail) VALUES ('2026-01-01T00:00:00Z', 'k', 's', 'd')", []).unwrap();
        }
        let store = Store::open(&path).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), MIGRATION_COUNT as i64);
        let n: i64 = store.call(|c| Ok(c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(n, 1);
        // Tables from later migrations exist now.
        let audit: i64 = store.call(|c| Ok(c.query_row("SELECT count(*) FROM audit", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(audit, 0);
    }

    #[tokio::test]
    async fn refuses_a_store_from_a_newer_paddock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paddock.db");
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = match Store::open(&path).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a newer store must be refused"),
        };
        assert_eq!(
            err,
            format!(
                "the store at {} has schema version 99, newer than this paddock knows ({MIGRATION_COUNT}); \
                 run a newer paddock or restore a backup",
                path.display()
            )
        );
    }
}
