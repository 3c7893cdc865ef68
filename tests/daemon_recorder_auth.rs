//! The embedded recorder of the real `paddock serve` binary (port 0) with `public_reads = false`:
//! nobody submits without a credential (REST or pony-build XML-RPC, driven by Python's own
//! `xmlrpc.client`), a submitter's idempotency key never touches another's result, every recorder
//! read answers 401 without a credential, and the daemon's own run reaches the recorder exactly
//! once, in-process.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::serve::{serve, token};

const FLEET: &str = r#"
version = 1

[daemon]
listen = "127.0.0.1:0"
state_dir = "state"
ssh_ports = "24400-24409"
public_reads = false

# A fake host too small for the image: every run fails at once as infrastructure, which
# still reports a result to the recorder.
[[hosts]]
name = "tiny-host"
uri = "test:///default"
accelerator = "kvm"
address = "127.0.0.1"
max_vms = 1
memory_mib = 64
vcpus = 1

[[images]]
name = "big"
os = "linux"
arch = "x86_64"
kernel = "k/vmlinuz"
initrd = "k/initrd.img"
memory_mib = 512
vcpus = 1
user = "root"
host_key = "console"

[[jobs]]
name = "pdkt-job"
images = ["big"]
maintainers = ["alice"]
[[jobs.steps]]
name = "build"
type = "build"
command = "true"

[[users]]
name = "root"
role = "admin"

[[users]]
name = "alice"
role = "maintainer"

[[users]]
name = "bob"
role = "viewer"

[[recorders]]
name = "embedded"
kind = "embedded"
"#;

fn result_doc(host: &str, success: bool, key: Option<&str>) -> Value {
    let mut doc = json!({
        "client_info": {"package": "forged", "arch": "x86_64", "host": host, "tags": [], "success": success},
        "results": [{"name": "build", "type": "build", "command": "true", "status": if success { 0 } else { 1 },
                     "output": "", "errout": ""}],
    });
    if let Some(k) = key {
        doc["idempotency_key"] = json!(k);
    }
    doc
}

