//! A run's log: the last lines (`?tail=N`) and a live follow over Server-Sent
//! Events that ends when the run does.
//!
//! The log file is written by the step runner; here it is only a growing byte
//! stream. The follow polls the file for growth and the store for the run's
//! state, at `ApiState::follow_poll`.
//!
//! SSE events: `state` (JSON `FollowState`, whenever the state changes), `log`
//! (a JSON string: the next bytes of the log, as text; the event id is the byte
//! offset after them, so a reconnecting `EventSource` resumes where it was),
//! and `end` (JSON `FollowState`, the last event).

use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path as FsPath, PathBuf};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::runs::{find, finished};
use super::wire::FollowState;
use super::{ApiError, Reader, Shared};
use crate::runs::RunState;
use crate::store::RunRow;

/// The most lines `?tail=` may ask for.
const MAX_TAIL: usize = 100_000;
/// The most bytes one `log` event carries; more waits for the next event.
const CHUNK: usize = 256 * 1024;

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
    let bytes = match row.log_path.clone() {
        // No log yet (the run has not reached its first step): an empty log.
        None => Vec::new(),
        Some(p) => {
            let path = PathBuf::from(&p);
            tokio::task::spawn_blocking(move || read_tail(&path, q.tail))
                .await
                .map_err(|e| ApiError::Log { path: p.clone(), source: std::io::Error::other(e) })?
                .map_err(|source| ApiError::Log { path: p, source })?
        }
    };
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes))
}

/// The last `n` lines of the file (all of it for `None`); a missing file is empty.
pub(crate) fn read_tail(path: &FsPath, n: Option<usize>) -> std::io::Result<Vec<u8>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let Some(n) = n else {
        let mut all = Vec::new();
        f.read_to_end(&mut all)?;
        return Ok(all);
    };
    let len = f.metadata()?.len();
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = len;
    const BLOCK: u64 = 64 * 1024;
    loop {
        // A newline ending the file ends the last line; it does not start another.
        let body = if buf.last() == Some(&b'\n') { &buf[..buf.len() - 1] } else { &buf[..] };
        let mut seen = 0;
        for (i, b) in body.iter().enumerate().rev() {
            if *b == b'\n' {
                seen += 1;
                if seen == n {
                    return Ok(buf[i + 1..].to_vec());
                }
            }
        }
        if pos == 0 {
            return Ok(if n == 0 { Vec::new() } else { buf });
        }
        let start = pos.saturating_sub(BLOCK);
        let mut block = vec![0u8; (pos - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut block)?;
        block.extend_from_slice(&buf);
        buf = block;
        pos = start;
    }
}

pub async fn follow(
    State(s): State<Shared>,
    _r: Reader,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let row = find(&s, &id).await?;
    let offset = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(16);
    tokio::spawn(follow_task(s, row, offset, tx));
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

/// Implementation note: the follow runs in its own task feeding a small
/// channel, so a slow client applies back-pressure to the reads and a client
/// that goes away ends the task at its next send.
async fn follow_task(s: Shared, first: RunRow, mut offset: u64, tx: mpsc::Sender<Result<Event, Infallible>>) {
    let id = first.id.clone();
    let _live = FollowGuard::new(&s.follows);
    let mut last_state: Option<String> = None;
    // Bytes of a UTF-8 sequence split across reads, held for the next event.
    let mut carry: Vec<u8> = Vec::new();
    let mut row = first;
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
                _ = tokio::time::sleep(s.follow_poll) => {}
                _ = tx.closed() => return,
            }
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

/// Counts a follow for as long as its task lives.
struct FollowGuard(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl FollowGuard {
    fn new(n: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> FollowGuard {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        FollowGuard(n.clone())
    }
}

impl Drop for FollowGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
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
