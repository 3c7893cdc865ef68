//! The recorder: a pony-build-style record keeper. Build clients push results (REST or
//! pony-build's XML-RPC); it stores them in its own SQLite file and answers queries as JSON,
//! HTML pages and Atom feeds. Embeddable (`router`) or standalone (`paddock recorder`).

mod auth;
mod checkpoint;
pub mod http;
mod model;
mod store;
mod timing;
mod web;
mod wire;
pub mod xmlrpc;
mod xmlrpc_read;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::Clock;

pub use auth::{Authenticator, Principal, SubmitToken};
pub use model::{Bag, BagError, ClientInfo, ResultDoc, ResultKey, Step, Tagset};
pub use store::files::{Attached, FileInfo, NewFile};
pub use store::retention::Removed;
pub use store::{Filter, History, HistoryMark, PackageHealth, Receipt, StoredResult, Summary};
pub use timing::IngestTimings;

/// How many of a platform's newest results "N of last N passed" counts.
pub const HISTORY_WINDOW: u32 = 10;

/// Everything the recorder serves, with its state applied, ready to `merge` into a bigger app
/// (or `nest` under a prefix, with `RecorderConfig::base_path` set to that prefix): the REST and
/// XML-RPC routes of `http.rs` and the pages and feeds of `web.rs`.
pub fn router(rec: Recorder) -> axum::Router {
    http::router(rec, web::routes())
}

/// The recorder nested under `prefix` (e.g. `/recorder`, which `RecorderConfig::base_path`
/// must match), answering both `{prefix}` and `{prefix}/`: the second redirects to the first,
/// so links written either way work.
pub fn nest_under(prefix: &str, rec: Recorder) -> axum::Router {
    let to = prefix.to_owned();
    axum::Router::new()
        .route(&format!("{prefix}/"), axum::routing::get(move || async move { axum::response::Redirect::permanent(&to) }))
        .nest(prefix, router(rec))
}

/// How a recorder behaves; defaults follow pony-build where it had one.
#[derive(Clone)]
pub struct RecorderConfig {
    /// Submitters and their secrets. Every submission needs one of these (or a caller
    /// `authenticator` accepts): with neither, nothing can be submitted over HTTP.
    pub tokens: Vec<SubmitToken>,
    /// Credentials of the embedding program (the daemon's API tokens), checked after `tokens`.
    pub authenticator: Option<Arc<dyn Authenticator>>,
    /// A platform's last result older than this makes `check_should_build` say yes.
    pub stale_after: Duration,
    /// A platform silent longer than this is listed under "expected results missing".
    pub missing_after: Duration,
    /// How long a reservation lasts when the client asks for 0 and no duration is known.
    pub default_build_allowance: Duration,
    /// The longest reservation granted, whatever the client asks.
    pub max_build_allowance: Duration,
    /// Largest request body accepted, for either protocol.
    pub body_limit: usize,
    /// Most steps one result may have.
    pub max_steps: usize,
    /// Most tags one result's `client_info` may have.
    pub max_tags: usize,
    /// Largest file one upload may attach (pony-build allowed 5 MB a request).
    pub file_limit: usize,
    /// Most bytes of files one result may have, all uploads together.
    pub result_files_limit: u64,
    /// How long after its result arrived an upload with the result's `auth_key` is accepted.
    pub upload_window: Duration,
    /// How long results (their steps' output and files with them) are kept; `None`: forever.
    pub retention: Option<Retention>,
    /// The recorder's time: receipts, upload windows, staleness and retention read it. Follows
    /// tokio's clock, so tests can age results under a paused clock.
    pub clock: Clock,
    /// Path prefix the router is mounted under (e.g. `/recorder`), for links in pages and feeds.
    pub base_path: String,
    /// Reads (JSON, pages, feeds, XML-RPC) need a credential too. Off by default:
    /// pony-build's results were public.
    pub private_reads: bool,
}

