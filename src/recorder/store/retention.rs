//! How long results (with their steps' output and their files) are kept: each platform's newest
//! results always; the rest until they are older than the age limit, which failures may have
//! longer than passes.

use rusqlite::{Transaction, params};

/// What the retention pass may remove. Times in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Each platform's newest this many results are always kept (at least 1: a platform never
    /// loses its latest result, so it stays on the grid and on "expected results missing").
    pub keep_last: u32,
    /// Older passes beyond `keep_last` go; `None`: passes are removed on count alone.
    pub max_age: Option<f64>,
    /// The same for failures; `None`: as `max_age`.
    pub failure_max_age: Option<f64>,
}

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub results: u64,
    pub files: u64,
    pub file_bytes: u64,
}

/// Removes what `policy` says is past keeping at `now`, in one transaction.
pub fn apply(tx: &Transaction<'_>, policy: Policy, now: f64) -> rusqlite::Result<Removed> {
    let keep = i64::from(policy.keep_last.max(1));
    let pass_cutoff = policy.max_age.map_or(f64::INFINITY, |a| now - a);
    let fail_cutoff = policy.failure_max_age.or(policy.max_age).map_or(f64::INFINITY, |a| now - a);
    tx.execute("CREATE TEMP TABLE IF NOT EXISTS doomed (id INTEGER PRIMARY KEY)", [])?;
    tx.execute("DELETE FROM temp.doomed", [])?;
    tx.execute(
        "INSERT INTO temp.doomed (id)
         SELECT id FROM (
             SELECT id, success, received_at,
                    row_number() OVER (PARTITION BY tagset_id ORDER BY id DESC) AS newest
             FROM results)
         WHERE newest > ?1 AND received_at < CASE WHEN success THEN ?2 ELSE ?3 END",
        params![keep, pass_cutoff, fail_cutoff],
    )?;
    let (files, file_bytes): (i64, i64) =
        tx.query_row("SELECT count(*), coalesce(sum(size), 0) FROM files WHERE result_id IN (SELECT id FROM temp.doomed)", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    for table in ["files", "steps", "result_tags", "submission_keys"] {
        tx.execute(&format!("DELETE FROM {table} WHERE result_id IN (SELECT id FROM temp.doomed)"), [])?;
    }
    let results = tx.execute("DELETE FROM results WHERE id IN (SELECT id FROM temp.doomed)", [])?;
    if results > 0 {
        tx.execute("UPDATE tagsets SET first_at = (SELECT min(received_at) FROM results WHERE tagset_id = tagsets.id)", [])?;
    }
    tx.execute("DELETE FROM temp.doomed", [])?;
    Ok(Removed { results: results as u64, files: files.max(0) as u64, file_bytes: file_bytes.max(0) as u64 })
}
