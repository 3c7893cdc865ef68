//! A platform's history as a maintainer asks about it: how many of the last results passed,
//! the last pass, the first failure after it (the likely regression), and which failures were
//! flaky (the platform's next result passed).

use rusqlite::{Connection, OptionalExtension, params};

use super::{SUMMARY_COLUMNS, Summary, summary_row};

/// What a result is in its platform's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryMark {
    /// A failure whose platform's next result passed: it passed on re-run.
    pub flaky: bool,
    /// A failure right after a pass: where a regression shows first.
    pub after_pass: bool,
}

/// One platform's recent history, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub tagset_id: i64,
    /// The newest results (at most the window asked for), each with its mark.
    pub recent: Vec<(Summary, HistoryMark)>,
    /// How many of `recent` passed.
    pub passed: usize,
    /// The platform's newest passing result, however old.
    pub last_pass: Option<Summary>,
    /// While the platform fails: its first failure after the last pass (the likely
    /// regression). `None` while it passes, or if it never passed.
    pub first_failure: Option<Summary>,
}

impl History {
    /// "3 of the last 4 passed".
    pub fn summary(&self) -> String {
        format!("{} of last {} passed", self.passed, self.recent.len())
    }
}

fn one(conn: &Connection, sql_tail: &str, args: impl rusqlite::Params) -> rusqlite::Result<Option<Summary>> {
    let sql = format!("SELECT {SUMMARY_COLUMNS} FROM results r JOIN tagsets t ON t.id = r.tagset_id WHERE {sql_tail}");
    conn.prepare_cached(&sql)?.query_row(args, summary_row).optional()
}

/// The history of platform `tagset_id` over its newest `window` results; `None` for an
/// unknown platform.
pub fn history(conn: &Connection, tagset_id: i64, window: u32) -> rusqlite::Result<Option<History>> {
    let recent = super::history(conn, tagset_id, window)?;
    let Some(latest) = recent.first() else {
        return Ok(None);
    };
    let latest_failed = !latest.success;
    let last_pass = one(conn, "r.tagset_id = ?1 AND r.success = 1 ORDER BY r.id DESC LIMIT 1", [tagset_id])?;
    let first_failure = match (&last_pass, latest_failed) {
        (Some(pass), true) => {
            one(conn, "r.tagset_id = ?1 AND r.success = 0 AND r.id > ?2 ORDER BY r.id ASC LIMIT 1", params![tagset_id, pass.key.0])?
        }
        _ => None,
    };
    let mut marks = Vec::with_capacity(recent.len());
    for (i, s) in recent.iter().enumerate() {
        let newer_passed = i.checked_sub(1).map(|j| recent[j].success);
        let older_passed = match recent.get(i + 1) {
            Some(o) => Some(o.success),
            None => neighbour_passed(conn, s, false)?,
        };
        marks.push(HistoryMark { flaky: !s.success && newer_passed == Some(true), after_pass: !s.success && older_passed == Some(true) });
    }
    let passed = recent.iter().filter(|s| s.success).count();
    Ok(Some(History { tagset_id, recent: recent.into_iter().zip(marks).collect(), passed, last_pass, first_failure }))
}

/// Whether the platform's result just newer (`newer`) or just older than `s` passed; `None`
/// when there is none.
fn neighbour_passed(conn: &Connection, s: &Summary, newer: bool) -> rusqlite::Result<Option<bool>> {
    let sql = if newer {
        "SELECT success FROM results WHERE tagset_id = ?1 AND id > ?2 ORDER BY id ASC LIMIT 1"
    } else {
        "SELECT success FROM results WHERE tagset_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT 1"
    };
    conn.prepare_cached(sql)?.query_row(params![s.tagset_id, s.key.0], |r| r.get(0)).optional()
}

/// The mark of each result of a listing (a feed, a search), from its platform's neighbours.
pub fn marks(conn: &Connection, results: &[Summary]) -> rusqlite::Result<Vec<HistoryMark>> {
    results
        .iter()
        .map(|s| {
            if s.success {
                return Ok(HistoryMark { flaky: false, after_pass: false });
            }
            Ok(HistoryMark {
                flaky: neighbour_passed(conn, s, true)? == Some(true),
                after_pass: neighbour_passed(conn, s, false)? == Some(true),
            })
        })
        .collect()
}

/// The histories of every platform of `package`, in the package grid's order (failures first,
/// then newest first).
pub fn package_histories(conn: &Connection, package: &str, window: u32) -> rusqlite::Result<Vec<History>> {
    let mut out = Vec::new();
    for latest in super::latest_per_tagset(conn, package)? {
        if let Some(h) = history(conn, latest.tagset_id, window)? {
            out.push(h);
        }
    }
    Ok(out)
}
