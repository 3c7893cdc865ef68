//! The fault suite: libvirtd restarted under a running VM, a guest that never
//! answers SSH, a guest destroyed behind paddock's back, a recorder that is down
//! for the whole run, a full host. Ports 23200-23249, ten per test.
//!
//! `libvirtd_restarted_while_a_vm_runs_*` stops the machine's libvirtd, so it
//! must not overlap any other VM test: `.config/nextest.toml` puts it in the
//! `libvirtd-restart` group and gives it every test thread
//! (`threads-required = "num-test-threads"`), so nextest runs it alone. Under
//! plain `cargo test`, run it by itself: `cargo test --test e2e libvirtd_restarted`.

use std::time::{Duration, Instant};

use paddock::runs::Trigger;

use super::*;

fn manual() -> Trigger {
    Trigger::Manual { by: "alice".into() }
}

/// The common test fleet with textual edits (each `(from, to)` must apply).
fn edited_fleet(dir: &Path, ports: &str, jobs: &str, edits: &[(&str, &str)]) -> Fleet {
    fleet(dir, ports, PER_VM, jobs);
    let path = dir.join("fleet.toml");
    let mut src = std::fs::read_to_string(&path).unwrap();
    for (from, to) in edits {
        assert!(src.contains(from), "fleet edit `{from}` does not apply");
        src = src.replacen(from, to, 1);
    }
    std::fs::write(&path, &src).unwrap();
    paddock::config::load(&path).unwrap_or_else(|e| panic!("test fleet invalid:\n{e}"))
}

async fn wait_for_log(dir: &Path, run_id: &str, text: &str) {
    let log = dir.join("state/logs").join(run_id).join("run.log");
    wait_until(&format!("`{text}` in {}", log.display()), Duration::from_secs(240), async || {
        std::fs::read_to_string(&log).unwrap_or_default().contains(text)
    })
    .await;
}

fn assert_nothing_left(dir: &Path) {
    let prefix = format!("paddock-{}-", instance_id(dir));
    assert_eq!(domains_named(&prefix), Vec::<String>::new(), "leaked domains");
    assert_eq!(overlays(dir), Vec::<PathBuf>::new(), "leaked overlays");
}

