//! The recorder's SQLite schema and every query it runs. Functions here are synchronous and take a
//! connection; `Recorder` runs them on tokio-rusqlite's connection threads.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use rusqlite_migration::{M, Migrations};

use super::model::{Bag, ClientInfo, ResultDoc, ResultKey, Step, Tagset};

pub mod files;
pub mod history;
mod platforms;
pub mod retention;

pub use history::{History, HistoryMark};

/// Schema history. Append only: a released migration is never edited.
pub fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            r#"
        CREATE TABLE results (
            id              INTEGER PRIMARY KEY,
            idempotency_key TEXT UNIQUE,
            auth_key        TEXT NOT NULL,
            received_at     REAL NOT NULL,      -- unix seconds, the recorder's clock
            client_ip       TEXT,
            submitter       TEXT,
            package         TEXT NOT NULL,
            arch            TEXT NOT NULL,
            host            TEXT NOT NULL,
            tagset_id       INTEGER NOT NULL REFERENCES tagsets(id),
            success         INTEGER NOT NULL,
            duration        REAL,
            client_info     TEXT NOT NULL,      -- the whole bag as JSON, extra keys included
            extras          TEXT NOT NULL
        );
        CREATE INDEX results_by_tagset ON results(tagset_id, id DESC);
        CREATE INDEX results_by_package ON results(package, id DESC);
        CREATE INDEX results_by_arch ON results(arch, id DESC);
        CREATE INDEX results_by_host ON results(host, id DESC);
        CREATE INDEX results_by_time ON results(received_at);
        CREATE INDEX results_failed ON results(id DESC) WHERE success = 0;

        CREATE TABLE steps (
            result_id INTEGER NOT NULL REFERENCES results(id),
            seq       INTEGER NOT NULL,
            name      TEXT NOT NULL,
            type      TEXT NOT NULL,
            command   TEXT NOT NULL,
            status    INTEGER NOT NULL,
            duration  REAL,
            output    TEXT NOT NULL,
            errout    TEXT NOT NULL,
            extra     TEXT NOT NULL,
            PRIMARY KEY (result_id, seq)
        ) WITHOUT ROWID;

        CREATE TABLE result_tags (
            tag       TEXT NOT NULL,
            result_id INTEGER NOT NULL REFERENCES results(id),
            PRIMARY KEY (tag, result_id)
        ) WITHOUT ROWID;

        -- One row per platform; latest_id is kept current on insert so the package page
        -- reads one row per platform instead of scanning history.
        CREATE TABLE tagsets (
            id         INTEGER PRIMARY KEY,
            package    TEXT NOT NULL,
            tagset     TEXT NOT NULL,
            latest_id  INTEGER NOT NULL,
            first_at   REAL NOT NULL,
            latest_at  REAL NOT NULL,
            UNIQUE (package, tagset)
        );
        CREATE INDEX tagsets_by_latest ON tagsets(latest_at);

        CREATE TABLE reservations (
            tagset      TEXT PRIMARY KEY,
            reserved_at REAL NOT NULL,
            allowance   REAL NOT NULL
        );

        CREATE TABLE build_requests (
            tagset       TEXT PRIMARY KEY,
            requested_at REAL NOT NULL
        );
        "#,
        ),
        // Idempotency keys are scoped to their submitter ('' is the embedding program's
        // in-process path), so one submitter cannot pre-empt another's key. The old
        // `results.idempotency_key` column (globally unique) is no longer written.
        M::up(
            r#"
        CREATE TABLE submission_keys (
            scope     TEXT NOT NULL,
            key       TEXT NOT NULL,
            result_id INTEGER NOT NULL REFERENCES results(id),
            PRIMARY KEY (scope, key)
        ) WITHOUT ROWID;
        INSERT INTO submission_keys (scope, key, result_id)
            SELECT coalesce(submitter, ''), idempotency_key, id FROM results WHERE idempotency_key IS NOT NULL;
        "#,
        ),
        // paddock's results name their platform (the image) as `host` now; the per-VM
        // tagsets earlier versions made are merged into one per platform.
        M::up_with_hook("", |tx: &Transaction<'_>| platforms::merge_vm_tagsets(tx).map_err(Into::into)),
        // Files attached to results (pony-build's `/upload`, paddock's run artifacts); an
        // upload names its result by the result's auth_key.
        M::up(
            r#"
        CREATE TABLE files (
            id          INTEGER PRIMARY KEY,
            result_id   INTEGER NOT NULL REFERENCES results(id),
            filename    TEXT NOT NULL,
            description TEXT NOT NULL,
            visible     INTEGER NOT NULL,
            size        INTEGER NOT NULL,
            content     BLOB NOT NULL,
            uploaded_at REAL NOT NULL,
            UNIQUE (result_id, filename)
        );
        CREATE INDEX results_by_auth_key ON results(auth_key);
        "#,
        ),
    ])
}

