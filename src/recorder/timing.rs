//! Where a submission's time goes on its way to a commit: counters cheap enough to keep on
//! always (a few clock reads and relaxed atomic adds per submission and per group), read by
//! `Recorder::take_ingest_timings` (the ingest bench prints them per round).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Sums since the last `take`, in nanoseconds.
#[derive(Default)]
pub(super) struct Counters {
    requests: AtomicU64,
    read: AtomicU64,
    parse: AtomicU64,
    submissions: AtomicU64,
    queued: AtomicU64,
    commit: AtomicU64,
    answer: AtomicU64,
    groups: AtomicU64,
    max_group: AtomicU64,
    writer_busy: AtomicU64,
    writer_bound: AtomicU64,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Counters {
    /// An HTTP submission: from its handler's start to its body read, then to its validated result.
    pub(super) fn request(&self, started: Instant, read: Instant, parsed: Instant) {
        self.requests.fetch_add(1, Relaxed);
        self.read.fetch_add(ns(read - started), Relaxed);
        self.parse.fetch_add(ns(parsed - read), Relaxed);
    }

    /// One submission's wait for the writer to take it, and its group's store-and-commit.
    pub(super) fn queued(&self, queued: Instant, taken: Instant, committed: Instant) {
        self.submissions.fetch_add(1, Relaxed);
        self.queued.fetch_add(ns(taken - queued), Relaxed);
        self.commit.fetch_add(ns(committed - taken), Relaxed);
    }

    /// From the commit to the submission's handler running again.
    pub(super) fn answered(&self, committed: Instant) {
        self.answer.fetch_add(ns(committed.elapsed()), Relaxed);
    }

    /// A group of `size` submissions the writer stored and committed in `busy`.
    pub(super) fn group(&self, size: usize, busy: Duration) {
        self.groups.fetch_add(1, Relaxed);
        self.max_group.fetch_max(size as u64, Relaxed);
        self.writer_busy.fetch_add(ns(busy), Relaxed);
    }

    /// The writer's WAL check after a group's answers (`checkpoint::bound`).
    pub(super) fn bound(&self, took: Duration) {
        self.writer_bound.fetch_add(ns(took), Relaxed);
    }

    pub(super) fn take(&self) -> IngestTimings {
        let d = |a: &AtomicU64| Duration::from_nanos(a.swap(0, Relaxed));
        IngestTimings {
            requests: self.requests.swap(0, Relaxed),
            read: d(&self.read),
            parse: d(&self.parse),
            submissions: self.submissions.swap(0, Relaxed),
            queued: d(&self.queued),
            commit: d(&self.commit),
            answer: d(&self.answer),
            groups: self.groups.swap(0, Relaxed),
            max_group: self.max_group.swap(0, Relaxed),
            writer_busy: d(&self.writer_busy),
            writer_bound: d(&self.writer_bound),
        }
    }
}

/// Totals over the submissions since the last `Recorder::take_ingest_timings`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IngestTimings {
    /// HTTP submissions (REST and XML-RPC `add_results`) whose body was read and validated.
    pub requests: u64,
    /// Handler start (headers in) to the whole body read.
    pub read: Duration,
    /// Body read to the validated result.
    pub parse: Duration,
    /// Submissions that reached the writer (HTTP and in-process).
    pub submissions: u64,
    /// Queued to taken into a group by the writer.
    pub queued: Duration,
    /// Taken to its group committed (the writer's work on the whole group, per member).
    pub commit: Duration,
    /// Committed to its handler running again.
    pub answer: Duration,
    pub groups: u64,
    pub max_group: u64,
    /// The writer's time storing and committing groups (each group once).
    pub writer_busy: Duration,
    /// The writer's time in its WAL check after each group (`checkpoint::bound`).
    pub writer_bound: Duration,
}
