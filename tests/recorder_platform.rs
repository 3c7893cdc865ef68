//! A platform keeps one identity across runs: two runs of one job on one image reach the real
//! `paddock serve` binary's embedded recorder and a pony-build XML-RPC server (Python's own
//! `xmlrpc.server`, recording what it receives) as one tagset whose `host` is the image's
//! `platform`, with the run id in `extras`. No VM boots: the only host is too small for the
//! image, so each run ends at once as an infrastructure failure, which is still reported.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::pony::PonyServer;
use support::serve::{serve, token};
use support::wait_until;

fn fleet(pony_url: &str) -> String {
    format!(
        r#"
version = 1

[daemon]
listen = "127.0.0.1:0"
state_dir = "state"
ssh_ports = "26600-26609"
public_reads = true

[[hosts]]
name = "pdkr-tiny-host"
uri = "test:///default"
accelerator = "kvm"
address = "127.0.0.1"
max_vms = 1
memory_mib = 64
vcpus = 1

[[images]]
name = "big"
platform = "pdkr-big-box"
os = "linux"
arch = "x86_64"
kernel = "k/vmlinuz"
initrd = "k/initrd.img"
memory_mib = 512
vcpus = 1
user = "root"
host_key = "console"

[[jobs]]
name = "pdkr-job"
images = ["big"]
tags = ["nightly"]
[[jobs.steps]]
name = "build"
type = "build"
command = "true"

[[users]]
name = "root"
role = "admin"

[[recorders]]
name = "embedded"
kind = "embedded"

[[recorders]]
name = "pony"
kind = "pony-build"
url = "{pony_url}/xmlrpc"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_of_one_job_on_one_image_are_one_platform_in_every_recorder() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pony = PonyServer::start();
    let dir = tempfile::tempdir().unwrap();
    let fleet_path = dir.path().join("fleet.toml");
    std::fs::write(&fleet_path, fleet(&pony.url)).unwrap();
    std::fs::create_dir_all(dir.path().join("k")).unwrap();
    std::fs::write(dir.path().join("k/vmlinuz"), b"not a kernel").unwrap();
    std::fs::write(dir.path().join("k/initrd.img"), b"not an initrd").unwrap();
    let root = token(&fleet_path, "root");
    let daemon = serve(&fleet_path);
    let http = reqwest::Client::new();

    let mut runs = Vec::new();
    for _ in 0..2 {
        let t = http.post(format!("{}/api/v1/runs", daemon.url)).bearer_auth(&root).json(&json!({"job": "pdkr-job"})).send().await.unwrap();
        assert!(t.status().is_success(), "{}", t.text().await.unwrap());
        let id = t.json::<Value>().await.unwrap()["runs"][0].as_str().unwrap().to_owned();
        // One after the other, so the two results arrive in order.
        wait_until("the run's results delivered to both recorders", Duration::from_secs(60), || async {
            let d: Value = http.get(format!("{}/api/v1/runs/{id}", daemon.url)).send().await.unwrap().json().await.unwrap();
            d["outbox"].as_array().is_some_and(|o| o.len() == 2 && o.iter().all(|e| !e["delivered_at"].is_null()))
        })
        .await;
        runs.push(id);
    }

    // The embedded recorder: one platform, both results in its history.
    let base = format!("{}/recorder", daemon.url);
    let ts: Value = http.get(format!("{base}/api/v1/packages/pdkr-job/tagsets")).send().await.unwrap().json().await.unwrap();
    let tagsets = ts["tagsets"].as_array().unwrap();
    assert_eq!(tagsets.len(), 1, "{ts}");
    assert_eq!(tagsets[0]["host"], "pdkr-big-box");
    assert_eq!(
        tagsets[0]["tagset"],
        json!(["__arch=x86_64", "__host=pdkr-big-box", "__package=pdkr-job", "big", "linux", "nightly", "x86_64"])
    );
    let history = &tagsets[0]["history"];
    assert_eq!((history["total"].as_u64(), history["summary"].as_str()), (Some(2), Some("0 of last 2 passed")), "{history}");
    for (r, run) in history["results"].as_array().unwrap().iter().rev().zip(&runs) {
        let full: Value =
            http.get(format!("{base}/api/v1/results/{}", r["key"].as_str().unwrap())).send().await.unwrap().json().await.unwrap();
        assert_eq!(full["client_info"]["host"], "pdkr-big-box");
        assert_eq!(full["extras"]["run_id"].as_str(), Some(run.as_str()));
        assert_eq!(full["extras"]["image"], "big");
        assert_eq!(full["extras"]["platform"], "pdkr-big-box");
    }

    // The pony-build server got the same host and tags from both runs; its add_results takes
    // two parameters, so paddock's extras ride inside client_info.
    let calls = pony.calls("add_results");
    assert_eq!(calls.len(), 2, "{calls:?}");
    for (call, run) in calls.iter().zip(&runs) {
        assert_eq!(call["client_info"]["host"], "pdkr-big-box", "{call}");
        assert_eq!(call["client_info"]["tags"], json!(["linux", "x86_64", "big", "nightly"]));
        assert_eq!(call["client_info"]["package"], "pdkr-job");
        assert!(call["extras"].is_null(), "pony-build's add_results(client_info, results)");
        assert_eq!(call["client_info"]["paddock"]["run_id"].as_str(), Some(run.as_str()));
        assert_eq!(call["client_info"]["paddock"]["hypervisor_host"], Value::Null, "no VM was placed");
    }
}
