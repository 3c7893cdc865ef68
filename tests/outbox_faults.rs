//! The outbox under faults, against the real `paddock recorder` binary:
//! a recorder that is down while results pile up, and a daemon killed with
//! SIGKILL before it could deliver.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use paddock::clock::Clock;
use paddock::outbox::{Backoff, Destination, Forwarder};
use paddock::store::{RunEnd, RunRow, Store};
use support::recorder::RecorderProcess;
use support::{free_port, wait_until};

fn result_doc(run_id: &str, n: usize) -> String {
    serde_json::json!({
        "client_info": {"package": "demo", "arch": "x86_64", "host": format!("vm-{n}"),
                        "tags": ["linux", "x86_64"], "success": !n.is_multiple_of(3), "duration": 1.5},
        "results": [{"name": "build", "type": "build", "command": "make", "status": if n.is_multiple_of(3) {2} else {0},
                     "output": "x".repeat(1000), "errout": "", "duration": 1.0}],
        "extras": {"run_id": run_id},
        "idempotency_key": run_id,
    })
    .to_string()
}

async fn finished_run(store: &Store, id: &str, n: usize, recorder: &str) {
    let now = Utc::now();
    store
        .insert_run(&RunRow {
            id: id.into(),
            job: "demo".into(),
            image: "tiny-x86_64".into(),
            trigger: "manual".into(),
            requested_by: None,
            state: "reporting".into(),
            host: None,
            vm_name: None,
            scheduled_at: None,
            created_at: now,
            started_at: Some(now),
            finished_at: None,
            outcome: None,
            reason: None,
            result_json: None,
            log_path: None,
        })
        .await
        .unwrap();
    store
        .finish_run(RunEnd {
            run_id: id.into(),
            from: "reporting".into(),
            state: "done".into(),
            outcome: "success".into(),
            reason: None,
            result_json: result_doc(id, n),
            finished_at: now,
            recorders: vec![recorder.into()],
        })
        .await
        .unwrap();
}

fn recorder_rows(db: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut s = c.prepare("SELECT key FROM submission_keys ORDER BY result_id").unwrap();
    s.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap).collect()
}

#[tokio::test]
async fn recorder_down_while_50_runs_finish_then_each_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let port = free_port();
    rustls::crypto::ring::default_provider().install_default().ok();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let dest = Destination::Paddock { client, url: format!("http://127.0.0.1:{port}"), token: Some("s3cret".into()) };
    let forwarder = Forwarder::new(
        store.clone(),
        vec![("central".into(), dest)],
        Backoff { first: Duration::from_millis(20), max: Duration::from_millis(300) },
        Clock::system(),
    );
    let waker = forwarder.waker();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    forwarder.spawn(stop_rx);

    let ids: Vec<String> = (0..50).map(|n| format!("run-{n:03}")).collect();
    for (n, id) in ids.iter().enumerate() {
        finished_run(&store, id, n, "central").await;
        waker.wake();
    }
    // The forwarder keeps trying while the recorder is down, and records why it failed.
    wait_until("failed attempts against the down recorder", Duration::from_secs(30), || async {
        let p = store.outbox_pending().await.unwrap();
        p.len() == 50 && p[0].attempts >= 3
    })
    .await;
    let head = &store.outbox_pending().await.unwrap()[0];
    assert!(head.last_error.as_deref().unwrap().contains("cannot reach"), "{:?}", head.last_error);

    let rec = RecorderProcess::start_on(&format!("127.0.0.1:{port}"), &["--token", "lab=s3cret"]);
    wait_until("all 50 delivered", Duration::from_secs(60), || async { store.outbox_pending().await.unwrap().is_empty() }).await;
    let rows = recorder_rows(&rec.db_path());
    // Exactly once each, and in the order the runs finished.
    assert_eq!(rows, ids);
    for id in &ids {
        let e = &store.outbox_for_run(id).await.unwrap()[0];
        assert!(e.delivered_at.is_some());
        assert!(e.remote_key.is_some());
    }
}

struct DaemonProcess {
    child: Child,
}

impl DaemonProcess {
    fn start(config: &Path) -> DaemonProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_paddock"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .env("PADDOCK_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start paddock serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(line.starts_with("paddock listening on "), "unexpected first line: {line:?}");
        DaemonProcess { child }
    }

    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A fleet with a test:/// host (no VMs are booted here) whose results go to a