/// Everything about a submission that is not the result itself.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    pub idempotency_key: Option<&'a str>,
    pub auth_key: &'a str,
    pub client_ip: Option<&'a str>,
    pub submitter: Option<&'a str>,
    pub now: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Inserted {
    pub key: ResultKey,
    pub auth_key: String,
    /// False when the idempotency key was already known and nothing was written.
    pub created: bool,
}

/// Where and when a result arrived (pony-build's receipt).
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub key: ResultKey,
    pub time: f64,
    pub client_ip: Option<String>,
    pub submitter: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    pub receipt: Receipt,
    pub doc: ResultDoc,
    pub tagset: Tagset,
}

/// One line of a listing: enough to draw a grid cell or a feed entry without the steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub key: ResultKey,
    pub time: f64,
    pub package: String,
    pub arch: String,
    pub host: String,
    pub tagset_id: i64,
    pub tagset: Tagset,
    pub success: bool,
    pub duration: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PackageHealth {
    pub package: String,
    pub platforms: i64,
    pub failing: i64,
    pub latest_at: f64,
}

/// Filters for the result search; every field narrows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub package: Option<String>,
    pub arch: Option<String>,
    pub host: Option<String>,
    pub tag: Option<String>,
    pub success: Option<bool>,
    pub since: Option<f64>,
    pub until: Option<f64>,
    /// Keyset pagination: only results with a key below this one.
    pub before: Option<ResultKey>,
    pub limit: u32,
}

/// Limits for `check_should_build`, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct BuildPolicy {
    pub stale_after: f64,
    pub default_allowance: f64,
    pub max_allowance: f64,
}