impl std::fmt::Debug for RecorderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecorderConfig")
            .field("tokens", &self.tokens)
            .field("authenticator", &self.authenticator.as_ref().map(|_| "<external>"))
            .field("stale_after", &self.stale_after)
            .field("missing_after", &self.missing_after)
            .field("body_limit", &self.body_limit)
            .field("max_steps", &self.max_steps)
            .field("max_tags", &self.max_tags)
            .field("file_limit", &self.file_limit)
            .field("result_files_limit", &self.result_files_limit)
            .field("base_path", &self.base_path)
            .field("private_reads", &self.private_reads)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            tokens: Vec::new(),
            authenticator: None,
            stale_after: Duration::from_secs(24 * 3600),
            missing_after: Duration::from_secs(48 * 3600),
            default_build_allowance: Duration::from_secs(3600),
            max_build_allowance: Duration::from_secs(4 * 3600),
            body_limit: 16 * 1024 * 1024,
            max_steps: 1000,
            max_tags: 100,
            file_limit: 16 << 20,
            result_files_limit: 64 << 20,
            upload_window: Duration::from_secs(24 * 3600),
            retention: None,
            clock: Clock::system(),
            base_path: String::new(),
            private_reads: false,
        }
    }
}

/// How long results are kept: each platform's newest `keep_last` always; older ones until they
/// are older than `max_age` (passes) or `failure_max_age` (failures; absent: `max_age`). With
/// no age at all, results past `keep_last` go on count alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    pub keep_last: u32,
    pub max_age: Option<Duration>,
    pub failure_max_age: Option<Duration>,
    /// How often the background pass runs.
    pub every: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("opening recorder database {path}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("migrating recorder database {path}")]
    Migrate { path: PathBuf, source: rusqlite_migration::Error },
    #[error("invalid result")]
    Invalid(#[from] BagError),
    #[error("recorder database failed while {op}")]
    Database { op: &'static str, source: rusqlite::Error },
    #[error("recorder database connection closed while {op}")]
    Closed { op: &'static str },
    #[error("starting the recorder's {0} thread")]
    Thread(&'static str, #[source] std::io::Error),
    /// An upload whose `auth_key` names no result, or one received too long ago.
    #[error("the auth_key names no result that accepts uploads")]
    UnknownAuthKey,
    /// A file name that cannot be served back safely.
    #[error("filename {0:?}: {1}")]
    BadFilename(String, &'static str),
    /// A result over one of the recorder's limits; nothing was stored.
    #[error("{what}: {got} is more than the limit of {limit}")]
    OverLimit { what: &'static str, got: usize, limit: usize },
}

/// What an ingest did.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingested {
    pub key: ResultKey,
    /// pony-build's per-result secret (it guarded file uploads); returned to XML-RPC callers.
    pub auth_key: String,
    /// False when the idempotency key had been seen and the earlier result was kept.
    pub created: bool,
}

/// Who sent a result and from where; kept in the receipt.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub client_ip: Option<String>,
    /// The authenticated submitter; `None` only for the embedding program's in-process path.
    /// Idempotency keys are scoped to it, so no submitter can pre-empt another's key.
    pub submitter: Option<String>,
}

/// Handle to an open recorder database. Cheap to clone.
///
/// Implementation note: one thread of ours (`write_loop`) owns the connection that takes every
/// write, so writes are serialised without locks; submissions and other writes reach it through
/// one queue, and it answers each submission itself once its group has committed (no hop
/// through a tokio task or another connection thread between a commit and its answers). A
/// second connection serves reads, which WAL lets proceed while a write is in flight; a thread
/// of its own runs the WAL checkpoints (`checkpoint.rs`), so the writer's commits only append to
/// the WAL.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    /// The writer thread's queue (`write_loop`): submissions for its group commits and other writes.
    jobs: tokio::sync::mpsc::Sender<Job>,
    reader: tokio_rusqlite::Connection,
    /// Where `Recorder::checkpoint` copies the WAL (the checkpoint thread of `checkpoint.rs`,
    /// which the writer thread wakes after writes, has a connection of its own).
    checkpointer: tokio_rusqlite::Connection,
    /// Keeps the writer's WAL rewinds and the checkpoint task's copies apart (`checkpoint.rs`).
    gate: checkpoint::Gate,
    config: RecorderConfig,
    tokens: auth::TokenSet,
    timings: Arc<timing::Counters>,
}

/// Work for the writer thread, done in the order it arrives.
enum Job {
    /// A submission for the next group commit (boxed: the queue's slots stay small).
    Ingest(Box<Queued>),
    /// Any other write; the closure sends its own answer.
    Write(Box<dyn FnOnce(&mut rusqlite::Connection) + Send>),
}

/// A validated submission waiting for its commit; `reply` hears once it is durable (or failed).
struct Queued {
    doc: ResultDoc,
    idempotency_key: Option<String>,
    origin: Origin,
    auth_key: String,
    at: f64,
    queued_at: Instant,
    /// The outcome, and when its group committed.
    reply: tokio::sync::oneshot::Sender<(Result<store::Inserted, RecorderError>, Instant)>,
}

/// Most submissions one group commit takes, and about the most bytes of output.
const GROUP_RESULTS: usize = 64;
const GROUP_BYTES: usize = 64 << 20;
/// Jobs that may wait for the writer; more wait in their handlers (back-pressure).
const QUEUE_DEPTH: usize = 64;

fn stored_bytes(doc: &ResultDoc) -> usize {
    doc.steps.iter().map(|s| s.output.len() + s.errout.len() + s.command.len()).sum::<usize>() + 1024
}

/// Opens the writer's connection and brings the schema up to date (on the writer thread).
fn open_writer(path: &Path) -> Result<rusqlite::Connection, RecorderError> {
    let open_err = |source| RecorderError::Open { path: path.to_owned(), source };
    let mut conn = rusqlite::Connection::open(path).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
    // Commits only append to the WAL; the checkpoint task copies it (checkpoint.rs).
    conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(open_err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(open_err)?;
    store::migrations().to_latest(&mut conn).map_err(|source| RecorderError::Migrate { path: path.to_owned(), source })?;
    Ok(conn)
}

/// The writer thread: runs each job on `conn` until every sender of `jobs` is gone. A
/// submission starts a group commit: it takes every submission waiting behind it (up to
/// `GROUP_RESULTS` / `GROUP_BYTES`; a write job ends the group and runs after it), stores them
/// in one transaction and only then answers each. Nothing waits to fill a group: while one
/// commit runs, the next group gathers. A group that fails is stored again one submission per
/// transaction, so only the failing submission fails.
fn write_loop(
    mut conn: rusqlite::Connection,
    mut jobs: tokio::sync::mpsc::Receiver<Job>,
    wrote: tokio::sync::mpsc::Sender<()>,
    gate: checkpoint::Gate,
    timings: Arc<timing::Counters>,
) {
    let mut next = None;
    loop {
        let Some(job) = next.take().or_else(|| jobs.blocking_recv()) else { return };
        let first = match job {
            Job::Write(f) => {
                f(&mut conn);
                checkpoint::wake(&wrote);
                continue;
            }
            Job::Ingest(q) => *q,
        };
        let mut bytes = stored_bytes(&first.doc);
        let mut group = vec![first];
        while group.len() < GROUP_RESULTS && bytes < GROUP_BYTES {
            match jobs.try_recv() {
                Ok(Job::Ingest(q)) => {
                    bytes += stored_bytes(&q.doc);
                    group.push(*q);
                }
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        commit_group(&mut conn, group, &timings);
        // After the answers: a rewind of the WAL delays the next group, not these. Before the
        // checkpoint task's wake-up, which would otherwise take the gate first.
        let checked = Instant::now();
        if let Err(e) = checkpoint::bound(&conn, &gate) {
            tracing::warn!(error = %e, "recorder WAL checkpoint failed; the next commit tries again");
        }
        timings.bound(checked.elapsed());
        checkpoint::wake(&wrote);
    }
}

/// Stores `group` in one transaction (`store_group`) and answers each of its submissions.
fn commit_group(conn: &mut rusqlite::Connection, group: Vec<Queued>, timings: &timing::Counters) {
    let taken = Instant::now();
    let size = group.len();
    let (items, replies): (Vec<_>, Vec<_>) =
        group.into_iter().map(|q| ((q.doc, q.idempotency_key, q.origin, q.auth_key, q.at), (q.reply, q.queued_at))).unzip();
    let outcomes = store_group(conn, &items);
    let committed = Instant::now();
    timings.group(size, committed - taken);
    for ((reply, queued_at), outcome) in replies.into_iter().zip(outcomes) {
        timings.queued(queued_at, taken, committed);
        let _ = reply.send((outcome.map_err(|source| RecorderError::Database { op: "storing a result", source }), committed));
    }
}

type GroupItem = (ResultDoc, Option<String>, Origin, String, f64);

fn submission((_, key, origin, auth_key, at): &GroupItem) -> store::Submission<'_> {
    store::Submission {
        idempotency_key: key.as_deref(),
        auth_key: auth_key.as_str(),
        client_ip: origin.client_ip.as_deref(),
        submitter: origin.submitter.as_deref(),
        now: *at,
    }
}

fn store_group(conn: &mut rusqlite::Connection, items: &[GroupItem]) -> Vec<rusqlite::Result<store::Inserted>> {
    let all: Vec<_> = items.iter().map(|it| (&it.0, submission(it))).collect();
    match store::insert_all(conn, &all) {
        Ok(done) => done.into_iter().map(Ok).collect(),
        Err(e) if items.len() == 1 => vec![Err(e)],
        Err(_) => all.iter().map(|one| store::insert_all(conn, std::slice::from_ref(one)).map(|mut v| v.remove(0))).collect(),
    }
}

/// A file name is served back in a URL path and a Content-Disposition header: one path segment
/// of printable text, at most 255 bytes.
fn check_filename(name: &str) -> Result<(), RecorderError> {
    let bad = |why| Err(RecorderError::BadFilename(name.chars().take(64).collect(), why));
    if name.is_empty() || name.len() > 255 {
        return bad("must be 1 to 255 bytes");
    }
    if name == "." || name == ".." || name.contains(['/', '\\', '"']) {
        return bad("must be one path segment without `/`, `\\` or `\"`");
    }
    if name.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    Ok(())
}

fn db_err(op: &'static str) -> impl FnOnce(tokio_rusqlite::Error<rusqlite::Error>) -> RecorderError {
    move |e| match e {
        tokio_rusqlite::Error::Error(source) => RecorderError::Database { op, source },
        _ => RecorderError::Closed { op },
    }
}

impl Recorder {
    /// Open (creating if needed) the database at `db_path` and bring its schema up to date.
    pub async fn open(db_path: &Path, config: RecorderConfig) -> Result<Recorder, RecorderError> {
        let path = db_path.to_owned();
        let open_err = |source| RecorderError::Open { path: path.clone(), source };
        let (jobs, queued) = tokio::sync::mpsc::channel(QUEUE_DEPTH);
        let (wrote, wake) = tokio::sync::mpsc::channel(1);
        let gate = checkpoint::Gate::default();
        let timings = Arc::new(timing::Counters::default());
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        let (writer_path, writer_wrote, writer_gate, writer_timings) = (path.clone(), wrote.clone(), gate.clone(), timings.clone());
        // Ends when the last handle (and with it the queue's sender) is dropped.
        std::thread::Builder::new()
            .name("recorder-writer".into())
            .spawn(move || match open_writer(&writer_path) {
                Ok(conn) => {
                    let _ = opened_tx.send(Ok(()));
                    write_loop(conn, queued, writer_wrote, writer_gate, writer_timings);
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            })
            .map_err(|e| RecorderError::Thread("writer", e))?;
        opened.await.map_err(|_| RecorderError::Closed { op: "opening" })??;
        let reader = tokio_rusqlite::Connection::open(&path).await.map_err(open_err)?;
        reader
            .call(|conn| {
                conn.busy_timeout(Duration::from_secs(5))?;
                conn.pragma_update(None, "query_only", "ON")
            })
            .await
            .map_err(|e| match e {
                tokio_rusqlite::Error::Error(source) => open_err(source),
                _ => RecorderError::Closed { op: "opening" },
            })?;
        let checkpointer = tokio_rusqlite::Connection::open(&path).await.map_err(open_err)?;
        checkpointer.call(|conn| conn.busy_timeout(Duration::from_secs(5))).await.map_err(|e| match e {
            tokio_rusqlite::Error::Error(source) => open_err(source),
            _ => RecorderError::Closed { op: "opening" },
        })?;
        let tokens = auth::TokenSet::new(&config.tokens);
        // Ends when the writer thread (the wake-up's last sender) is gone.
        let background =
            rusqlite::Connection::open(&path).and_then(|c| c.busy_timeout(Duration::from_secs(5)).map(|()| c)).map_err(open_err)?;
        let task_gate = gate.clone();
        std::thread::Builder::new()
            .name("recorder-checkpoint".into())
            .spawn(move || checkpoint::run(background, task_gate, wake))
            .map_err(|e| RecorderError::Thread("checkpoint", e))?;
        Ok(Recorder { inner: Arc::new(Inner { jobs, reader, checkpointer, config, tokens, gate, timings }) })
    }

    pub fn config(&self) -> &RecorderConfig {
        &self.inner.config
    }

    /// Where submissions' time went since the last call (`timing.rs`); the counters start over.
    pub fn take_ingest_timings(&self) -> IngestTimings {
        self.inner.timings.take()
    }

    /// An HTTP submission's body read and parse times, for `take_ingest_timings`.
    fn note_request(&self, started: Instant, read: Instant, parsed: Instant) {
        self.inner.timings.request(started, read, parsed);
    }

    /// Copies every committed page still only in the WAL into the database file, after any
    /// checkpoint already running; answers once they are there.
    pub async fn checkpoint(&self) -> Result<(), RecorderError> {
        let gate = self.inner.gate.clone();
        self.inner
            .checkpointer
            .call(move |c| gate.hold(|| checkpoint::status(c, "PASSIVE").map(|_| ())))
            .await
            .map_err(db_err("checkpointing"))
    }

    /// Unix seconds on the recorder's clock.
    fn now(&self) -> f64 {
        self.inner.config.clock.now().timestamp_micros() as f64 / 1e6
    }

    /// One retention pass now (nothing without a policy); what it removed is counted in
    /// `/metrics` (`paddock_recorder_retention_removed_total`).
    pub async fn apply_retention(&self) -> Result<Removed, RecorderError> {
        let Some(r) = self.inner.config.retention else { return Ok(Removed::default()) };
        let policy = store::retention::Policy {
            keep_last: r.keep_last,
            max_age: r.max_age.map(|d| d.as_secs_f64()),
            failure_max_age: r.failure_max_age.map(|d| d.as_secs_f64()),
        };
        let at = self.now();
        let removed = self
            .write("applying retention", move |conn| {
                let tx = conn.transaction()?;
                let out = store::retention::apply(&tx, policy, at)?;
                tx.commit()?;
                Ok(out)
            })
            .await?;
        crate::metrics::recorder_retention_removed(removed.results, removed.files, removed.file_bytes);
        if removed.results > 0 {
            tracing::info!(results = removed.results, files = removed.files, bytes = removed.file_bytes, "retention removed old results");
        }
        Ok(removed)
    }

    /// Runs `apply_retention` every `Retention::every` until `shutdown` turns true (nothing
    /// without a policy). A failed pass is logged and tried again at the next tick.
    pub fn spawn_retention(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>> {
        let every = self.inner.config.retention?.every.max(Duration::from_secs(1));
        let rec = self.clone();
        Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                if let Err(e) = rec.apply_retention().await {
                    tracing::warn!(error = %crate::error::chain(&e), "recorder retention pass failed");
                }
            }
        }))
    }

    /// Store a result in-process (the daemon's path, no HTTP and no credential). The same
    /// idempotency key twice stores one result and returns its key both times; keys of this path
    /// live in their own scope, apart from every HTTP submitter's.
    pub async fn ingest(&self, doc: ResultDoc, idempotency_key: Option<String>) -> Result<ResultKey, RecorderError> {
        self.ingest_from(doc, idempotency_key, Origin::default()).await.map(|i| i.key)
    }

    /// Store a result whole or not at all. Answers once the transaction holding it has
    /// committed: submissions that arrive together are committed together (`group_commits`),
    /// each still all or nothing.
    pub async fn ingest_from(&self, doc: ResultDoc, idempotency_key: Option<String>, origin: Origin) -> Result<Ingested, RecorderError> {
        let c = &self.inner.config;
        if doc.steps.len() > c.max_steps {
            return Err(RecorderError::OverLimit { what: "results (steps)", got: doc.steps.len(), limit: c.max_steps });
        }
        let tags = doc.client_info.tags.len();
        if tags > c.max_tags {
            return Err(RecorderError::OverLimit { what: "client_info.tags", got: tags, limit: c.max_tags });
        }
        let auth_key = auth::random_hex(16);
        let at = self.now();
        let (reply, stored) = tokio::sync::oneshot::channel();
        let closed = RecorderError::Closed { op: "storing a result" };
        let queued = Queued { doc, idempotency_key, origin, auth_key, at, queued_at: Instant::now(), reply };
        self.inner.jobs.send(Job::Ingest(Box::new(queued))).await.map_err(|_| RecorderError::Closed { op: "storing a result" })?;
        let (inserted, committed) = stored.await.map_err(|_| closed)?;
        self.inner.timings.answered(committed);
        let inserted = inserted?;
        if inserted.created {
            tracing::info!(key = %inserted.key, "recorded a result");
        }
        Ok(Ingested { key: inserted.key, auth_key: inserted.auth_key, created: inserted.created })
    }

    pub async fn get(&self, key: ResultKey) -> Result<Option<StoredResult>, RecorderError> {
        self.read("reading a result", move |c| store::get(c, key)).await
    }

    pub async fn packages(&self) -> Result<Vec<PackageHealth>, RecorderError> {
        self.read("listing packages", store::packages).await
    }

    /// Latest result of each platform of `package`, failures first, then newest first.
    pub async fn latest_per_tagset(&self, package: &str) -> Result<Vec<Summary>, RecorderError> {
        let p = package.to_owned();
        self.read("listing a package's platforms", move |c| store::latest_per_tagset(c, &p)).await
    }

    pub async fn history(&self, tagset_id: i64, limit: u32) -> Result<Vec<Summary>, RecorderError> {
        self.read("reading a platform's history", move |c| store::history(c, tagset_id, limit)).await
    }

    /// Attach a file to the result whose `auth_key` (handed to its submitter by `add_results` or
    /// `POST /api/v1/results`) is given: pony-build's `/upload`. Idempotent for the same name
    /// and bytes.
    pub async fn upload(&self, auth_key: &str, file: NewFile) -> Result<(ResultKey, Attached), RecorderError> {
        let result = self.upload_target(auth_key).await?;
        self.attach(result, file).await.map(|a| (result, a))
    }

    /// The result an upload with `auth_key` goes to, if it still accepts uploads (`upload_window`).
    pub async fn upload_target(&self, auth_key: &str) -> Result<ResultKey, RecorderError> {
        let key = auth_key.to_owned();
        let found = self.read("finding an upload's result", move |c| store::files::result_for_auth_key(c, &key)).await?;
        let window = self.inner.config.upload_window.as_secs_f64();
        match found {
            Some((result, at)) if self.now() - at <= window => Ok(result),
            _ => Err(RecorderError::UnknownAuthKey),
        }
    }

    /// Attach a file to result `key` (the in-process path: the daemon's run artifacts).
    pub async fn attach(&self, key: ResultKey, file: NewFile) -> Result<Attached, RecorderError> {
        check_filename(&file.filename)?;
        let c = &self.inner.config;
        if file.content.len() > c.file_limit {
            return Err(RecorderError::OverLimit { what: "file", got: file.content.len(), limit: c.file_limit });
        }
        let cap = c.result_files_limit;
        let at = self.now();
        let gate = self.inner.gate.clone();
        self.write("storing a file", move |conn| {
            let tx = conn.transaction()?;
            let out = store::files::attach(&tx, key, &file, cap, at)?;
            tx.commit()?;
            checkpoint::bound(conn, &gate)?;
            Ok(out)
        })
        .await
    }

    pub async fn files(&self, key: ResultKey) -> Result<Vec<FileInfo>, RecorderError> {
        self.read("listing a result's files", move |c| store::files::list(c, key)).await
    }

    pub async fn file_content(&self, key: ResultKey, filename: &str) -> Result<Option<Vec<u8>>, RecorderError> {
        let f = filename.to_owned();
        self.read("reading a file", move |c| store::files::content(c, key, &f)).await
    }

    /// A platform's history over its newest `window` results; `None` for an unknown platform.
    pub async fn platform_history(&self, tagset_id: i64, window: u32) -> Result<Option<History>, RecorderError> {
        self.read("reading a platform's history", move |c| store::history::history(c, tagset_id, window)).await
    }

    /// The history of every platform of `package`, in the package grid's order.
    pub async fn package_histories(&self, package: &str) -> Result<Vec<History>, RecorderError> {
        let p = package.to_owned();
        self.read("reading a package's history", move |c| store::history::package_histories(c, &p, HISTORY_WINDOW)).await
    }

    /// Results matching `filter`, each with its mark in its platform's history.
    pub async fn search_marked(&self, filter: Filter) -> Result<Vec<(Summary, HistoryMark)>, RecorderError> {
        self.read("searching results", move |c| {
            let found = store::search(c, &filter)?;
            let marks = store::history::marks(c, &found)?;
            Ok(found.into_iter().zip(marks).collect())
        })
        .await
    }

    /// A result's mark in its platform's history (flaky, first failure after a pass).
    pub async fn mark_of(&self, key: ResultKey) -> Result<HistoryMark, RecorderError> {
        self.read("reading a result's history", move |c| {
            let found = store::summary(c, key)?;
            Ok(store::history::marks(c, found.as_slice())?.pop().unwrap_or(HistoryMark { flaky: false, after_pass: false }))
        })
        .await
    }

    pub async fn search(&self, filter: Filter) -> Result<Vec<Summary>, RecorderError> {
        self.read("searching results", move |c| store::search(c, &filter)).await
    }

    pub async fn tagsets_for_package(&self, package: &str) -> Result<Vec<Tagset>, RecorderError> {
        let p = package.to_owned();
        self.read("listing tagsets", move |c| store::tagsets_for_package(c, &p)).await
    }

    pub async fn last_result_for_tagset(&self, package: &str, tagset: Tagset) -> Result<Option<StoredResult>, RecorderError> {
        let p = package.to_owned();
        self.read("reading a tagset's last result", move |c| match store::latest_for_tagset(c, &p, &tagset)? {
            Some(key) => store::get(c, key),
            None => Ok(None),
        })
        .await
    }

    /// Platforms that reported before but have been silent longer than `missing_after`.
    pub async fn missing(&self) -> Result<Vec<Summary>, RecorderError> {
        let cutoff = self.now() - self.inner.config.missing_after.as_secs_f64();
        self.read("listing silent platforms", move |c| store::silent_since(c, cutoff)).await
    }

    /// pony-build's `check_should_build`; see `store::check_should_build` for the rules.
    pub async fn check_should_build(&self, tagset: Tagset, reserve: bool, allowance: Duration) -> Result<(bool, String), RecorderError> {
        let c = &self.inner.config;
        let policy = store::BuildPolicy {
            stale_after: c.stale_after.as_secs_f64(),
            default_allowance: c.default_build_allowance.as_secs_f64(),
            max_allowance: c.max_build_allowance.as_secs_f64(),
        };
        let at = self.now();
        let allowance = allowance.as_secs_f64();
        self.write("deciding whether to build", move |conn| {
            let tx = conn.transaction()?;
            let out = store::check_should_build(&tx, &tagset, reserve, allowance, at, policy)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Force the next `check_should_build` for this platform to say yes.
    pub async fn request_build(&self, tagset: Tagset) -> Result<(), RecorderError> {
        let at = self.now();
        self.write("requesting a build", move |c| store::request_build(c, &tagset, at)).await
    }

    /// Rows in results, steps, result_tags, tagsets: for tests that check nothing was stored.
    pub async fn row_counts(&self) -> Result<[i64; 4], RecorderError> {
        self.read("counting rows", store::row_counts).await
    }

    /// The caller a presented secret belongs to: a configured token (always allowed to submit)
    /// or whoever the embedding program's authenticator says; `None` if neither knows it.
    pub async fn authenticate(&self, secret: &str) -> Option<Principal> {
        if let Some(name) = self.inner.tokens.check(secret) {
            return Some(Principal { name: name.to_owned(), may_submit: true });
        }
        match &self.inner.config.authenticator {
            Some(a) => a.authenticate(secret).await,
            None => None,
        }
    }

    /// Whether anyone at all can submit over HTTP (a token or an authenticator is configured).
    pub fn accepts_submissions(&self) -> bool {
        !self.inner.tokens.is_empty() || self.inner.config.authenticator.is_some()
    }

    /// Runs `f` on the writer's connection, after the jobs queued before it.
    async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T, RecorderError>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::Write(Box::new(move |c| {
            let _ = tx.send(f(c));
        }));
        self.inner.jobs.send(job).await.map_err(|_| RecorderError::Closed { op })?;
        rx.await.map_err(|_| RecorderError::Closed { op })?.map_err(|source| RecorderError::Database { op, source })
    }

    async fn read<T, F>(&self, op: &'static str, f: F) -> Result<T, RecorderError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.inner.reader.call(move |c| f(c)).await.map_err(db_err(op))
    }
}

#[cfg(test)]
mod tests;
