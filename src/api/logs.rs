//! A run's log: the last lines (`?tail=N`) and a live follow over Server-Sent
//! Events that ends when the run does.
//!
//! The log file is written by the step runner; here it is only a growing byte
//! stream. The follow is pushed, never polled: it waits on the run's pulse
//! (`store::RunPulses`), which the log writer bumps after each append and the
//! store after each change of the run's row.
//!
//! SSE events: `state` (JSON `FollowState`, whenever the state changes), `log`
//! (a JSON string: the next bytes of the log, as text; the event id is the byte
//! offset after them, so a reconnecting `EventSource` resumes where it was),
//! and `end` (JSON `FollowState`, the last event).

use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path as FsPath, PathBuf};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::runs::{find, finished};
use super::wire::FollowState;
use super::{ApiError, ApiState, Reader, Shared};
use crate::runs::RunState;
use crate::store::{Pulse, RunRow};

/// The most lines `?tail=` may ask for.
const MAX_TAIL: usize = 100_000;
/// The most bytes one `log` event carries; more waits for the next event. With `QUEUED`, it
/// bounds what a follow holds for a client that does not read: (1 + `QUEUED`) events of at most
/// this much text (`make bench`: 200 followers of a 256 MiB log that read nothing).
const CHUNK: usize = 64 * 1024;
/// Events a follow queues for its client before it waits.
const QUEUED: usize = 2;

#[derive(Debug, Deserialize)]
pub struct TailQuery {
    tail: Option<usize>,
}

pub async fn tail(
    State(s): State<Shared>,
    _r: Reader,
    Path(id): Path<String>,
    q: Result<Query<TailQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if let Some(n) = q.tail
        && n > MAX_TAIL
    {
        return Err(ApiError::BadRequest(format!("tail={n}: at most {MAX_TAIL} lines")));
    }
    let row = find(&s, &id).await?;
    let headers = [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    // No log yet (the run has not reached its first step): an empty log.
    let Some(p) = row.log_path.clone() else { return Ok((headers, axum::body::Body::empty())) };
    let path = PathBuf::from(&p);
    let log_err = |source| ApiError::Log { path: p.clone(), source };
    let opened = tokio::task::spawn_blocking(move || -> std::io::Result<Option<(std::fs::File, u64)>> {
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let start = match q.tail {
            Some(n) => tail_offset(&mut f, len, n)?,
            None => 0,
        };
        f.seek(SeekFrom::Start(start))?;
        Ok(Some((f, len - start)))
    })
    .await
    .map_err(|e| log_err(std::io::Error::other(e)))?
    .map_err(log_err)?;
    let Some((file, len)) = opened else { return Ok((headers, axum::body::Body::empty())) };
    // Streamed in chunks: memory stays flat however long the log or its last line is. Bytes the
    // runner appends meanwhile are not sent; the length is fixed when the request is answered.
    use tokio::io::AsyncReadExt;
    let reader = tokio::fs::File::from_std(file).take(len);
    Ok((headers, axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(reader, 64 * 1024))))
}

