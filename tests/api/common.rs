//! The lab every API test runs in: the test fleet, a store file with rows in
//! many states, a real run coordinator, and tokens for each role.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{Duration, Utc};
use paddock::api::{ApiState, HostStatus, Shared};
use paddock::config::Fleet;
use paddock::outbox::Waker;
use paddock::runs::{Coordinator, Executor, ExecutorConfig};
use paddock::store::{RunEnd, RunRow, Store, VmRow};
use serde_json::json;
use tokio::sync::watch;

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub fleet_path: PathBuf,
    pub store: Store,
    pub state: Shared,
    pub hosts: watch::Sender<Vec<HostStatus>>,
    pub admin: String,
    pub alice: String,
    pub bob: String,
    /// Seeded run ids.
    pub running: String,
    pub held: String,
    pub failed: String,
    pub log: PathBuf,
}

pub async fn lab(public_reads: bool) -> Lab {
    lab_with(public_reads, "", |_| {}).await
}

/// The lab with `extra` appended to its `fleet.toml` and its API state set up by `customize`.
pub async fn lab_with(public_reads: bool, extra: &str, customize: impl FnOnce(&mut ApiState)) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let fleet_path = dir.path().join("fleet.toml");
    std::fs::write(&fleet_path, format!("{}{extra}", include_str!("fleet.toml"))).unwrap();
    let fleet: Arc<Fleet> = Arc::new(paddock::config::load(&fleet_path).unwrap());
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(state_dir.join("logs")).unwrap();
    let store = Store::open(&state_dir.join("paddock.db")).await.unwrap();
    let executor = Arc::new(Executor::new(
        fleet.clone(),
        store.clone(),
        ExecutorConfig::new(state_dir.join("logs"), vec!["embedded".into()]),
        Waker::default(),
    ));
    let (coord, runs) = Coordinator::new(fleet.clone(), store.clone(), executor);
    let (fires_tx, fires_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let _keep = fires_tx;
        coord.run(fires_rx).await;
    });
    let (hosts_tx, hosts_rx) = watch::channel(Vec::new());
    let mut st = ApiState::new(fleet, store.clone(), runs, hosts_rx);
    st.public_reads = public_reads;
    customize(&mut st);
    let log = state_dir.join("logs").join("r-running.log");
    let (running, held, failed) = seed(&store, &log).await;
    Lab {
        admin: store.create_token("root").await.unwrap().token,
        alice: store.create_token("alice").await.unwrap().token,
        bob: store.create_token("bob").await.unwrap().token,
        dir,
        fleet_path,
        store,
        state: Arc::new(st),
        hosts: hosts_tx,
        running,
        held,
        failed,
        log,
    }
}

pub fn row(id: &str, job: &str, image: &str, state: &str, mins_ago: i64) -> RunRow {
    let t = Utc::now() - Duration::minutes(mins_ago);
    RunRow {
        id: id.into(),
        job: job.into(),
        image: image.into(),
        trigger: "schedule".into(),
        requested_by: None,
        state: state.into(),
        host: Some("local".into()),
        vm_name: None,
        scheduled_at: Some(t),
        created_at: t,
        started_at: Some(t + Duration::seconds(20)),
        finished_at: None,
        outcome: None,
        reason: None,
        result_json: None,
        log_path: None,
    }
}

/// Inserts a run and ends it with `outcome`, with a result document of two steps.
pub async fn finished(store: &Store, id: &str, job: &str, image: &str, outcome: &str, mins_ago: i64) {
    store.insert_run(&row(id, job, image, "queued", mins_ago)).await.unwrap();
    let ok = outcome == "success";
    let doc = json!({
        "client_info": {"package": job, "success": ok},
        "results": [
            {"name": "setup", "type": "setup", "command": "uname -a", "status": 0, "output": "Linux\n", "errout": "", "duration": 1.5, "timed_out": false, "skipped": false},
            {"name": "check", "type": "test", "command": "make check", "status": if ok { 0 } else { 2 }, "output": "ran 12 tests\n", "errout": if ok { "" } else { "FAIL: t7\n" }, "duration": 42.0, "timed_out": false, "skipped": false},
        ],
    });
    let state = if ok { "done" } else { "failed" };
    store
        .finish_run(RunEnd {
            run_id: id.into(),
            from: "queued".into(),
            state: state.into(),
            outcome: outcome.into(),
            reason: (!ok).then(|| "step `check` exited with 2".to_string()),
            result_json: doc.to_string(),
            finished_at: Utc::now() - Duration::minutes(mins_ago) + Duration::minutes(2),
            recorders: vec!["embedded".into()],
        })
        .await
        .unwrap();
}

