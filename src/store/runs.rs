//! Rows of the `runs` table, and the one transaction that ends a run: its final
//! state, its result document and its outbox entries are written together.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};

use super::{Result, Store, parse_ts, ts};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub id: String,
    pub job: String,
    pub image: String,
    pub trigger: String,
    pub requested_by: Option<String>,
    /// `runs::RunState` as text.
    pub state: String,
    pub host: Option<String>,
    pub vm_name: Option<String>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub result_json: Option<String>,
    pub log_path: Option<String>,
}

/// Filters for listing runs; `None` matches anything.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub job: Option<String>,
    pub image: Option<String>,
    pub state: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Runs whose id starts with this.
    pub id_prefix: Option<String>,
    pub limit: Option<usize>,
}

const COLS: &str = "id, job, image, trigger, requested_by, state, host, vm_name, scheduled_at, created_at, \
                    started_at, finished_at, outcome, reason, result_json, log_path";

fn read(r: &Row<'_>) -> rusqlite::Result<(RunRow, [Option<String>; 4])> {
    Ok((
        RunRow {
            id: r.get(0)?,
            job: r.get(1)?,
            image: r.get(2)?,
            trigger: r.get(3)?,
            requested_by: r.get(4)?,
            state: r.get(5)?,
            host: r.get(6)?,
            vm_name: r.get(7)?,
            scheduled_at: None,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            outcome: r.get(12)?,
            reason: r.get(13)?,
            result_json: r.get(14)?,
            log_path: r.get(15)?,
        },
        [r.get(8)?, Some(r.get(9)?), r.get(10)?, r.get(11)?],
    ))
}

fn finish((mut row, t): (RunRow, [Option<String>; 4])) -> Result<RunRow> {
    let opt = |s: &Option<String>| s.as_deref().map(parse_ts).transpose();
    row.scheduled_at = opt(&t[0])?;
    row.created_at = opt(&t[1])?.unwrap_or_else(Utc::now);
    row.started_at = opt(&t[2])?;
    row.finished_at = opt(&t[3])?;
    Ok(row)
}

/// The fields that change as a run moves.
#[derive(Debug, Clone, Default)]
pub struct RunUpdate {
    pub host: Option<String>,
    pub vm_name: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

impl Store {
    pub async fn insert_run(&self, run: &RunRow) -> Result<()> {
        let r = run.clone();
        self.call(move |c| Ok(insert(c, &r)?)).await
    }

    /// What run `id` re-runs, if it is a retry.
    pub async fn retry_of(&self, id: &str) -> Result<Option<RetryRow>> {
        let id = id.to_string();
        self.call(move |c| {
            Ok(c.query_row(&format!("SELECT {RETRY_COLS} FROM run_retries WHERE run_id = ?1"), [id], read_retry).optional()?)
        })
        .await
    }

    /// Every retry link touching one of `ids` (as the retry or as the run retried): one query
    /// for a page of runs, so a listing shows retries without a query per run.
    pub async fn retry_links(&self, ids: Vec<String>) -> Result<Vec<RetryRow>> {
        let ids = serde_json::to_string(&ids).expect("a list of strings always serialises");
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {RETRY_COLS} FROM run_retries
                 WHERE run_id IN (SELECT value FROM json_each(?1)) OR retry_of IN (SELECT value FROM json_each(?1))"
            ))?;
            let rows = stmt.query_map([ids], read_retry)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// The run that re-runs run `id`, if one was made.
    pub async fn retried_by(&self, id: &str) -> Result<Option<RetryRow>> {
        let id = id.to_string();
        self.call(move |c| {
            Ok(c.query_row(&format!("SELECT {RETRY_COLS} FROM run_retries WHERE retry_of = ?1"), [id], read_retry).optional()?)
        })
        .await
    }
}

const RETRY_COLS: &str = "run_id, retry_of, attempt, attempts, note";

fn read_retry(r: &Row<'_>) -> rusqlite::Result<RetryRow> {
    Ok(RetryRow { run_id: r.get(0)?, retry_of: r.get(1)?, attempt: r.get(2)?, attempts: r.get(3)?, note: r.get(4)? })
}