/// Stops the running libvirtd (SIGTERM to its pid), starts a new one and waits until it answers.
async fn restart_libvirtd() {
    let out = std::process::Command::new("pgrep").arg("-x").arg("libvirtd").output().expect("pgrep");
    let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(pids.len(), 1, "expected one libvirtd, found {pids:?}");
    let pid = pids[0];
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM to libvirtd {pid}");
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    wait_until("libvirtd to exit", Duration::from_secs(60), async || !proc_dir.exists()).await;
    let status = std::process::Command::new("libvirtd").arg("-d").status().expect("start libvirtd -d");
    assert!(status.success(), "libvirtd -d failed: {status}");
    wait_until("the new libvirtd to answer", Duration::from_secs(60), async || crate::support::virsh::answers()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_restarted_while_a_vm_runs_the_daemon_reconnects_and_the_run_completes() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(
        dir.path(),
        "23200-23209",
        PER_VM,
        r#"
[[jobs]]
name = "through"
images = ["tiny"]
[[jobs.steps]]
name = "span"
type = "build"
command = "echo up; sleep 25; echo after"
"#,
    );
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let id = daemon.runs.trigger("through", None, manual()).await.unwrap().remove(0);
    wait_for_log(dir.path(), &id, "up\n").await;
    let vm = daemon.store.run(&id).await.unwrap().unwrap().vm_name.unwrap();

    restart_libvirtd().await;
    // The QEMU guest outlived its libvirtd, and the new one knows it.
    assert_eq!(domains_named(&vm), vec![vm.clone()]);
    let row = wait_for_run(&daemon, &id, Duration::from_secs(240), finished).await;
    eprintln!("the run across the libvirtd restart ended {:?}: {:?}", row.outcome, row.reason);
    assert!(
        row.outcome.as_deref() == Some("success") || row.outcome.as_deref() == Some("interrupted"),
        "the run neither completed nor was marked interrupted: {row:?}"
    );
    if row.outcome.as_deref() == Some("success") {
        let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
        assert_eq!(doc["results"][0]["output"], "up\nafter\n");
    }
    // The host is connected again: the daemon sees it up and a new run boots and passes.
    wait_until("the host to be up again", Duration::from_secs(120), async || {
        daemon.vms.snapshot().await.is_ok_and(|s| s.hosts.iter().all(|h| h.up))
    })
    .await;
    wait_until("the first run's VM to be removed", Duration::from_secs(120), async || domains_named(&vm).is_empty()).await;
    let second = daemon.runs.trigger("through", None, manual()).await.unwrap().remove(0);
    let row = wait_for_run(&daemon, &second, Duration::from_secs(240), finished).await;
    assert_eq!(row.outcome.as_deref(), Some("success"), "a run after the restart: {row:?}");
    assert_nothing_left(dir.path());
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_never_answers_ssh_fails_after_its_retries_with_the_console_kept() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    // The kernel boots with an empty initramfs and no root device, panics and halts, so passt
    // holds SSH connections that nothing ever answers. What is proven is that the run fails
    // after its retries and keeps the console, not how far a guest boots in a deadline: on
    // this 2-core machine the panic came 10 s after the start at load 9 and 19-31 s at load
    // 12-13, but the console's first lines within 2 s (`earlyprintk`), so 15 s is enough.
    let jobs = format!(
        r#"{mute}
[[jobs]]
name = "mute"
images = ["mute"]
[[jobs.steps]]
name = "x"
type = "build"
command = "echo must-not-run"
"#,
        mute = crate::support::guest::mute_image(dir.path(), "mute", &format!("boot_timeout = \"15s\"\n{PER_VM}")),
    );
    let fleet = edited_fleet(
        dir.path(),
        "23210-23219",
        &jobs,
        // The one host's cool-down after the failed first attempt: 1 s, not the default minute.
        &[("reconcile_interval = \"5s\"", "reconcile_interval = \"5s\"\nlaunch_retries = 2\nhost_cooldown = \"1s\"")],
    );
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let t = Instant::now();
    let id = daemon.runs.trigger("mute", None, manual()).await.unwrap().remove(0);
    // Two boot deadlines of 15 s plus the host's 1 s cool-down between the attempts.
    let row = wait_for_run(&daemon, &id, Duration::from_secs(300), finished).await;
    let took = t.elapsed();
    assert_eq!(row.state, "failed", "{row:?}");
    assert_eq!(row.outcome.as_deref(), Some("infrastructure"));
    let reason = row.reason.clone().unwrap();
    assert!(reason.contains("after 2 attempt(s)") && reason.contains("no SSH banner"), "{reason}");
    assert!(took >= Duration::from_secs(31), "two boot deadlines of 15 s and the 1 s cool-down passed in {took:?}");
    // The console tail is kept in the run's record: the kernel's own lines (`[   1.234567] …`).
    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    let tail = doc["extras"]["console_tail"].as_str().unwrap_or_else(|| panic!("no console tail in {doc}"));
    let kernel_line =
        |l: &&str| l.trim_start().strip_prefix('[').and_then(|r| r.split_once(']')).is_some_and(|(t, _)| t.trim().parse::<f64>().is_ok());
    let last = tail.lines().rfind(kernel_line).unwrap_or_else(|| panic!("no kernel line in the console tail:\n{tail}"));
    // No step ran, so the run's log (what `paddock logs` and the run page show) says why.
    let log = std::fs::read_to_string(dir.path().join("state/logs").join(&id).join("run.log")).unwrap();
    assert!(log.starts_with("[paddock: no step ran: launching image mute failed after 2 attempt(s)"), "{log}");
    assert!(log.contains("the guest's console, last lines") && log.contains(last), "{log}");
    assert!(!log.contains("must-not-run"), "{log}");
    assert_eq!(daemon.store.events(Some("launch_failed"), 10).await.unwrap().len(), 2);
    // The last attempt's domain is being destroyed as the run ends.
    let prefix = format!("paddock-{}-", instance_id(dir.path()));
    wait_until("the failed attempts' removal", Duration::from_secs(60), async || domains_named(&prefix).is_empty()).await;
    assert_nothing_left(dir.path());
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_destroyed_mid_step_fails_the_run_fast_with_the_reason() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(
        dir.path(),
        "23220-23229",
        PER_VM,
        r#"
[[jobs]]
name = "doomed"
images = ["tiny"]
[[jobs.steps]]
name = "wait"
type = "build"
command = "echo up; sleep 600"
timeout = "10m"
[[jobs.steps]]
name = "after"
type = "test"
command = "echo never"
"#,
    );
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let id = daemon.runs.trigger("doomed", None, manual()).await.unwrap().remove(0);
    wait_for_log(dir.path(), &id, "up\n").await;
    let vm = daemon.store.run(&id).await.unwrap().unwrap().vm_name.unwrap();
    let destroyed = Instant::now();
    let status = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "destroy", &vm])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let row = wait_for_run(&daemon, &id, Duration::from_secs(120), finished).await;
    let took = destroyed.elapsed();
    eprintln!("run ended {took:?} after its VM was destroyed");
    assert!(took < Duration::from_secs(20), "the run took {took:?} to notice, not seconds");
    assert_eq!(row.state, "failed", "{row:?}");
    assert_eq!(row.outcome.as_deref(), Some("infrastructure"));
    let reason = row.reason.unwrap();
    assert!(reason.contains(&vm) && reason.contains("stopped during step 1 `wait`"), "{reason}");
    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    assert!(doc["extras"]["console_tail"].as_str().is_some_and(|t| t.contains("PADDOCK-READY")), "{doc}");
    wait_until("the VM's removal", Duration::from_secs(60), async || domains_named(&vm).is_empty()).await;
    assert_nothing_left(dir.path());
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_down_for_the_whole_run_gets_the_result_once_when_it_is_up() {
    ensure_guest_image();
    rustls::crypto::ring::default_provider().install_default().ok();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let fleet = fleet(
        dir.path(),
        "23230-23239",
        PER_VM,
        &format!(
            r#"
[[jobs]]
name = "report"
images = ["tiny"]
[[jobs.steps]]
name = "hello"
type = "build"
command = "echo hello"

[[recorders]]
name = "central"
kind = "paddock"
url = "http://127.0.0.1:{port}"
token = "s3cret"
"#
        ),
    );
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let id = daemon.runs.trigger("report", None, manual()).await.unwrap().remove(0);
    let row = wait_for_run(&daemon, &id, Duration::from_secs(240), finished).await;
    assert_eq!(row.outcome.as_deref(), Some("success"), "{row:?}");
    let central = async || daemon.store.outbox_for_run(&id).await.unwrap().into_iter().find(|e| e.recorder == "central");
    wait_until("a failed delivery to the down recorder", Duration::from_secs(30), async || {
        central().await.is_some_and(|e| e.attempts >= 1 && e.delivered_at.is_none())
    })
    .await;
    let e = central().await.unwrap();
    assert!(e.last_error.is_some(), "{e:?}");

    let rec = crate::support::recorder::RecorderProcess::start_on(&format!("127.0.0.1:{port}"), &["--token", "lab=s3cret"]);
    // The backoff after a few failures is some seconds; the first retry after the recorder is up delivers.
    wait_until("delivery once the recorder is up", Duration::from_secs(90), async || {
        central().await.is_some_and(|e| e.delivered_at.is_some())
    })
    .await;
    let db = rusqlite::Connection::open(rec.db_path()).unwrap();
    let keys: Vec<String> =
        db.prepare("SELECT key FROM submission_keys").unwrap().query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(keys, vec![id.clone()], "delivered exactly once");
    assert_nothing_left(dir.path());
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_host_queues_the_second_run_until_the_first_frees_it() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let fleet = edited_fleet(
        dir.path(),
        "23240-23249",
        r#"
[[jobs]]
name = "first"
images = ["tiny"]
[[jobs.steps]]
name = "a"
type = "build"
command = "echo first; sleep 5"

[[jobs]]
name = "second"
images = ["tiny"]
[[jobs.steps]]
name = "b"
type = "build"
command = "echo second"
"#,
        &[("max_vms = 4", "max_vms = 1")],
    );
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let prefix = format!("paddock-{}-", instance_id(dir.path()));
    let first = daemon.runs.trigger("first", None, manual()).await.unwrap().remove(0);
    let second = daemon.runs.trigger("second", None, manual()).await.unwrap().remove(0);
    let mut most_domains = 0;
    let mut saw_waiting = false;
    let deadline = Instant::now() + Duration::from_secs(400);
    loop {
        most_domains = most_domains.max(domains_named(&prefix).len());
        let a = daemon.store.run(&first).await.unwrap().unwrap();
        let b = daemon.store.run(&second).await.unwrap().unwrap();
        // The second waits for room while the first runs its step.
        if a.state.starts_with("running:") && b.vm_name.is_none() && !finished(&b) {
            // Waiting for a host is what `queued` means (and what `runs_queued` counts).
            assert_eq!(b.state, "queued", "{b:?}");
            saw_waiting = true;
        }
        if finished(&a) && finished(&b) {
            assert_eq!(a.outcome.as_deref(), Some("success"), "{a:?}");
            assert_eq!(b.outcome.as_deref(), Some("success"), "{b:?}");
            assert!(a.finished_at.unwrap() <= b.finished_at.unwrap());
            break;
        }
        assert!(Instant::now() < deadline, "runs stuck: {} / {}", a.state, b.state);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_waiting, "the second run never waited while the first ran");
    assert_eq!(most_domains, 1, "max_vms = 1 but {most_domains} domains existed at once");
    assert_nothing_left(dir.path());
    daemon.stop().await.unwrap();
}
