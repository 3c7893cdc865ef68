//! Placement beyond one host, on libvirt's `test:///` driver: a job's
//! `retry_infrastructure` through the whole daemon (three fake hosts on which no
//! guest ever answers SSH, so every attempt is an infrastructure failure), and
//! the queue at scale: 20 hosts x 50 VM slots serving 5,000 queued runs of 10 jobs.
//! Ports 26200-26219 for the daemon; the scale test's 1,000 "ports" (27000-27999) are
//! numbers in `test:///` domain XML only: nothing binds or connects to them.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use paddock::config::{Accelerator, Arch, Boot, Capacity, Host, PortRange};
use paddock::daemon::{Daemon, ServeOptions};
use paddock::hosts::Block;
use paddock::runs::Trigger;
use paddock::store::{RunRow, Store};
use paddock::vm::{LaunchRequest, LaunchStage, ManagerConfig, Readiness, VmManager};
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

fn scale_config(state_dir: &Path) -> ManagerConfig {
    ManagerConfig {
        instance_id: "5ca1e000".into(),
        state_dir: state_dir.to_path_buf(),
        ssh_ports: PortRange { first: 27000, last: 27999 },
        launch_retries: 2,
        reconcile_interval: Duration::from_secs(3600),
        readiness: Readiness::DomainRunning,
        shutdown_timeout: Duration::from_secs(5),
        host_cooldown: Duration::from_secs(60),
        console_tail_lines: 20,
        clock: paddock::clock::Clock::system(),
        emulation_boot_factor: Default::default(),
        images: Vec::new(),
        upload_retry: Duration::from_secs(30),
        libvirt: Default::default(),
        priority_aging: Duration::from_secs(60),
        upload_timeout: Duration::from_secs(600),
    }
}

const HOSTS: usize = 20;
const SLOTS: u32 = 50;
const RUNS: usize = 5000;
const JOBS: usize = 10;