fn insert(c: &rusqlite::Connection, r: &RunRow) -> rusqlite::Result<()> {
    c.execute(
        &format!("INSERT INTO runs ({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16)"),
        params![
            r.id,
            r.job,
            r.image,
            r.trigger,
            r.requested_by,
            r.state,
            r.host,
            r.vm_name,
            r.scheduled_at.map(ts),
            ts(r.created_at),
            r.started_at.map(ts),
            r.finished_at.map(ts),
            r.outcome,
            r.reason,
            r.result_json,
            r.log_path
        ],
    )?;
    Ok(())
}

impl Store {
    /// Moves a run from `from` to `to`, setting whichever of `update`'s fields
    /// are given, only if the run is still in `from`. Returns whether it was;
    /// `runs::transition` is the one caller, after checking the move is legal.
    pub async fn transition_run(&self, id: &str, from: &str, to: &str, update: RunUpdate) -> Result<bool> {
        let (id, from, to) = (id.to_string(), from.to_string(), to.to_string());
        let pulse_id = id.clone();
        let moved = self
            .call(move |c| {
                let n = c.execute(
                    "UPDATE runs SET state = ?3,
                    host = coalesce(?4, host), vm_name = coalesce(?5, vm_name),
                    started_at = coalesce(?6, started_at), reason = coalesce(?7, reason)
                 WHERE id = ?1 AND state = ?2",
                    params![id, from, to, update.host, update.vm_name, update.started_at.map(ts), update.reason],
                )?;
                Ok(n == 1)
            })
            .await?;
        if moved {
            self.pulses().row_changed(&pulse_id);
        }
        Ok(moved)
    }

    /// Ends a run: final state, outcome, result and one outbox entry per
    /// recorder, all in one transaction, only if the run is still in
    /// `end.from` (returns whether it was; nothing is written otherwise). An
    /// entry already queued for the same run and recorder is kept, so
    /// finishing twice never forwards twice.
    pub async fn finish_run(&self, end: RunEnd) -> Result<bool> {
        self.finish_run_and_retry(end, None).await
    }

    /// [`Store::finish_run`], and in the same transaction `retry`: a new queued
    /// run that re-runs this one, with its link (`run_retries`). So a crash can
    /// never leave a run ended as "will be retried" without its retry.
    pub async fn finish_run_and_retry(&self, end: RunEnd, retry: Option<(RunRow, RetryRow)>) -> Result<bool> {
        let pulse_id = end.run_id.clone();
        let retry_id = retry.as_ref().map(|(run, _)| run.id.clone());
        let ended = self
            .call(move |c| {
                let tx = c.transaction()?;
                if let Some((run, link)) = &retry {
                    insert(&tx, run)?;
                    tx.execute(
                        "INSERT INTO run_retries (run_id, retry_of, attempt, attempts, note) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![link.run_id, link.retry_of, link.attempt, link.attempts, link.note],
                    )?;
                }
                let now = ts(end.finished_at);
                let n = tx.execute(
                    "UPDATE runs SET state = ?2, outcome = ?3, reason = coalesce(?4, reason), result_json = ?5,
                    finished_at = ?6 WHERE id = ?1 AND state = ?7",
                    params![end.run_id, end.state, end.outcome, end.reason, end.result_json, now, end.from],
                )?;
                if n == 0 {
                    return Ok(false);
                }
                for r in &end.recorders {
                    tx.execute(
                        "INSERT OR IGNORE INTO outbox (run_id, recorder, payload, created_at, next_attempt_at)
                     VALUES (?1, ?2, ?3, ?4, ?4)",
                        params![end.run_id, r, end.result_json, now],
                    )?;
                }
                tx.commit()?;
                Ok(true)
            })
            .await?;
        if ended {
            self.pulses().row_changed(&pulse_id);
            if let Some(id) = retry_id {
                self.pulses().row_changed(&id);
            }
        }
        Ok(ended)
    }

