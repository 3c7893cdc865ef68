//! Test support shared by every test binary (`mod support;`, or
//! `#[path = "../support/mod.rs"] mod support;` from a folder binary): waits
//! with a deadline, free ports, checked commands, test fleets' TOML, the bundled guest,
//! virsh, headless Chromium, a real sshd and the real recorder binary.
//!
//! Each binary uses a part of it, so unused items are allowed here.
#![allow(dead_code)]

pub mod chromium;
pub mod cli_output;
pub mod donor;
pub mod fixtures;
pub mod fleet;
pub mod guest;
pub mod pony;
pub mod recorder;
pub mod serve;
pub mod sshd;
pub mod virsh;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

/// How often `wait_until` and `wait_for` ask at first, and at most (the pause grows by half
/// each time, so quick probes answer fast and slow ones, like `virsh`, are not run in a loop).
const POLL_FIRST: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(100);

/// Polls `probe` until it holds; panics naming `what` once `limit` has passed.
pub async fn wait_until(what: &str, limit: Duration, mut probe: impl AsyncFnMut() -> bool) {
    wait_for(what, limit, async || probe().await.then_some(())).await
}

/// Polls `probe` until it returns `Some`; panics naming `what` once `limit` has passed.
pub async fn wait_for<T>(what: &str, limit: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    let mut pause = POLL_FIRST;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(POLL_MAX);
    }
}

/// Waits for a child process to exit, at most `limit`; `None` if it is still running.
pub fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[allow(unused_imports)]
pub use sshd::free_port;

/// The repository's root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `test-artifacts/` (screenshots kept for people), created when missing.
pub fn artifacts() -> PathBuf {
    let p = repo().join("test-artifacts");
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Runs `cmd` and panics with its status, stdout and stderr unless it succeeded.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The value of the `key=value` line `key` in `stdout` (as `bench/baseline.sh` prints them).
pub fn value<'a>(stdout: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    stdout.lines().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap_or_else(|| panic!("no `{key}=` line in:\n{stdout}"))
}