/// central paddock recorder at `url` as well as the embedded one.
fn fleet_file(dir: &Path, url: &str) -> std::path::PathBuf {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fleet.toml"))
        .unwrap()
        .replacen("state_dir = \"state\"", &format!("state_dir = \"{}\"", dir.join("state").display()), 1)
        .replacen("uri = \"qemu:///system\"", "uri = \"test:///default\"", 1)
        .replacen(
            "[[recorders]]\nname = \"embedded\"\nkind = \"embedded\"",
            &format!("[[recorders]]\nname = \"embedded\"\nkind = \"embedded\"\n\n[[recorders]]\nname = \"central\"\nkind = \"paddock\"\nurl = \"{url}\"\ntoken = \"s3cret\""),
            1,
        );
    let path = dir.join("fleet.toml");
    std::fs::write(&path, src).unwrap();
    path
}

#[tokio::test]
async fn a_result_queued_before_a_sigkill_is_delivered_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = fleet_file(dir.path(), &format!("http://127.0.0.1:{port}"));
    // A run ended (its result is in the outbox) while the central recorder was down.
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let store = Store::open(&dir.path().join("state/paddock.db")).await.unwrap();
    finished_run(&store, "run-crash", 0, "central").await;
    let daemon = DaemonProcess::start(&config);
    // Wait until that daemon has tried (and failed) at least once, then kill it hard.
    wait_until("a failed attempt", Duration::from_secs(30), || async { store.outbox_for_run("run-crash").await.unwrap()[0].attempts >= 1 })
        .await;
    daemon.sigkill();
    assert!(store.outbox_for_run("run-crash").await.unwrap()[0].delivered_at.is_none());

    let rec = RecorderProcess::start_on(&format!("127.0.0.1:{port}"), &["--token", "lab=s3cret"]);
    let _daemon = DaemonProcess::start(&config);
    wait_until("delivery after restart", Duration::from_secs(60), || async {
        store.outbox_for_run("run-crash").await.unwrap()[0].delivered_at.is_some()
    })
    .await;
    assert_eq!(recorder_rows(&rec.db_path()), vec!["run-crash".to_string()]);
}

/// The pony-build destination speaks XML-RPC `add_results`; here its peer is
/// the recorder's pony-build-compatible endpoint (a real XML-RPC server).
#[tokio::test]
async fn results_reach_a_pony_build_xmlrpc_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let rec = RecorderProcess::start(&["--token", "lab=s3cret"]);
    rustls::crypto::ring::default_provider().install_default().ok();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let dest = Destination::PonyBuild { client, url: format!("{}/xmlrpc/s3cret", rec.url()) };
    let forwarder = Forwarder::new(
        store.clone(),
        vec![("pony".into(), dest)],
        Backoff { first: Duration::from_millis(20), max: Duration::from_millis(300) },
        Clock::system(),
    );
    let waker = forwarder.waker();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    forwarder.spawn(stop_rx);
    for n in 0..3 {
        finished_run(&store, &format!("pb-{n}"), n, "pony").await;
    }
    waker.wake();
    wait_until("delivery over XML-RPC", Duration::from_secs(30), || async { store.outbox_pending().await.unwrap().is_empty() }).await;
    // pony-build answers (result_key, auth_key); the key is kept.
    for n in 0..3 {
        let e = &store.outbox_for_run(&format!("pb-{n}")).await.unwrap()[0];
        assert!(e.remote_key.as_deref().is_some_and(|k| !k.is_empty()), "{e:?}");
    }
    let c = rusqlite::Connection::open(rec.db_path()).unwrap();
    let n: i64 = c.query_row("SELECT count(*) FROM results", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 3);
}