    pub async fn run(&self, id: &str) -> Result<Option<RunRow>> {
        let id = id.to_string();
        self.call(move |c| c.query_row(&format!("SELECT {COLS} FROM runs WHERE id = ?1"), [id], read).optional()?.map(finish).transpose())
            .await
    }

    /// Runs matching `filter`, newest first.
    pub async fn runs(&self, filter: RunFilter) -> Result<Vec<RunRow>> {
        self.call(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLS} FROM runs
                 WHERE (?1 IS NULL OR job = ?1) AND (?2 IS NULL OR image = ?2)
                   AND (?3 IS NULL OR state = ?3 OR (?3 = 'running' AND state LIKE 'running:%'))
                   AND (?4 IS NULL OR created_at >= ?4)
                   AND (?6 IS NULL OR substr(id, 1, length(?6)) = ?6)
                 ORDER BY created_at DESC, id DESC LIMIT ?5"
            ))?;
            let limit = filter.limit.unwrap_or(100) as i64;
            let args = params![filter.job, filter.image, filter.state, filter.since.map(ts), limit, filter.id_prefix];
            let rows = stmt.query_map(args, read)?;
            rows.map(|r| finish(r?)).collect()
        })
        .await
    }

    /// The newest finished run of every (job, image) pair, newest first: the
    /// dashboard's grid and the API's "last result" come from this one query.
    pub async fn latest_finished_runs(&self) -> Result<Vec<RunRow>> {
        self.call(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLS} FROM runs r WHERE outcome IS NOT NULL AND id = (
                     SELECT id FROM runs WHERE job = r.job AND image = r.image AND outcome IS NOT NULL
                     ORDER BY created_at DESC, id DESC LIMIT 1)
                 ORDER BY created_at DESC"
            ))?;
            let rows = stmt.query_map([], read)?;
            rows.map(|r| finish(r?)).collect()
        })
        .await
    }

    /// Runs not in a terminal state (queued, in flight or held).
    pub async fn unfinished_runs(&self) -> Result<Vec<RunRow>> {
        self.call(move |c| {
            let mut stmt =
                c.prepare(&format!("SELECT {COLS} FROM runs WHERE state NOT IN ('done', 'failed', 'cancelled') ORDER BY created_at"))?;
            let rows = stmt.query_map([], read)?;
            rows.map(|r| finish(r?)).collect()
        })
        .await
    }

    /// Every finished run's identity, outcome and end, oldest first, for retention (the result
    /// documents are not read).
    pub async fn finished_runs_brief(&self) -> Result<Vec<FinishedRun>> {
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, job, image, outcome, finished_at FROM runs
                 WHERE outcome IS NOT NULL AND finished_at IS NOT NULL ORDER BY finished_at, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?))
            })?;
            rows.map(|r| {
                let (id, job, image, outcome, finished_at) = r?;
                Ok(FinishedRun { id, job, image, success: outcome == "success", finished_at: parse_ts(&finished_at)? })
            })
            .collect()
        })
        .await
    }
}

/// A finished run as retention sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedRun {
    pub id: String,
    pub job: String,
    pub image: String,
    pub success: bool,
    pub finished_at: DateTime<Utc>,
}

/// Everything that ends a run, written in one transaction by [`Store::finish_run`].
#[derive(Debug, Clone)]
pub struct RunEnd {
    pub run_id: String,
    /// The state the run must still be in; nothing is written otherwise.
    pub from: String,
    pub state: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub result_json: String,
    pub finished_at: DateTime<Utc>,
    /// Names of the recorders the result goes to.
    pub recorders: Vec<String>,
}

/// A run that re-runs another after an infrastructure failure (`run_retries`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryRow {
    /// The new run.
    pub run_id: String,
    /// The run it replaces.
    pub retry_of: String,
    /// Which attempt the new run is: 2 for the first retry.
    pub attempt: u32,
    /// How many attempts the job allows in all (1 + `retry_infrastructure`).
    pub attempts: u32,
    /// "retry 1 of 2 after infrastructure failure on host donor".
    pub note: String,
}