/// 20 fake hosts x 50 slots, 5,000 runs of 10 jobs queued while every host is drained: nine
/// jobs' matrices (555 or 556 runs each, queued job after job, the worst order for a FIFO) and
/// then one job's single run. Each VM is destroyed as soon as it is ready, so the queue drains
/// as fast as the manager and libvirt's test driver go.
///
/// The fairness bound, on the order the manager places runs (its `Placed` reports, in order):
/// while two jobs both have runs queued, their counts of placed runs never differ by more than
/// one (round robin between jobs; all have priority 0). So the single run, queued last behind
/// 4,999 others, is among the first 10 placed, and each job's k-th run is placed among the first
/// 10k. In time: every matrix job's median wait is within 25% of the fastest job's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_hosts_of_fifty_slots_serve_5000_queued_runs_of_ten_jobs_fairly() {
    let dir = tempfile::Builder::new().prefix("pdkp-").tempdir().unwrap();
    let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let hosts: Vec<Host> = (0..HOSTS)
        .map(|i| Host {
            name: format!("h{i:02}"),
            uri: fixture("host-big.xml"),
            accelerator: Accelerator::Tcg,
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            capacity: Capacity { max_vms: SLOTS, memory_mib: 65536, vcpus: 64 },
            network: None,
            image_pool: None,
            limits: Default::default(),
        })
        .collect();
    let mgr = VmManager::start(scale_config(dir.path()), hosts.clone(), store.clone()).await.unwrap();
    for h in &hosts {
        let b = Block::Drained { reason: "test: queue first".into(), by: "test".into(), at: chrono::Utc::now() };
        mgr.set_block(&h.name, Some(b)).await.unwrap();
    }
    let kernel = Boot::Kernel { kernel: "/nonexistent/vmlinuz".into(), initrd: "/nonexistent/initrd".into(), cmdline: "quiet".into() };
    let img = support::fixtures::image("tiny", Arch::X86_64, 256, kernel);

    // One progress channel for all: the manager's `Placed` reports arrive in placement order.
    let (progress, mut placed_rx) = tokio::sync::mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let launch = |run: String, job: String| {
        let req = LaunchRequest {
            run_id: run.clone(),
            job: Some(job.clone()),
            image: img.clone(),
            authorized_keys: Vec::new(),
            ca_key: None,
            priority: 0,
            avoid_hosts: Vec::new(),
            progress: Some(progress.clone()),
        };
        let (m, done) = (mgr.clone(), done_tx.clone());
        tokio::spawn(async move {
            let vm = m.launch(req).await.unwrap();
            let ready = Instant::now();
            m.destroy(&vm.name).await.unwrap();
            done.send((vm.name, run, job, ready)).unwrap();
        });
    };
    let t = Instant::now();
    let matrix_jobs = JOBS - 1;
    for j in 0..matrix_jobs {
        let n = (RUNS - 1) / matrix_jobs + usize::from(j < (RUNS - 1) % matrix_jobs);
        for k in 0..n {
            launch(format!("j{j}-{k}"), format!("matrix-{j}"));
        }
    }
    wait_until("4,999 launches queued", Duration::from_secs(30), async || mgr.snapshot().await.unwrap().queued == RUNS - 1).await;
    launch("single-0".into(), "single".into());
    wait_until("5,000 launches queued", Duration::from_secs(30), async || mgr.snapshot().await.unwrap().queued == RUNS).await;
    let queued_in = t.elapsed();

    let opened = Instant::now();
    for h in &hosts {
        mgr.set_block(&h.name, None).await.unwrap();
    }
    let mut done = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while done.len() < RUNS {
        let left = deadline.saturating_duration_since(Instant::now());
        let (vm, run, job, ready) =
            tokio::time::timeout(left, done_rx.recv()).await.unwrap_or_else(|_| panic!("{} of {RUNS} runs served", done.len())).unwrap();
        done.insert(vm, (run, job, ready));
    }
    let served_in = opened.elapsed();
    let mut order: Vec<(String, String)> = Vec::new();
    while let Ok(stage) = placed_rx.try_recv() {
        if let LaunchStage::Placed { vm, host } = stage {
            order.push((done[&vm].1.clone(), host));
        }
    }
    assert_eq!(order.len(), RUNS, "every run placed once (no failed attempts on the test driver)");

    // Round robin: while two jobs both still have runs queued, their placed counts differ by <= 1.
    let total: HashMap<&str, usize> = order.iter().fold(HashMap::new(), |mut m, (job, _)| {
        *m.entry(job.as_str()).or_default() += 1;
        m
    });
    let mut placed: HashMap<&str, usize> = HashMap::new();
    for (i, (job, _)) in order.iter().enumerate() {
        *placed.entry(job.as_str()).or_default() += 1;
        let backlogged: Vec<usize> = total
            .iter()
            .filter(|(j, n)| placed.get(*j).copied().unwrap_or(0) < **n)
            .map(|(j, _)| placed.get(j).copied().unwrap_or(0))
            .collect();
        if let (Some(lo), Some(hi)) = (backlogged.iter().min(), backlogged.iter().max()) {
            assert!(hi - lo <= 1, "placement {i}: backlogged jobs' counts range {lo}..{hi}");
        }
    }
    let single_at = order.iter().position(|(job, _)| job == "single").unwrap();
    assert!(single_at < JOBS, "the single run, queued last behind 4,999, was placement {single_at}");

    // Spread: every host served runs.
    let mut per_host: HashMap<&str, usize> = HashMap::new();
    for (_, host) in &order {
        *per_host.entry(host.as_str()).or_default() += 1;
    }
    assert_eq!(per_host.len(), HOSTS, "{per_host:?}");

    // In time: each matrix job's median wait (hosts opened -> VM ready) within 25% of the best.
    let mut waits: HashMap<String, Vec<Duration>> = HashMap::new();
    for (_, job, ready) in done.values() {
        waits.entry(job.clone()).or_default().push(ready.duration_since(opened));
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut medians: Vec<(String, Duration, Duration)> =
        waits.iter_mut().filter(|(j, _)| j.starts_with("matrix-")).map(|(j, v)| (j.clone(), median(v), *v.last().unwrap())).collect();
    medians.sort();
    let best = medians.iter().map(|m| m.1).min().unwrap();
    let worst = medians.iter().map(|m| m.1).max().unwrap();
    eprintln!(
        "scale: {RUNS} runs queued in {queued_in:?}, served by {HOSTS}x{SLOTS} slots in {served_in:?} ({:?} per run); \
         single run placed {single_at}th; matrix jobs' median / worst waits: {}",
        served_in / RUNS as u32,
        medians.iter().map(|(j, m, w)| format!("{j} {:.2}/{:.2}s", m.as_secs_f64(), w.as_secs_f64())).collect::<Vec<_>>().join(", ")
    );
    assert!(worst.as_secs_f64() <= best.as_secs_f64() * 1.25 + 0.05, "median waits range {best:?}..{worst:?}");

    let snap = mgr.snapshot().await.unwrap();
    assert!(snap.vms.is_empty() && snap.queued == 0);
    assert!(store.vms().await.unwrap().is_empty());
}