/// Python's standard XML-RPC client calls `add_results` at `url`; prints how it ended.
fn python_add_results(url: &str) -> String {
    let script = r#"
import sys, xmlrpc.client
rpc = xmlrpc.client.ServerProxy(sys.argv[1], allow_none=True)
ci = {"package": "forged", "arch": "x86_64", "host": "h", "tags": [], "success": True}
try:
    print("stored", rpc.add_results(ci, [{"name": "b", "status": 0, "output": "", "errout": ""}]))
except xmlrpc.client.Fault as f:
    print("fault", f.faultCode)
except xmlrpc.client.ProtocolError as e:
    print("http", e.errcode)
"#;
    let out = Command::new("python3").args(["-c", script, url]).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn recorder_rows(db: &Path) -> (i64, i64) {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let results = c.query_row("SELECT count(*) FROM results", [], |r| r.get(0)).unwrap();
    let steps = c.query_row("SELECT count(*) FROM steps", [], |r| r.get(0)).unwrap();
    (results, steps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_recorder_needs_credentials_scopes_keys_and_gets_each_run_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet.toml");
    std::fs::write(&fleet, FLEET).unwrap();
    std::fs::create_dir_all(dir.path().join("k")).unwrap();
    std::fs::write(dir.path().join("k/vmlinuz"), b"not a kernel").unwrap();
    std::fs::write(dir.path().join("k/initrd.img"), b"not an initrd").unwrap();
    let (root, alice, bob) = (token(&fleet, "root"), token(&fleet, "alice"), token(&fleet, "bob"));
    let daemon = serve(&fleet);
    let base = format!("{}/recorder", daemon.url);
    let db = dir.path().join("state/recorder.db");
    let http = reqwest::Client::new();
    let post = |token: Option<&str>, doc: &Value| {
        let mut r = http.post(format!("{base}/api/v1/results")).json(doc);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };

    // Anonymous submissions, REST and XML-RPC, are refused and store nothing.
    assert_eq!(post(None, &result_doc("h", true, None)).await.unwrap().status(), 401);
    assert_eq!(post(Some("pdk_nope_nope"), &result_doc("h", true, None)).await.unwrap().status(), 401);
    assert_eq!(python_add_results(&format!("{base}/xmlrpc")), "http 401");
    assert_eq!(python_add_results(&format!("{base}/xmlrpc/pdk_nope_nope")), "http 401");
    // A viewer may read but not submit, on either protocol.
    assert_eq!(post(Some(&bob), &result_doc("h", true, None)).await.unwrap().status(), 403);
    assert_eq!(python_add_results(&format!("{base}/xmlrpc/{bob}")), "fault 401");
    assert_eq!(recorder_rows(&db), (0, 0));
    // pony-build's URL form works with a maintainer's token.
    assert!(python_add_results(&format!("{base}/xmlrpc/{alice}")).starts_with("stored ['1', "));

    // Another submitter's key does not touch a result: root's stays as root sent it.
    let r = post(Some(&root), &result_doc("root-host", false, Some("k-1"))).await.unwrap();
    assert_eq!(r.status(), 201);
    let root_key = r.json::<Value>().await.unwrap()["result_key"].as_str().unwrap().to_owned();
    let a = post(Some(&alice), &result_doc("alice-host", true, Some("k-1"))).await.unwrap();
    assert_eq!(a.status(), 201, "alice's result is her own, not a replay of root's");
    let got: Value = http.get(format!("{base}/api/v1/results/{root_key}")).bearer_auth(&bob).send().await.unwrap().json().await.unwrap();
    assert_eq!((got["submitter"].as_str(), got["client_info"]["host"].as_str()), (Some("root"), Some("root-host")));
    assert_eq!(got["client_info"]["success"], false);

    // Every read needs a credential: JSON, pages, feeds and XML-RPC.
    for path in [
        "",
        "/packages/forged",
        "/results/1",
        "/missing",
        "/feeds/all.atom",
        "/feeds/failures.atom",
        "/feeds/packages/forged",
        "/api/v1/results",
        "/api/v1/results/1",
        "/api/v1/packages",
        "/api/v1/packages/forged/tagsets",
        "/api/v1/tagsets/1/history",
        "/api/v1/missing",
    ] {
        let anon = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(anon.status(), 401, "{path}");
        let bad = http.get(format!("{base}{path}?token=pdk_nope_nope")).send().await.unwrap();
        assert_eq!(bad.status(), 401, "{path}");
        let viewer = http.get(format!("{base}{path}")).bearer_auth(&bob).send().await.unwrap();
        assert_eq!(viewer.status(), 200, "{path}");
        let by_cookie = http.get(format!("{base}{path}")).header("cookie", format!("paddock_token={bob}")).send().await.unwrap();
        assert_eq!(by_cookie.status(), 200, "{path} with the dashboard's cookie");
    }
    let read_call = "<?xml version='1.0'?><methodCall><methodName>get_results</methodName><params><param><value><string>1</string></value></param></params></methodCall>";
    let xr = http.post(format!("{base}/xmlrpc")).header("content-type", "text/xml").body(read_call).send().await.unwrap();
    assert_eq!(xr.status(), 401);

    // The daemon's own run reaches its recorder exactly once, in-process (no client address).
    let t = http.post(format!("{}/api/v1/runs", daemon.url)).bearer_auth(&alice).json(&json!({"job": "pdkt-job"})).send().await.unwrap();
    assert!(t.status().is_success(), "{}", t.text().await.unwrap());
    let t: Value = t.json().await.unwrap();
    let run_id = t["runs"][0].as_str().unwrap_or_else(|| panic!("{t}")).to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let detail: Value =
            http.get(format!("{}/api/v1/runs/{run_id}", daemon.url)).bearer_auth(&bob).send().await.unwrap().json().await.unwrap();
        let outbox = &detail["outbox"];
        let delivered = outbox.as_array().is_some_and(|o| o.len() == 1 && !o[0]["delivered_at"].is_null());
        if delivered {
            break;
        }
        assert!(Instant::now() < deadline, "the run's result was not delivered: {detail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // alice now tries the run id as her own key: it is a new result of hers, not the daemon's.
    let replay = post(Some(&alice), &result_doc("h", true, Some(&run_id))).await.unwrap();
    assert_eq!(replay.status(), 201);
    let c = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let (n, ip, who, package): (i64, Option<String>, Option<String>, String) = c
        .query_row(
            "SELECT count(*), r.client_ip, r.submitter, r.package FROM submission_keys k JOIN results r ON r.id = k.result_id
             WHERE k.scope = '' AND k.key = ?1",
            [&run_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!((n, ip, who, package.as_str()), (1, None, None, "pdkt-job"), "one in-process delivery of the run");
    assert_eq!(recorder_rows(&db).0, 5, "alice's XML-RPC result, root's, alice's, the run's, alice's replay");
}