/// A run's artifacts go with its result: as files to a paddock recorder (REST, then `/upload`
/// with the auth_key it answered) and to a pony-build server (`add_results`, then `/upload`),
/// each once, however often the delivery is repeated.
#[tokio::test]
async fn a_runs_artifacts_reach_paddock_and_pony_build_recorders_as_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let logs = dir.path().join("logs");
    let art = logs.join("run-art/artifacts");
    std::fs::create_dir_all(&art).unwrap();
    std::fs::write(art.join("report.txt"), b"all green\n").unwrap();
    std::fs::write(art.join("core.bin"), [0u8, 159, 146, 150]).unwrap();
    let rec = RecorderProcess::start(&["--token", "lab=s3cret"]);
    let pony = support::pony::PonyServer::start();
    rustls::crypto::ring::default_provider().install_default().ok();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let central = Destination::Paddock { client: client.clone(), url: rec.url(), token: Some("s3cret".into()) };
    let pb = Destination::PonyBuild { client, url: format!("{}/xmlrpc", pony.url) };
    let forwarder = Forwarder::new(
        store.clone(),
        vec![("central".into(), central.clone()), ("pony".into(), pb)],
        Backoff { first: Duration::from_millis(20), max: Duration::from_millis(300) },
        Clock::system(),
    )
    .with_artifacts_from(logs.clone());
    let waker = forwarder.waker();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    forwarder.spawn(stop_rx);

    let mut doc: serde_json::Value = serde_json::from_str(&result_doc("run-art", 1)).unwrap();
    doc["extras"]["artifacts"] =
        serde_json::json!([{"name": "core.bin", "size": 4}, {"name": "report.txt", "size": 10}, {"name": "../paddock.db"}]);
    let now = Utc::now();
    let row = RunRow {
        id: "run-art".into(),
        job: "demo".into(),
        image: "tiny-x86_64".into(),
        trigger: "manual".into(),
        requested_by: None,
        state: "reporting".into(),
        host: None,
        vm_name: None,
        scheduled_at: None,
        created_at: now,
        started_at: Some(now),
        finished_at: None,
        outcome: None,
        reason: None,
        result_json: None,
        log_path: None,
    };
    store.insert_run(&row).await.unwrap();
    let end = RunEnd {
        run_id: row.id.clone(),
        from: "reporting".into(),
        state: "done".into(),
        outcome: "success".into(),
        reason: None,
        result_json: doc.to_string(),
        finished_at: now,
        recorders: vec!["central".into(), "pony".into()],
    };
    store.finish_run(end).await.unwrap();
    waker.wake();
    wait_until("delivery to both", Duration::from_secs(30), || async { store.outbox_pending().await.unwrap().is_empty() }).await;

    let key = store.outbox_for_run("run-art").await.unwrap()[0].remote_key.clone().unwrap();
    let (_, body) = support::recorder::http_get(&rec.addr, &format!("/api/v1/results/{key}"));
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<_> = r["files"].as_array().unwrap().iter().map(|f| f["filename"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["core.bin", "report.txt"], "the listed files on disk, never a path outside the run's folder");
    assert_eq!(support::recorder::http_get_bytes(&rec.addr, &format!("/results/{key}/files/core.bin")).1, [0u8, 159, 146, 150]);
    let (_, page) = support::recorder::http_get(&rec.addr, &format!("/results/{key}"));
    assert!(page.contains(&format!("<a href=\"/results/{key}/files/report.txt\">report.txt</a>")), "{page}");

    let uploads = pony.calls("upload");
    let got: Vec<_> = uploads
        .iter()
        .map(|u| (u["query"]["filename"].as_str().unwrap(), u["query"]["auth_key"].as_str().unwrap(), u["size"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, [("core.bin", "auth-1", 4), ("report.txt", "auth-1", 10)]);
    assert_eq!(uploads[1]["body"], "all green\n");
    assert_eq!(uploads[0]["query"]["visible"], "yes");
    assert_eq!(pony.calls("add_results").len(), 1);

    // Delivering the same entry again (as after a lost answer) stores nothing twice.
    let files = vec![
        paddock::outbox::RunFile { name: "core.bin".into(), path: art.join("core.bin"), size: 4 },
        paddock::outbox::RunFile { name: "report.txt".into(), path: art.join("report.txt"), size: 10 },
    ];
    let again = central.deliver("run-art", &doc.to_string(), &files).await.unwrap();
    assert_eq!(again.as_deref(), Some(key.as_str()));
    let c = rusqlite::Connection::open(rec.db_path()).unwrap();
    let n: (i64, i64) =
        c.query_row("SELECT (SELECT count(*) FROM results), (SELECT count(*) FROM files)", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!(n, (1, 2));
}