pub fn insert(tx: &Transaction<'_>, doc: &ResultDoc, sub: &Submission<'_>) -> rusqlite::Result<Inserted> {
    let scope = sub.submitter.unwrap_or("");
    if let Some(k) = sub.idempotency_key {
        let known: Option<(i64, String)> = tx
            .prepare_cached(
                "SELECT r.id, r.auth_key FROM submission_keys k JOIN results r ON r.id = k.result_id
                 WHERE k.scope = ?1 AND k.key = ?2",
            )?
            .query_row([scope, k], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((id, auth_key)) = known {
            return Ok(Inserted { key: ResultKey(id), auth_key, created: false });
        }
    }
    let ci = &doc.client_info;
    let tagset = doc.tagset().canonical();
    // Every statement is prepared once per connection (`prepare_cached`): ingest is the
    // recorder's hot path. The tagset row must exist before the result references it (one
    // statement: an upsert that returns the row's id either way); latest_id is fixed below.
    let tagset_id: i64 = tx
        .prepare_cached(
            "INSERT INTO tagsets (package, tagset, latest_id, first_at, latest_at) VALUES (?1, ?2, 0, ?3, ?3)
             ON CONFLICT (package, tagset) DO UPDATE SET package = excluded.package RETURNING id",
        )?
        .query_row(params![ci.package, tagset, sub.now], |r| r.get(0))?;
    tx.prepare_cached(
        "INSERT INTO results (auth_key, received_at, client_ip, submitter, package, arch, host,
                              tagset_id, success, duration, client_info, extras)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        sub.auth_key,
        sub.now,
        sub.client_ip,
        sub.submitter,
        ci.package,
        ci.arch,
        ci.host,
        tagset_id,
        ci.success,
        ci.duration,
        ci.to_json().to_string(),
        bag_text(&doc.extras),
    ])?;
    let id = tx.last_insert_rowid();
    if let Some(k) = sub.idempotency_key {
        tx.prepare_cached("INSERT INTO submission_keys (scope, key, result_id) VALUES (?1, ?2, ?3)")?.execute(params![scope, k, id])?;
    }
    {
        let mut step = tx.prepare_cached(
            "INSERT INTO steps (result_id, seq, name, type, command, status, duration, output, errout, extra)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for (seq, s) in doc.steps.iter().enumerate() {
            step.execute(params![
                id,
                seq as i64,
                s.name,
                s.step_type,
                s.command,
                s.status,
                s.duration,
                s.output,
                s.errout,
                bag_text(&s.extra),
            ])?;
        }
        let mut tag = tx.prepare_cached("INSERT OR IGNORE INTO result_tags (tag, result_id) VALUES (?1, ?2)")?;
        for t in &ci.tags {
            tag.execute(params![t, id])?;
        }
    }
    tx.prepare_cached("UPDATE tagsets SET latest_id = ?1, latest_at = ?2 WHERE id = ?3 AND latest_id < ?1")?
        .execute(params![id, sub.now, tagset_id])?;
    // A result ends the reservation its check_should_build made.
    tx.prepare_cached("DELETE FROM reservations WHERE tagset = ?1")?.execute([&tagset])?;
    Ok(Inserted { key: ResultKey(id), auth_key: sub.auth_key.to_owned(), created: true })
}

/// A bag as the JSON text stored beside the indexed columns (without copying it first).
fn bag_text(bag: &Bag) -> String {
    if bag.is_empty() {
        return "{}".to_owned();
    }
    serde_json::to_string(bag).expect("a JSON map always serialises")
}

