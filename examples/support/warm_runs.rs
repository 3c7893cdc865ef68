//! What the warm-start benches (`warm_bench`, `warm_guest_bench`) measure a run by.

use std::path::Path;
use std::time::{Duration, Instant};

use paddock::daemon::Daemon;
use paddock::runs::Trigger;

/// The median of the finite samples (none: `None`).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// How one bench watches its runs: the step's marker, how long to wait for it, its log tag.
pub struct Watch {
    pub mark: &'static str,
    pub first_byte_within: Duration,
    pub tag: &'static str,
}

impl Watch {
    /// One run of `job`: trigger → first byte of the marker in its log, and the result's timings.
    pub async fn one(&self, daemon: &Daemon, log_dir: &Path, job: &str) -> (f64, serde_json::Value) {
        let t = Instant::now();
        let id = daemon.runs.trigger(job, None, Trigger::Manual { by: "bench".into() }).await.unwrap().remove(0);
        self.watch(daemon, log_dir, job, t, id).await
    }

    /// Run `id` of `job`, triggered at `t`: its trigger → first byte, once it ended in success.
    pub async fn watch(&self, daemon: &Daemon, log_dir: &Path, job: &str, t: Instant, id: String) -> (f64, serde_json::Value) {
        let mark = self.mark.as_bytes();
        let log = log_dir.join(&id).join("run.log");
        let first = loop {
            if std::fs::read(&log).is_ok_and(|b| b.windows(mark.len()).any(|w| w == mark)) {
                break t.elapsed().as_secs_f64();
            }
            assert!(t.elapsed() < self.first_byte_within, "no step output in {}", log.display());
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let row = loop {
            let row = daemon.store.run(&id).await.unwrap().expect("run exists");
            if matches!(row.state.as_str(), "done" | "failed" | "cancelled" | "held") {
                break row;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(row.outcome.as_deref(), Some("success"), "bench run failed: {row:?}");
        let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
        let timings = doc["extras"]["timings"].clone();
        eprintln!("[{}] {job}: first byte {first:.2}s, {timings}", self.tag);
        (first, timings)
    }
}

/// Until `image`'s ready pool holds an idle clone (at most `within`).
pub async fn wait_pool_idle(daemon: &Daemon, image: &str, within: Duration) {
    let t = Instant::now();
    loop {
        let rows = daemon.store.vms().await.unwrap();
        if rows.iter().any(|v| v.image == image && v.run_id.as_deref() == Some(paddock::vm::READY_POOL_RUN) && v.state == "ready") {
            return;
        }
        assert!(t.elapsed() < within, "the ready pool did not refill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
