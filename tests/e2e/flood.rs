//! The issue's 2 GiB flood: a guest step that sets out to print 2 GiB. Under TCG here guest
//! output arrives at about 1.3 MB/s, so draining it would take about 27 minutes; paddock kills
//! the step once its output passes `limits.step_kill_after` and fails it naming the limit,
//! with its logs capped and marked and the host's disk use bounded by the caps.

use std::time::{Duration, Instant};

use paddock::runs::Trigger;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_printing_2_gib_is_killed_at_the_output_limit_with_capped_marked_logs() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(
        dir.path(),
        "23420-23424",
        PER_VM,
        r#"
[[jobs]]
name = "flood-2g"
images = ["tiny"]
[[jobs.steps]]
name = "print-2-gib"
type = "build"
command = "head -c 2147483648 /dev/zero; echo pdkt3-never-reached >&2"
timeout = "60m"

[limits]
run_log = "8MiB"
step_log = "4MiB"
step_output = "256KiB"
step_kill_after = "16MiB"
"#,
    );
    assert_eq!(fleet.limits.step_kill_after_bytes, Some(16 << 20));
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let ids = daemon.runs.trigger("flood-2g", None, Trigger::Manual { by: "alice".into() }).await.unwrap();
    wait_for_run(&daemon, &ids[0], Duration::from_secs(300), |r| r.state.starts_with("running")).await;
    let began = Instant::now();
    let row = wait_for_run(&daemon, &ids[0], Duration::from_secs(600), finished).await;
    eprintln!("the 2 GiB step ended {:.1} s after it began", began.elapsed().as_secs_f64());
    assert_eq!(row.state, "failed", "{row:?}");
    let reason = row.reason.clone().unwrap_or_default();
    assert!(reason.contains("killed after printing more than 16777216 bytes (limits.step_kill_after)"), "{reason}");

    let run_dir = dir.path().join("state/logs").join(&row.id);
    let log = std::fs::read(run_dir.join("run.log")).unwrap();
    assert!(log.len() < (8 << 20) + 4096, "run.log is {} bytes", log.len());
    let tail = String::from_utf8_lossy(&log[log.len().saturating_sub(4096)..]).into_owned();
    assert!(tail.contains("run log cut here, at the limit of 8388608 bytes (limits.run_log) during step 1"), "{tail}");
    let stdout = std::fs::metadata(run_dir.join("step-01.stdout")).unwrap().len();
    assert!(stdout <= (4 << 20) + 200, "step-01.stdout is {stdout} bytes");
    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    assert!(doc["results"][0]["output"].as_str().unwrap().contains("bytes cut]"), "the result says it was cut");
    assert!(!doc["results"][0]["errout"].as_str().unwrap_or("").contains("pdkt3-never-reached"), "the step was not killed");
    let total = walk_size(&dir.path().join("state"));
    assert!(total < 24 << 20, "the state directory holds {total} bytes");
    daemon.stop().await.unwrap();
}

fn walk_size(p: &std::path::Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else { return 0 };
    if md.is_dir() { std::fs::read_dir(p).unwrap().map(|e| walk_size(&e.unwrap().path())).sum() } else { md.len() }
}
