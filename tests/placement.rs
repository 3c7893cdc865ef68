//! Placement beyond one host, on libvirt's `test:///` driver: a job's
//! `retry_infrastructure` through the whole daemon (three fake hosts on which no
//! guest ever answers SSH, so every attempt is an infrastructure failure), and
//! per-job priorities with ageing on the VM manager. Ports 26200-26299.

mod support;

use std::path::Path;
use std::time::Duration;

use paddock::daemon::{Daemon, ServeOptions};
use paddock::runs::Trigger;
use paddock::store::RunRow;
use support::{wait_for, wait_until};

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    format!("test://{}", p.display())
}

/// Three fake hosts (most free memory first: a, b, c), an image whose guests never answer
/// SSH (libvirt's test driver boots nothing), and a job retried twice.
fn retry_fleet(dir: &Path) -> paddock::config::Fleet {
    let host = |name: &str, xml: &str, mem: u32| {
        format!(
            "[[hosts]]\nname = \"{name}\"\nuri = \"{}\"\naccelerator = \"tcg\"\naddress = \"127.0.0.1\"\nmax_vms = 4\nmemory_mib = {mem}\nvcpus = 4\n",
            fixture(xml)
        )
    };
    let src = format!(
        r#"
version = 1
[daemon]
listen = "127.0.0.1:0"
state_dir = "{state}"
ssh_ports = "26200-26219"
launch_retries = 1
public_reads = true

{a}
{b}
{c}
[[images]]
name = "tiny"
os = "linux"
arch = "x86_64"
kernel = "/nonexistent/vmlinuz"
initrd = "/nonexistent/initrd.img"
cmdline = "console=ttyS0"
memory_mib = 256
vcpus = 1
user = "root"
host_key = "console"
boot_timeout = "1s"

[[users]]
name = "alice"
role = "maintainer"

[[jobs]]
name = "flaky"
images = ["tiny"]
retry_infrastructure = 2
[[jobs.steps]]
name = "build"
type = "build"
command = "true"
"#,
        state = dir.join("state").display(),
        a = host("a", "host-big.xml", 8192),
        b = host("b", "host-medium.xml", 6144),
        c = host("c", "host-small.xml", 4096),
    );
    let path = dir.join("fleet.toml");
    std::fs::write(&path, src).unwrap();
    paddock::config::load(&path).unwrap_or_else(|e| panic!("test fleet invalid:\n{e}"))
}

async fn ended(daemon: &Daemon, id: &str) -> RunRow {
    wait_for(&format!("run {id} to end"), Duration::from_secs(60), async || {
        daemon.store.run(id).await.unwrap().filter(|r| matches!(r.state.as_str(), "done" | "failed" | "cancelled"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infrastructure_failure_is_retried_on_another_host_and_only_the_last_attempt_is_recorded() {
    let dir = tempfile::Builder::new().prefix("pdkp-").tempdir().unwrap();
    let daemon = Daemon::start(retry_fleet(dir.path()), ServeOptions { listen: Some("127.0.0.1:0".parse().unwrap()), demo: false })
        .await
        .expect("daemon starts");
    let first = daemon.runs.trigger("flaky", None, Trigger::Manual { by: "alice".into() }).await.unwrap().remove(0);

    // Follow the chain: each attempt ends, and its retry is queued in that same transaction.
    let mut chain = vec![ended(&daemon, &first).await];
    while chain.len() < 3 {
        let last = &chain[chain.len() - 1];
        let link = daemon.store.retried_by(&last.id).await.unwrap().unwrap_or_else(|| panic!("run {} has no retry: {last:?}", last.id));
        chain.push(ended(&daemon, &link.run_id).await);
    }
    for r in &chain {
        assert_eq!(r.outcome.as_deref(), Some("infrastructure"), "{r:?}");
        assert!(r.reason.as_deref().unwrap_or("").contains("no SSH banner"), "{r:?}");
        assert_eq!((r.job.as_str(), r.image.as_str(), r.trigger.as_str()), ("flaky", "tiny", "manual"));
    }
    let hosts: Vec<&str> = chain.iter().map(|r| r.host.as_deref().unwrap()).collect();
    // Each retry avoids the host its previous attempt failed on (a and b also cool down).
    assert_eq!(hosts, ["a", "b", "c"]);
    // The last attempt is not retried: two retries were allowed.
    assert!(daemon.store.retried_by(&chain[2].id).await.unwrap().is_none());
    let link1 = daemon.store.retry_of(&chain[1].id).await.unwrap().unwrap();
    let link2 = daemon.store.retry_of(&chain[2].id).await.unwrap().unwrap();
    assert_eq!((link1.retry_of.as_str(), link1.attempt, link1.attempts), (chain[0].id.as_str(), 2, 3));
    assert_eq!(link1.note, "retry 1 of 2 after infrastructure failure on host a");
    assert_eq!((link2.retry_of.as_str(), link2.attempt), (chain[1].id.as_str(), 3));
    assert_eq!(link2.note, "retry 2 of 2 after infrastructure failure on host b");

    // Recorders get the last attempt only; the replaced attempts' results say who replaced them.
    for (r, next) in chain.iter().zip(&chain[1..]) {
        assert!(daemon.store.outbox_for_run(&r.id).await.unwrap().is_empty(), "a retried attempt was forwarded");
        let doc: serde_json::Value = serde_json::from_str(r.result_json.as_deref().unwrap()).unwrap();
        assert_eq!(doc["extras"]["retried_by"], next.id.as_str());
    }
    wait_until("the last attempt's delivery", Duration::from_secs(30), async || {
        daemon.store.outbox_for_run(&chain[2].id).await.unwrap().iter().all(|e| e.delivered_at.is_some())
    })
    .await;
    assert_eq!(daemon.store.outbox_for_run(&chain[2].id).await.unwrap().len(), 1);
    assert_eq!(daemon.recorder.row_counts().await.unwrap()[0], 1, "one result in the recorder");
    let stored = daemon.recorder.get(paddock::recorder::ResultKey(1)).await.unwrap().expect("delivered");
    let extras = serde_json::to_value(&stored.doc.extras).unwrap();
    assert_eq!(extras["run_id"], chain[2].id.as_str());
    assert_eq!(extras["attempt"], 3);
    assert_eq!(extras["retry"]["note"], "retry 2 of 2 after infrastructure failure on host b");
    assert_eq!(extras["retry"]["retry_of"], chain[1].id.as_str());

    // The API and the run page say it too.
    let http = reqwest::Client::new();
    let base = format!("http://{}", daemon.addr);
    let detail: serde_json::Value =
        http.get(format!("{base}/api/v1/runs/{}", chain[1].id)).send().await.unwrap().error_for_status().unwrap().json().await.unwrap();
    assert_eq!(detail["retry"]["note"], "retry 1 of 2 after infrastructure failure on host a");
    assert_eq!(detail["retry"]["retry_of"], chain[0].id.as_str());
    assert_eq!(detail["retried_by"], chain[2].id.as_str());
    let page = http.get(format!("{base}/runs/{}", chain[2].id)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("retry 2 of 2 after infrastructure failure on host b"), "{page}");
    daemon.stop().await.unwrap();
}