/// Where the last `n` lines of a file of `len` bytes start. Reads backwards in blocks and looks
/// at each byte once, so the cost is the size of the tail (plus one block), however long its
/// lines are.
fn tail_offset(f: &mut std::fs::File, len: u64, n: usize) -> std::io::Result<u64> {
    const BLOCK: u64 = 64 * 1024;
    if n == 0 {
        return Ok(len);
    }
    let mut pos = len;
    let mut seen = 0usize;
    let mut block = vec![0u8; BLOCK as usize];
    // A newline ending the file ends the last line; it does not start another.
    let mut skip_last = true;
    while pos > 0 {
        let start = pos.saturating_sub(BLOCK);
        let buf = &mut block[..(pos - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(buf)?;
        for (i, b) in buf.iter().enumerate().rev() {
            if *b != b'\n' {
                skip_last = false;
                continue;
            }
            if std::mem::take(&mut skip_last) {
                continue;
            }
            seen += 1;
            if seen == n {
                return Ok(start + i as u64 + 1);
            }
        }
        pos = start;
    }
    Ok(0)
}

/// The last `n` lines of the file (all of it for `None`); a missing file is empty.
pub(crate) fn read_tail(path: &FsPath, n: Option<usize>) -> std::io::Result<Vec<u8>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = match n {
        Some(n) => tail_offset(&mut f, len, n)?,
        None => 0,
    };
    f.seek(SeekFrom::Start(start))?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

pub async fn follow(
    State(s): State<Shared>,
    r: Reader,
    Path(id): Path<String>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    // Subscribed before the row is read, so no change after the read goes unseen.
    let pulse = s.store.pulses().subscribe(&id);
    let row = find(&s, &id).await?;
    let offset = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let client = match (&r.0, &peer) {
        (Some(actor), _) => format!("user:{}", actor.user),
        (None, Some(Extension(ConnectInfo(addr)))) => format!("address:{}", addr.ip()),
        (None, None) => "anonymous".to_owned(),
    };
    let guard = FollowGuard::try_new(&s, client)?;
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(QUEUED);
    tokio::spawn(follow_task(s, row, pulse, offset, tx, guard));
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

fn follow_state(r: &RunRow) -> FollowState {
    let state = RunState::from_db(&r.state);
    FollowState {
        state: r.state.clone(),
        state_label: state.map(|s| s.to_string()).unwrap_or_else(|| r.state.clone()),
        terminal: state.is_some_and(finished),
        outcome: r.outcome.clone(),
        reason: r.reason.clone(),
    }
}

fn json_event(name: &str, data: &impl serde::Serialize) -> Event {
    // Serialising these plain structs and strings cannot fail.
    Event::default().event(name).json_data(data).unwrap_or_else(|_| Event::default().event(name))
}

/// Implementation note: the follow runs in its own task feeding a small channel, so a slow
/// client applies back-pressure to the reads and a client that goes away ends the task at its
/// next send. It has no timer: it waits on the run's pulse (`store::RunPulses`), reads the log
/// only after the log writer said it grew (or while a read filled a whole chunk) and the run's
/// row only after the store said it changed.
async fn follow_task(
    s: Shared,
    first: RunRow,
    mut pulse: watch::Receiver<Pulse>,
    mut offset: u64,
    tx: mpsc::Sender<Result<Event, Infallible>>,
    _live: FollowGuard,
) {
    let id = first.id.clone();
    let mut last_state: Option<String> = None;
    // Bytes of a UTF-8 sequence split across reads, held for the next event.
    let mut carry: Vec<u8> = Vec::new();
    let mut row = first;
    let mut seen = *pulse.borrow_and_update();
    loop {
        if last_state.as_deref() != Some(&row.state) {
            last_state = Some(row.state.clone());
            if tx.send(Ok(json_event("state", &follow_state(&row)))).await.is_err() {
                return;
            }
        }
        let done = RunState::from_db(&row.state).is_some_and(finished);
        // The state is read before the log: once a run is seen finished, its
        // log is complete, so the read below gets all of it.
        let mut more = false;
        if let Some(p) = row.log_path.clone() {
            match read_from(PathBuf::from(&p), offset).await {
                Ok(bytes) if !bytes.is_empty() => {
                    more = bytes.len() == CHUNK;
                    offset += bytes.len() as u64;
                    carry.extend_from_slice(&bytes);
                    let text = take_utf8(&mut carry, done && !more);
                    let ev = json_event("log", &text).id(offset.to_string());
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(run_id = %id, path = %p, error = %e, "cannot read the run's log"),
            }
        }
        if done && !more {
            let _ = tx.send(Ok(json_event("end", &follow_state(&row)))).await;
            return;
        }
        if !more {
            tokio::select! {
                r = pulse.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
        }
        let now = *pulse.borrow_and_update();
        let row_changed = now.row != seen.row;
        seen = now;
        if !row_changed {
            continue;
        }
        row = match s.store.run(&id).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(run_id = %id, error = %super::chain(&e), "log follow cannot read the run");
                return;
            }
        };
    }
}

/// Counts a follow, in all and for its client, for as long as its task lives.
struct FollowGuard {
    total: Arc<AtomicUsize>,
    by_client: Arc<Mutex<HashMap<String, usize>>>,
    client: String,
}

impl FollowGuard {
    /// Counts one more follow of `client`, unless `limits.live_streams` are already streaming
    /// in all or `limits.live_streams_per_client` for this client.
    fn try_new(s: &ApiState, client: String) -> Result<FollowGuard, ApiError> {
        let mut by_client = s.follows_by_client.lock().expect("follow counts");
        let mine = by_client.get(&client).copied().unwrap_or(0);
        if mine >= s.max_follows_per_client {
            return Err(ApiError::TooMany(format!(
                "{mine} live log streams are open for this client, the limit (limits.live_streams_per_client); close one or try again later"
            )));
        }
        if s.follows.fetch_update(SeqCst, SeqCst, |c| (c < s.max_follows).then_some(c + 1)).is_err() {
            return Err(ApiError::TooMany(format!(
                "{} live log streams are open, the limit (limits.live_streams); close one or try again later",
                s.max_follows
            )));
        }
        by_client.insert(client.clone(), mine + 1);
        Ok(FollowGuard { total: s.follows.clone(), by_client: s.follows_by_client.clone(), client })
    }
}

impl Drop for FollowGuard {
    fn drop(&mut self) {
        let mut by_client = self.by_client.lock().expect("follow counts");
        if let Some(n) = by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                by_client.remove(&self.client);
            }
        }
        self.total.fetch_sub(1, SeqCst);
    }
}

/// Up to `CHUNK` bytes of the file from `offset`; a missing file gives none yet.
async fn read_from(path: PathBuf, offset: u64) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::new();
        f.take(CHUNK as u64).read_to_end(&mut buf)?;
        Ok(buf)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Takes the longest valid UTF-8 prefix of `carry` as text, leaving an
/// incomplete trailing sequence for later; invalid bytes become U+FFFD. With
/// `flush`, everything is taken.
fn take_utf8(carry: &mut Vec<u8>, flush: bool) -> String {
    let cut = match std::str::from_utf8(carry) {
        Ok(_) => carry.len(),
        Err(e) if e.error_len().is_none() && !flush => e.valid_up_to(),
        Err(_) => carry.len(),
    };
    let rest = carry.split_off(cut);
    let text = String::from_utf8_lossy(carry).into_owned();
    *carry = rest;
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_counts_lines_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.log");
        std::fs::write(&p, "a\nb\nc\n").unwrap();
        assert_eq!(read_tail(&p, Some(2)).unwrap(), b"b\nc\n");
        assert_eq!(read_tail(&p, Some(5)).unwrap(), b"a\nb\nc\n");
        assert_eq!(read_tail(&p, Some(0)).unwrap(), b"");
        assert_eq!(read_tail(&p, None).unwrap(), b"a\nb\nc\n");
        std::fs::write(&p, "a\nb\nno newline").unwrap();
        assert_eq!(read_tail(&p, Some(1)).unwrap(), b"no newline");
        assert_eq!(read_tail(&dir.path().join("missing"), Some(3)).unwrap(), b"");
        // Across read blocks.
        let big: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, &big).unwrap();
        assert_eq!(read_tail(&p, Some(3)).unwrap(), b"line 49997\nline 49998\nline 49999\n");
        let many = read_tail(&p, Some(20_000)).unwrap();
        assert_eq!(many.iter().filter(|b| **b == b'\n').count(), 20_000);
        assert!(many.starts_with(b"line 30000\n"));
    }

    #[test]
    fn split_utf8_is_held_back_until_complete() {
        let mut carry = "héllo".as_bytes()[..2].to_vec(); // `h` and half of `é`
        assert_eq!(take_utf8(&mut carry, false), "h");
        assert_eq!(carry.len(), 1);
        carry.extend_from_slice(&"héllo".as_bytes()[2..]);
        assert_eq!(take_utf8(&mut carry, false), "éllo");
        assert!(carry.is_empty());
    }
}
