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
    let mut fleet = fleet(
        dir.path(),
        "23100-23109",
        PER_VM,
        r#"
[[jobs]]
name = "three"
images = ["tiny"]
artifacts = ["/tmp/out/*.txt", "/tmp/missing-file"]
env = { GREETING = "it's \"quoted\" $HOME" }
[[jobs.steps]]
name = "hello"
type = "setup"
command = "echo \"$GREETING\"; echo to-stderr >&2; printf '\\377\\376 not utf-8\\n'; mkdir -p /tmp/out; echo report > /tmp/out/a.txt; echo two > /tmp/out/b.txt"
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
    // The recorder's pages are read below without a token.
    fleet.daemon.public_reads = true;
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let ids = daemon.runs.trigger("three", None, manual()).await.unwrap();
    let row = wait_for_run(&daemon, &ids[0], Duration::from_secs(240), finished).await;
    assert_eq!(row.state, "failed", "{row:?}");
    assert_eq!(row.outcome.as_deref(), Some("build-failure"));
    assert_eq!(row.reason.as_deref(), Some("step `fails` failed"));

    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    assert_eq!(doc["client_info"]["package"], "three");
    assert_eq!(doc["client_info"]["arch"], "x86_64");
    assert_eq!(doc["client_info"]["success"], false);
    // One handshake on the hot path: the login that proved the VM ready ran the steps.
    let timings = &doc["extras"]["timings"];
    assert_eq!(timings["one_handshake"], true, "{timings}");
    let b2f = timings["banner_to_first_byte_s"].as_f64().unwrap();
    assert!(b2f > 0.0 && b2f < 60.0, "{timings}");
    let tags: Vec<&str> = doc["client_info"]["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    // The platform is the image, not the VM or the hypervisor; those are in extras.
    assert_eq!(tags, ["linux", "x86_64", "tiny"]);
    assert_eq!(doc["client_info"]["host"], "tiny");
    assert_eq!(doc["extras"]["hypervisor_host"], "local");
    assert_eq!(doc["extras"]["vm_name"].as_str(), row.vm_name.as_deref());
    assert_eq!(doc["extras"]["run_id"].as_str(), Some(row.id.as_str()));
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
    let log = String::from_utf8_lossy(&std::fs::read(run_dir.join("run.log")).unwrap()).into_owned();
    assert!(log.contains("==> step 2/3: fails\nbefore\n"), "{log}");

    // Artifacts named by glob were fetched (a missing one is not an error).
    let art = run_dir.join("artifacts");
    assert_eq!(std::fs::read_to_string(art.join("tmp__out__a.txt")).unwrap(), "report\n");
    assert_eq!(std::fs::read_to_string(art.join("tmp__out__b.txt")).unwrap(), "two\n");
    assert_eq!(std::fs::read_dir(&art).unwrap().count(), 2);

    // The result reached the embedded recorder, with the artifacts as its files.
    let outbox = daemon.store.outbox_for_run(&row.id).await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(
        doc["extras"]["artifacts"],
        serde_json::json!([{"name": "tmp__out__a.txt", "size": 7}, {"name": "tmp__out__b.txt", "size": 4}])
    );
    let outbox = wait_for("delivery to the embedded recorder", Duration::from_secs(30), async || {
        let o = daemon.store.outbox_for_run(&row.id).await.unwrap();
        o[0].delivered_at.is_some().then_some(o)
    })
    .await;
    let key = outbox[0].remote_key.clone().unwrap();
    let http = reqwest::Client::new();
    let page = http.get(format!("http://{}/recorder/results/{key}", daemon.addr)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(&format!("<a href=\"/recorder/results/{key}/files/tmp__out__a.txt\">tmp__out__a.txt</a>")), "{page}");
    let a = http.get(format!("http://{}/recorder/results/{key}/files/tmp__out__a.txt", daemon.addr)).send().await.unwrap();
    assert_eq!(a.status(), 200);
    assert_eq!(a.bytes().await.unwrap().as_ref(), b"report\n");
    // Nothing of the VM is left.
    let prefix = format!("paddock-{}-", instance_id(dir.path()));
    assert_eq!(domains_named(&prefix), Vec::<String>::new());
    assert_eq!(overlays(dir.path()), Vec::<std::path::PathBuf>::new());
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_past_its_timeout_is_killed_in_the_guest() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(
        dir.path(),
        "23110-23119",
        PER_VM,
        r#"
[[jobs]]
name = "slow"
images = ["tiny"]
[[jobs.steps]]
name = "hang"
type = "build"
command = "echo started; sleep 313; echo never"
timeout = "3s"
ignore_failure = true
[[jobs.steps]]
name = "check"
type = "test"
command = "ps | grep -c '[s]leep 313' || true"
"#,
    );
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let ids = daemon.runs.trigger("slow", None, manual()).await.unwrap();
    let row = wait_for_run(&daemon, &ids[0], Duration::from_secs(240), finished).await;
    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    let steps = doc["results"].as_array().unwrap();
    assert_eq!(steps[0]["timed_out"], true, "{doc}");
    assert_eq!(steps[0]["status"], -1);
    assert_eq!(steps[0]["output"], "started\n");
    let d = steps[0]["duration"].as_f64().unwrap();
    assert!((3.0..30.0).contains(&d), "killed soon after its 3 s timeout, took {d}");
    // The same guest, one step later: no `sleep 313` is left.
    assert_eq!(steps[1]["output"], "0\n", "{doc}");
    // The timed-out step had ignore_failure, so the run succeeded.
    assert_eq!(row.outcome.as_deref(), Some("success"));
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_with_the_wrong_host_key_is_refused() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    // The guest presents a key of the test's own (on its command line); the fleet pins
    // another valid key.
    let guest_key = support::guest::test_host_key("mitm");
    let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA/XDHqQ4zGgrAo2cLdmgWGXXbEazbp/V20Cd7HR/aap";
    let jobs = r#"
[[jobs]]
name = "mitm"
images = ["tiny"]
[[jobs.steps]]
name = "x"
type = "build"
command = "echo must-not-run"
"#;
    let src = fleet_src(dir.path(), "23120-23129", &format!("host_key = \"{other}\""), &[], &guest_key.cmdline, jobs);
    let fleet = load_fleet(dir.path(), &src);
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let ids = daemon.runs.trigger("mitm", None, manual()).await.unwrap();
    let row = wait_for_run(&daemon, &ids[0], Duration::from_secs(240), finished).await;
    assert_eq!(row.outcome.as_deref(), Some("infrastructure"), "{row:?}");
    let reason = row.reason.unwrap();
    let expected = paddock::ssh::fingerprint(&ssh_key::PublicKey::from_openssh(other).unwrap());
    let seen = paddock::ssh::fingerprint(&ssh_key::PublicKey::from_openssh(&guest_key.public).unwrap());
    assert!(reason.contains(&expected) && reason.contains(&seen), "{reason}");
    let prefix = format!("paddock-{}-", instance_id(dir.path()));
    assert_eq!(domains_named(&prefix), Vec::<String>::new());
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_step_stops_the_run_and_removes_the_vm() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(
        dir.path(),
        "23130-23139",
        PER_VM,
        r#"
[[jobs]]
name = "long"
images = ["tiny"]
[[jobs.steps]]
name = "wait"
type = "build"
command = "echo waiting; sleep 600"
[[jobs.steps]]
name = "after"
type = "test"
command = "echo never"
"#,
    );
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let id = daemon.runs.trigger("long", None, manual()).await.unwrap().remove(0);
    wait_for_run(&daemon, &id, Duration::from_secs(240), |r| r.state == "running:0").await;
    // Wait for the step's first output so the cancel lands mid-step.
    let log = dir.path().join("state/logs").join(&id).join("run.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("waiting\n") {
        assert!(std::time::Instant::now() < deadline, "step never printed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A scheduled fire for the same job+image while this run is going is skipped, with the reason kept.
    let fire = Trigger::Schedule { scheduled_at: chrono::Utc::now(), missed: false };
    assert_eq!(daemon.runs.trigger("long", None, fire).await.unwrap(), Vec::<String>::new());
    let skipped = daemon.store.events(Some("fire_skipped"), 10).await.unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].detail, "job `long` on `tiny` is still running; this fire is skipped");
    let asked = std::time::Instant::now();
    daemon.runs.cancel(&id, "alice").await.unwrap();
    let row = wait_for_run(&daemon, &id, Duration::from_secs(60), finished).await;
    assert!(asked.elapsed() < Duration::from_secs(30), "cancel took {:?}", asked.elapsed());
    assert_eq!(row.state, "cancelled");
    assert_eq!(row.outcome.as_deref(), Some("cancelled"));
    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    assert_eq!(doc["results"][1]["skipped"], true);
    let prefix = format!("paddock-{}-", instance_id(dir.path()));
    assert_eq!(domains_named(&prefix), Vec::<String>::new());
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_on_failure_keeps_the_vm_then_releases_it() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(
        dir.path(),
        "23140-23149",
        PER_VM,
        r#"
[[jobs]]
name = "flaky"
images = ["tiny"]
hold_on_failure = "10s"
[[jobs.steps]]
name = "fail"
type = "test"
command = "echo boom >&2; exit 1"
"#,
    );
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let id = daemon.runs.trigger("flaky", None, manual()).await.unwrap().remove(0);
    let row = wait_for_run(&daemon, &id, Duration::from_secs(240), finished).await;
    assert_eq!(row.state, "held", "{row:?}");
    assert_eq!(row.outcome.as_deref(), Some("build-failure"));
    let vm = row.vm_name.clone().unwrap();
    // The VM is still there, and still answers SSH on its forward, while held.
    assert_eq!(domains_named(&vm), vec![vm.clone()]);
    let port = daemon.store.vm(&vm).await.unwrap().unwrap().ssh_port.unwrap();
    assert!(paddock::vm::readiness::probe_banner(([127, 0, 0, 1], port).into(), Duration::from_secs(5)).await);
    // The result was reported at once, not when the hold ends.
    assert_eq!(daemon.store.outbox_for_run(&id).await.unwrap().len(), 1);
    let row = wait_for_run(&daemon, &id, Duration::from_secs(60), |r| r.state == "failed").await;
    assert_eq!(row.outcome.as_deref(), Some("build-failure"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !domains_named(&vm).is_empty() {
        assert!(std::time::Instant::now() < deadline, "held VM {vm} not released");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.stop().await.unwrap();
}