/// Stores every `(result, submission)` of `batch` in one transaction (the writer's group
/// commit): all of them, in order, or on any error none.
pub fn insert_all(conn: &mut Connection, batch: &[(&ResultDoc, Submission<'_>)]) -> rusqlite::Result<Vec<Inserted>> {
    let tx = conn.transaction()?;
    let out = batch.iter().map(|(doc, sub)| insert(&tx, doc, sub)).collect::<rusqlite::Result<Vec<_>>>()?;
    tx.commit()?;
    Ok(out)
}

fn parse_bag(s: &str) -> Bag {
    match serde_json::from_str(s) {
        Ok(serde_json::Value::Object(b)) => b,
        _ => Bag::new(),
    }
}

pub fn get(conn: &Connection, key: ResultKey) -> rusqlite::Result<Option<StoredResult>> {
    let head = conn
        .query_row(
            "SELECT r.received_at, r.client_ip, r.submitter, r.client_info, r.extras, t.tagset
             FROM results r JOIN tagsets t ON t.id = r.tagset_id WHERE r.id = ?1",
            [key.0],
            |r| {
                Ok((
                    r.get::<_, f64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((time, client_ip, submitter, ci, extras, tagset)) = head else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT name, type, command, status, duration, output, errout, extra FROM steps WHERE result_id = ?1 ORDER BY seq",
    )?;
    let steps = stmt
        .query_map([key.0], |r| {
            Ok(Step {
                name: r.get(0)?,
                step_type: r.get(1)?,
                command: r.get(2)?,
                status: r.get(3)?,
                duration: r.get(4)?,
                output: r.get(5)?,
                errout: r.get(6)?,
                extra: parse_bag(&r.get::<_, String>(7)?),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // Stored bags were validated on the way in, so they parse; a hand-edited row degrades to
    // its indexed columns rather than failing the read.
    let client_info = ClientInfo::from_json(serde_json::from_str(&ci).unwrap_or_default())
        .unwrap_or_else(|_| fallback_client_info(&Tagset::from_canonical(&tagset)));
    Ok(Some(StoredResult {
        receipt: Receipt { key, time, client_ip, submitter },
        doc: ResultDoc { client_info, steps, extras: parse_bag(&extras) },
        tagset: Tagset::from_canonical(&tagset),
    }))
}

fn fallback_client_info(ts: &Tagset) -> ClientInfo {
    let find = |p: &str| ts.tags().iter().find_map(|t| t.strip_prefix(p)).unwrap_or_default().to_owned();
    ClientInfo {
        package: find("__package="),
        arch: find("__arch="),
        host: find("__host="),
        tags: ts.display_tags().into_iter().map(str::to_owned).collect(),
        success: false,
        duration: None,
        extra: Bag::new(),
    }
}

const SUMMARY_COLUMNS: &str = "r.id, r.received_at, r.package, r.arch, r.host, r.tagset_id, t.tagset, r.success, r.duration";

fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Summary> {
    Ok(Summary {
        key: ResultKey(r.get(0)?),
        time: r.get(1)?,
        package: r.get(2)?,
        arch: r.get(3)?,
        host: r.get(4)?,
        tagset_id: r.get(5)?,
        tagset: Tagset::from_canonical(&r.get::<_, String>(6)?),
        success: r.get(7)?,
        duration: r.get(8)?,
    })
}

/// One result's summary line.
pub fn summary(conn: &Connection, key: ResultKey) -> rusqlite::Result<Option<Summary>> {
    let sql = format!("SELECT {SUMMARY_COLUMNS} FROM results r JOIN tagsets t ON t.id = r.tagset_id WHERE r.id = ?1");
    conn.prepare_cached(&sql)?.query_row([key.0], summary_row).optional()
}

pub fn packages(conn: &Connection) -> rusqlite::Result<Vec<PackageHealth>> {
    let mut stmt = conn.prepare_cached(
        "SELECT t.package, count(*), sum(r.success = 0), max(t.latest_at)
         FROM tagsets t JOIN results r ON r.id = t.latest_id
         GROUP BY t.package ORDER BY t.package",
    )?;
    stmt.query_map([], |r| Ok(PackageHealth { package: r.get(0)?, platforms: r.get(1)?, failing: r.get(2)?, latest_at: r.get(3)? }))?
        .collect()
}

/// The latest result of every platform of a package, failures first, then newest first.
pub fn latest_per_tagset(conn: &Connection, package: &str) -> rusqlite::Result<Vec<Summary>> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM tagsets t JOIN results r ON r.id = t.latest_id
         WHERE t.package = ?1 ORDER BY r.success ASC, r.id DESC"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    stmt.query_map([package], summary_row)?.collect()
}

/// The newest `limit` results of one platform.
pub fn history(conn: &Connection, tagset_id: i64, limit: u32) -> rusqlite::Result<Vec<Summary>> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM results r JOIN tagsets t ON t.id = r.tagset_id
         WHERE r.tagset_id = ?1 ORDER BY r.id DESC LIMIT ?2"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    stmt.query_map(params![tagset_id, limit], summary_row)?.collect()
}

pub fn search(conn: &Connection, f: &Filter) -> rusqlite::Result<Vec<Summary>> {
    let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM results r JOIN tagsets t ON t.id = r.tagset_id WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut push = |clause: &str, v: rusqlite::types::Value, sql: &mut String| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(p) = &f.package {
        push(" AND r.package = ?", p.clone().into(), &mut sql);
    }
    if let Some(a) = &f.arch {
        push(" AND r.arch = ?", a.clone().into(), &mut sql);
    }
    if let Some(h) = &f.host {
        push(" AND r.host = ?", h.clone().into(), &mut sql);
    }
    if let Some(t) = &f.tag {
        push(" AND r.id IN (SELECT result_id FROM result_tags WHERE tag = ?)", t.clone().into(), &mut sql);
    }
    if let Some(s) = f.success {
        push(" AND r.success = ?", i64::from(s).into(), &mut sql);
    }
    if let Some(t) = f.since {
        push(" AND r.received_at >= ?", t.into(), &mut sql);
    }
    if let Some(t) = f.until {
        push(" AND r.received_at < ?", t.into(), &mut sql);
    }
    if let Some(k) = f.before {
        push(" AND r.id < ?", k.0.into(), &mut sql);
    }
    push(" ORDER BY r.id DESC LIMIT ?", i64::from(f.limit).into(), &mut sql);
    let mut stmt = conn.prepare_cached(&sql)?;
    stmt.query_map(rusqlite::params_from_iter(args), summary_row)?.collect()
}

pub fn tagsets_for_package(conn: &Connection, package: &str) -> rusqlite::Result<Vec<Tagset>> {
    let mut stmt = conn.prepare_cached("SELECT tagset FROM tagsets WHERE package = ?1 ORDER BY id")?;
    stmt.query_map([package], |r| Ok(Tagset::from_canonical(&r.get::<_, String>(0)?)))?.collect()
}

pub fn latest_for_tagset(conn: &Connection, package: &str, tagset: &Tagset) -> rusqlite::Result<Option<ResultKey>> {
    conn.query_row("SELECT latest_id FROM tagsets WHERE package = ?1 AND tagset = ?2", params![package, tagset.canonical()], |r| {
        Ok(ResultKey(r.get(0)?))
    })
    .optional()
}

/// Platforms that reported at least once but not since `older_than`, longest silent first.
pub fn silent_since(conn: &Connection, older_than: f64) -> rusqlite::Result<Vec<Summary>> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM tagsets t JOIN results r ON r.id = t.latest_id
         WHERE t.latest_at < ?1 ORDER BY t.latest_at ASC"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    stmt.query_map([older_than], summary_row)?.collect()
}

pub fn request_build(conn: &Connection, tagset: &Tagset, now: f64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO build_requests (tagset, requested_at) VALUES (?1, ?2)
         ON CONFLICT (tagset) DO UPDATE SET requested_at = excluded.requested_at",
        params![tagset.canonical(), now],
    )?;
    Ok(())
}

/// pony-build's decision, in its order: a forced request wins; a live reservation says no;
/// no result yet, a stale result or a failed one say yes; otherwise the build is up to date.
/// With `reserve`, a yes also reserves the platform for `allowance` seconds (0 = the last
/// build's duration, or the default).
pub fn check_should_build(
    tx: &Transaction<'_>,
    tagset: &Tagset,
    reserve: bool,
    allowance: f64,
    now: f64,
    policy: BuildPolicy,
) -> rusqlite::Result<(bool, String)> {
    let canonical = tagset.canonical();
    let package = tagset.tags().iter().find_map(|t| t.strip_prefix("__package=")).unwrap_or_default().to_owned();
    let last: Option<(f64, bool, Option<f64>)> = tx
        .query_row(
            "SELECT r.received_at, r.success, r.duration FROM tagsets t JOIN results r ON r.id = t.latest_id
             WHERE t.package = ?1 AND t.tagset = ?2",
            params![package, canonical],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;

    let forced = tx.execute("DELETE FROM build_requests WHERE tagset = ?1", [&canonical])? > 0;
    let decision = if forced {
        (true, "build requested".to_owned())
    } else if let Some((at, allowed)) = tx
        .query_row("SELECT reserved_at, allowance FROM reservations WHERE tagset = ?1", [&canonical], |r| {
            Ok((r.get::<_, f64>(0)?, r.get::<_, f64>(1)?))
        })
        .optional()?
        .filter(|(at, allowed)| now - at < *allowed)
    {
        (false, format!("may be in build now (reserved {:.0}s ago for {allowed:.0}s)", now - at))
    } else {
        match last {
            None => (true, "no build recorded for this tagset; build!".to_owned()),
            Some((at, _, _)) if now - at >= policy.stale_after => (true, format!("last build was {:.0}s ago; do build!", now - at)),
            Some((_, false, _)) => (true, "last build was unsuccessful; go!".to_owned()),
            Some(_) => (false, "build up to date".to_owned()),
        }
    };
    if decision.0 && reserve {
        let allowance =
            if allowance > 0.0 { allowance } else { last.and_then(|(_, _, d)| d).filter(|d| *d > 0.0).unwrap_or(policy.default_allowance) }
                .min(policy.max_allowance);
        tx.execute(
            "INSERT INTO reservations (tagset, reserved_at, allowance) VALUES (?1, ?2, ?3)
             ON CONFLICT (tagset) DO UPDATE SET reserved_at = excluded.reserved_at, allowance = excluded.allowance",
            params![canonical, now, allowance],
        )?;
    }
    Ok(decision)
}

/// Row counts of every table holding submitted data; tests compare them around bad input.
pub fn row_counts(conn: &Connection) -> rusqlite::Result<[i64; 4]> {
    let mut out = [0; 4];
    for (i, table) in ["results", "steps", "result_tags", "tagsets"].iter().enumerate() {
        out[i] = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn open() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("r.db")).unwrap();
        migrations().to_latest(&mut conn).unwrap();
        (dir, conn)
    }

    fn doc(host: &str, success: bool) -> ResultDoc {
        ResultDoc::from_json(
            json!({"package": "p", "arch": "x86_64", "host": host, "tags": ["t"], "success": success, "duration": 30.0}),
            json!([{"name": "build", "status": if success { 0 } else { 2 }, "output": "o"}]),
            None,
        )
        .unwrap()
    }

    fn add(conn: &mut Connection, d: &ResultDoc, now: f64, key: Option<&str>) -> Inserted {
        add_as(conn, d, now, key, None)
    }

    fn add_as(conn: &mut Connection, d: &ResultDoc, now: f64, key: Option<&str>, who: Option<&str>) -> Inserted {
        let tx = conn.transaction().unwrap();
        let sub = Submission { idempotency_key: key, auth_key: "a", client_ip: None, submitter: who, now };
        let out = insert(&tx, d, &sub).unwrap();
        tx.commit().unwrap();
        out
    }

    const POLICY: BuildPolicy = BuildPolicy { stale_after: 86_400.0, default_allowance: 3600.0, max_allowance: 14_400.0 };

    fn check(conn: &mut Connection, ts: &Tagset, reserve: bool, now: f64) -> (bool, String) {
        let tx = conn.transaction().unwrap();
        let out = check_should_build(&tx, ts, reserve, 0.0, now, POLICY).unwrap();
        tx.commit().unwrap();
        out
    }

    #[test]
    fn should_build_follows_pony_build_rules() {
        let (_d, mut conn) = open();
        let ok = doc("h", true);
        let ts = ok.tagset();
        assert!(check(&mut conn, &ts, false, 1000.0).0, "no result yet");
        add(&mut conn, &ok, 1000.0, None);
        assert_eq!(check(&mut conn, &ts, false, 1001.0), (false, "build up to date".to_owned()));
        assert!(check(&mut conn, &ts, false, 1000.0 + 86_400.0).0, "stale");
        add(&mut conn, &doc("h", false), 2000.0, None);
        let (flag, reason) = check(&mut conn, &ts, true, 2001.0);
        assert!(flag && reason.contains("unsuccessful"), "{reason}");
        // Reserved for the last build's duration (30 s).
        assert!(!check(&mut conn, &ts, true, 2020.0).0);
        assert!(check(&mut conn, &ts, false, 2032.0).0, "reservation expired");
        request_build(&conn, &ts, 2040.0).unwrap();
        add(&mut conn, &ok, 2050.0, None);
        assert_eq!(check(&mut conn, &ts, false, 2051.0).1, "build requested");
        assert!(!check(&mut conn, &ts, false, 2052.0).0, "a request is used once");
    }

    #[test]
    fn idempotency_key_stores_once() {
        let (_d, mut conn) = open();
        let a = add(&mut conn, &doc("h", true), 1.0, Some("run-1"));
        let b = add(&mut conn, &doc("h", true), 2.0, Some("run-1"));
        assert!(a.created && !b.created);
        assert_eq!(a.key, b.key);
        assert_eq!(row_counts(&conn).unwrap(), [1, 1, 1, 1]);
    }

    #[test]
    fn idempotency_keys_are_scoped_to_their_submitter() {
        let (_d, mut conn) = open();
        let daemon = add(&mut conn, &doc("h", false), 1.0, Some("run-1"));
        let forged = add_as(&mut conn, &doc("h", true), 2.0, Some("run-1"), Some("mallory"));
        let again = add_as(&mut conn, &doc("h", true), 3.0, Some("run-1"), Some("mallory"));
        assert!(daemon.created && forged.created && !again.created);
        assert_ne!(daemon.key, forged.key);
        assert_eq!(forged.key, again.key);
        assert_eq!(add(&mut conn, &doc("h", false), 4.0, Some("run-1")).key, daemon.key);
    }

    #[test]
    fn package_grid_puts_failures_first_then_newest() {
        let (_d, mut conn) = open();
        add(&mut conn, &doc("a", true), 1.0, None);
        add(&mut conn, &doc("b", false), 2.0, None);
        add(&mut conn, &doc("c", true), 3.0, None);
        add(&mut conn, &doc("a", true), 4.0, None);
        let hosts: Vec<_> = latest_per_tagset(&conn, "p").unwrap().into_iter().map(|s| s.host).collect();
        assert_eq!(hosts, ["b", "a", "c"]);
        let f = Filter { success: Some(true), limit: 2, ..Filter::default() };
        let page = search(&conn, &f).unwrap();
        assert_eq!(page.iter().map(|s| s.key.0).collect::<Vec<_>>(), [4, 3]);
        let next = search(&conn, &Filter { before: Some(page[1].key), ..f }).unwrap();
        assert_eq!(next.iter().map(|s| s.key.0).collect::<Vec<_>>(), [1]);
        assert_eq!(silent_since(&conn, 2.5).unwrap().iter().map(|s| s.host.as_str()).collect::<Vec<_>>(), ["b"]);
    }

    fn paddock_doc(vm: &str, run: &str, success: bool) -> ResultDoc {
        ResultDoc::from_json(
            json!({"package": "demo", "arch": "x86_64", "host": vm, "tags": ["linux", "x86_64", "tiny", "local", "nightly"],
                   "success": success, "paddock_run_id": run}),
            json!([{"name": "build", "status": if success { 0 } else { 1 }}]),
            Some(json!({"run_id": run, "image": "tiny", "hypervisor_host": "local"})),
        )
        .unwrap()
    }

    #[test]
    fn the_platform_migration_merges_per_vm_tagsets_and_keeps_every_result() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("r.db")).unwrap();
        migrations().to_version(&mut conn, 2).unwrap();
        add(&mut conn, &paddock_doc("paddock-e9070e0c-9ecb0424", "9ecb0424", true), 1.0, Some("9ecb0424"));
        add(&mut conn, &paddock_doc("paddock-e9070e0c-11112222", "11112222", false), 2.0, Some("11112222"));
        add(&mut conn, &paddock_doc("(no vm)", "33334444", false), 3.0, Some("33334444"));
        // A pony-build client's own machine happens to start with "paddock-": not paddock's.
        add(&mut conn, &doc("paddock-box", true), 4.0, None);
        assert_eq!(row_counts(&conn).unwrap(), [4, 4, 16, 4]);

        migrations().to_latest(&mut conn).unwrap();
        let demo = tagsets_for_package(&conn, "demo").unwrap();
        assert_eq!(demo.len(), 1, "{demo:?}");
        assert_eq!(demo[0].tags(), ["__arch=x86_64", "__host=tiny", "__package=demo", "linux", "nightly", "tiny", "x86_64"]);
        let grid = latest_per_tagset(&conn, "demo").unwrap();
        assert_eq!((grid.len(), grid[0].key, grid[0].host.as_str()), (1, ResultKey(3), "tiny"));
        let h = history(&conn, grid[0].tagset_id, 10).unwrap();
        assert_eq!(h.iter().map(|s| s.key.0).collect::<Vec<_>>(), [3, 2, 1], "every result kept, in order");
        let first = get(&conn, ResultKey(1)).unwrap().unwrap();
        assert_eq!(first.doc.client_info.host, "tiny");
        assert_eq!(first.doc.client_info.tags, ["linux", "x86_64", "tiny", "nightly"]);
        assert_eq!(first.doc.extras["vm_name"], "paddock-e9070e0c-9ecb0424");
        assert_eq!(first.doc.client_info.extra["paddock_run_id"], "9ecb0424");
        assert!(!get(&conn, ResultKey(3)).unwrap().unwrap().doc.extras.contains_key("vm_name"));
        let other = get(&conn, ResultKey(4)).unwrap().unwrap();
        assert_eq!(other.doc.client_info.host, "paddock-box", "a result that is not paddock's is untouched");
        // The hypervisor host left the tags index; 3 old tagsets became 1.
        assert_eq!(row_counts(&conn).unwrap(), [4, 4, 13, 2]);
        let first_at: f64 = conn.query_row("SELECT first_at FROM tagsets WHERE package = 'demo'", [], |r| r.get(0)).unwrap();
        assert_eq!(first_at, 1.0);
        // A result of the new shape joins the merged platform.
        let new = ResultDoc::from_json(
            json!({"package": "demo", "arch": "x86_64", "host": "tiny", "tags": ["linux", "x86_64", "tiny", "nightly"], "success": true}),
            json!([]),
            None,
        )
        .unwrap();
        add(&mut conn, &new, 5.0, Some("55556666"));
        assert_eq!(tagsets_for_package(&conn, "demo").unwrap().len(), 1);
        assert_eq!(latest_per_tagset(&conn, "demo").unwrap()[0].key, ResultKey(5));
    }

    #[test]
    fn history_counts_passes_finds_the_first_failure_and_flaky_ones() {
        let (_d, mut conn) = open();
        // P F P P P F F: result 2 was flaky, 6 is the likely regression.
        for (i, ok) in [true, false, true, true, true, false, false].into_iter().enumerate() {
            add(&mut conn, &doc("h", ok), i as f64, None);
        }
        let ts = latest_per_tagset(&conn, "p").unwrap()[0].tagset_id;
        let h = history::history(&conn, ts, 4).unwrap().unwrap();
        assert_eq!(h.summary(), "2 of last 4 passed");
        assert_eq!(h.last_pass.as_ref().map(|s| s.key), Some(ResultKey(5)));
        assert_eq!(h.first_failure.as_ref().map(|s| s.key), Some(ResultKey(6)));
        let marks: Vec<_> = h.recent.iter().map(|(s, m)| (s.key.0, m.flaky, m.after_pass)).collect();
        assert_eq!(marks, [(7, false, false), (6, false, true), (5, false, false), (4, false, false)]);
        let all = history::history(&conn, ts, 10).unwrap().unwrap();
        assert_eq!(all.recent.iter().filter(|(_, m)| m.flaky).map(|(s, _)| s.key.0).collect::<Vec<_>>(), [2]);
        let listed = search(&conn, &Filter { success: Some(false), limit: 10, ..Filter::default() }).unwrap();
        let marks = history::marks(&conn, &listed).unwrap();
        assert_eq!(marks.iter().map(|m| (m.flaky, m.after_pass)).collect::<Vec<_>>(), [(false, false), (false, true), (true, true)]);
        assert!(history::history(&conn, 999, 4).unwrap().is_none());
    }
}