async fn seed(store: &Store, log: &std::path::Path) -> (String, String, String) {
    // The grid: demo passes (oldest), nightly fails on two platforms, docs passes (newest).
    finished(store, "r-demo-1", "demo", "tiny-x86_64", "build-failure", 600).await;
    finished(store, "r-demo-2", "demo", "tiny-x86_64", "success", 300).await;
    finished(store, "r-nightly-x86", "nightly", "tiny-x86_64", "success", 200).await;
    finished(store, "r-nightly-arm", "nightly", "deb-aarch64", "build-failure", 190).await;
    finished(store, "r-nightly-s390", "nightly", "deb-s390x", "infrastructure", 180).await;
    finished(store, "r-docs-1", "docs", "tiny-x86_64", "success", 10).await;

    let mut running = row("r-running", "demo", "tiny-x86_64", "running:1", 3);
    running.vm_name = Some("paddock-t-1".into());
    running.log_path = Some(log.display().to_string());
    store.insert_run(&running).await.unwrap();
    std::fs::write(log, "== step 1: setup\nLinux paddock 6.1\n== step 2: build\ncompiling...\n").unwrap();

    let mut held = row("r-held", "nightly", "deb-aarch64", "held", 60);
    held.vm_name = Some("paddock-t-2".into());
    held.outcome = Some("build-failure".into());
    store.insert_run(&held).await.unwrap();
    store.insert_run(&row("r-queued", "nightly", "deb-s390x", "queued", 1)).await.unwrap();

    let now = Utc::now();
    for (name, run, image, state, host, mins) in
        [("paddock-t-1", "r-running", "tiny-x86_64", "running", "local", 3), ("paddock-t-2", "r-held", "deb-aarch64", "held", "local", 60)]
    {
        store
            .put_vm(&VmRow {
                name: name.into(),
                run_id: Some(run.into()),
                image: image.into(),
                host: Some(host.into()),
                state: state.into(),
                ssh_port: Some(22201),
                overlay_path: None,
                console_path: None,
                error: None,
                created_at: now - Duration::minutes(mins),
                updated_at: now,
                ready_at: None,
                hold_until: (state == "held").then(|| now + Duration::minutes(45)),
            })
            .await
            .unwrap();
    }
    // paddock-t-2's image gives each VM its own host key, pinned before boot.
    store.set_vm_host_key("paddock-t-2", HELD_VM_HOST_KEY).await.unwrap();
    // An active access grant, written as the access module will write it.
    let db = rusqlite::Connection::open(store.path()).unwrap();
    db.execute(
        "INSERT INTO access_requests (id, user, image, run_id, duration_s, reason, state, decided_by, created_at,
                                      starts_at, ends_at, vm_name)
         VALUES ('a1', 'alice', 'deb-aarch64', 'r-held', 3600, 'debug t7 on arm', 'active', 'auto', ?1, ?1, ?2, 'paddock-t-2')",
        rusqlite::params![(now - Duration::minutes(5)).to_rfc3339(), (now + Duration::minutes(55)).to_rfc3339()],
    )
    .unwrap();
    store.record_event("reaped_domain", "paddock-old-9", "no run owned it").await.unwrap();
    ("r-running".into(), "r-held".into(), "r-nightly-arm".into())
}

/// Serves the whole app (API + dashboard) on 127.0.0.1, port 0; returns the base URL.
pub async fn serve(state: Shared) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let config = paddock::listener::ListenerConfig::default();
        paddock::listener::serve(listener, paddock::daemon::app(state), config, std::future::pending()).await.unwrap();
    });
    format!("http://{addr}")
}

/// The pinned host key of the lab's held VM `paddock-t-2`.
pub const HELD_VM_HOST_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpKbGPinFIKvvVQexMuxfmVR3auvr57kkIe6mkURtIs paddock-t-2";
