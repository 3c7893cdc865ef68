//! Runs of real jobs on the bundled guest.

use std::time::Duration;

use paddock::runs::Trigger;

use super::*;

fn manual() -> Trigger {
    Trigger::Manual { by: "alice".into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_steps_second_fails_gives_the_right_result_and_no_vm_is_left() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(
        dir.path(),
        "23100-23109",
        &baked_host_key(),
        r#"
[[jobs]]
name = "three"
images = ["tiny"]
env = { GREETING = "it's \"quoted\" $HOME" }
[[jobs.steps]]
name = "hello"
type = "setup"
command = "echo \"$GREETING\"; echo to-stderr >&2; printf '\\377\\376 not utf-8\\n'"
[[jobs.steps]]
name = "fails"
type = "build"
command = "echo before; exit 3"
[[jobs.steps]]
name = "never"
type = "test"
command = "echo should-not-run"
"#,
    );
    let daemon = start(fleet).await;
    let ids = daemon.runs.trigger("three", None, manual()).await.unwrap();
    let row = wait_for_run(&daemon, &ids[0], Duration::from_secs(240), finished).await;
    assert_eq!(row.state, "failed", "{row:?}");
    assert_eq!(row.outcome.as_deref(), Some("build-failure"));
    assert_eq!(row.reason.as_deref(), Some("step `fails` failed"));

    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    assert_eq!(doc["client_info"]["package"], "three");
    assert_eq!(doc["client_info"]["arch"], "x86_64");
    assert_eq!(doc["client_info"]["success"], false);
    let tags: Vec<&str> = doc["client_info"]["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tags, ["linux", "x86_64", "tiny", "local"]);
    let steps = doc["results"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0]["status"], 0);
    assert_eq!(steps[0]["type"], "setup");
    let out0 = steps[0]["output"].as_str().unwrap();
    assert!(out0.starts_with("it's \"quoted\" $HOME\n"), "{out0:?}");
    assert!(out0.contains("\u{fffd}\u{fffd} not utf-8"), "{out0:?}");
    assert_eq!(steps[0]["errout"], "to-stderr\n");
    assert_eq!(steps[1]["status"], 3);
    assert_eq!(steps[1]["output"], "before\n");
    assert_eq!(steps[2]["skipped"], true);
    assert_eq!(steps[2]["status"], -1);
    assert!(steps[0]["duration"].as_f64().unwrap() > 0.0);
    assert!(steps[1]["duration"].as_f64().unwrap() > 0.0);

    // The log on disk matches the outputs, byte for byte (the raw bytes, not the lossy text).
    let run_dir = dir.path().join("state/logs").join(&row.id);
    let raw = std::fs::read(run_dir.join("step-01.stdout")).unwrap();
    assert!(raw.ends_with(b"\xff\xfe not utf-8\n"), "{raw:?}");
    assert_eq!(std::fs::read(run_dir.join("step-02.stdout")).unwrap(), b"before\n");
    assert!(!run_dir.join("step-03.stdout").exists());
    let log = std::fs::read_to_string(run_dir.join("run.log")).unwrap_or_default();
    assert!(log.contains("==> step 2/3: fails\nbefore\n"), "{log}");

    // The result reached the embedded recorder.
    let outbox = daemon.store.outbox_for_run(&row.id).await.unwrap();
    assert_eq!(outbox.len(), 1);
    // Nothing of the VM is left.
    let prefix = format!("paddock-{}-", instance_id(dir.path()));
    assert_eq!(domains_named(&prefix), Vec::<String>::new());
    assert_eq!(overlays(dir.path()), Vec::<std::path::PathBuf>::new());
    daemon.stop().await.unwrap();
}
