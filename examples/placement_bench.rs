//! Placement cost per run, for `make bench` (`bench/figures/placement.sh OUT.json`): the VM
//! manager on 20 `test:///` hosts of 50 slots with 5,000 launches of 10 jobs queued while every
//! host is drained, then all hosts opened at once.
//!
//! Rows: (1) µs per run from the hosts opening to the 1,000th `Placed` report (the queue sort,
//! the placement choice, the port, the persisted VM row; the first 1,000 fill every slot) against
//! a bare loop choosing, for 1,000 runs, the host with most free memory among 20; (2) ms per run
//! to serve all 5,000 (placed, defined, started, ready, destroyed) against the same 5,000
//! define/start/destroy/undefine cycles as bare `HostHandle` calls, 50 in flight per host.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use paddock::config::*;
use paddock::hosts::Block;
use paddock::libvirt::HostHandle;
use paddock::vm::{LaunchRequest, LaunchStage, ManagerConfig, Readiness, VmManager};

const HOSTS: usize = 20;
const SLOTS: u32 = 50;
const RUNS: usize = 5000;
const JOBS: usize = 10;

fn fixture() -> String {
    format!("test://{}", Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/host-big.xml").display())
}

fn image() -> Image {
    Image {
        name: "tiny".into(),
        os: Os::Linux,
        arch: Arch::X86_64,
        boot: Boot::Kernel { kernel: "/nonexistent/vmlinuz".into(), initrd: "/nonexistent/initrd".into(), cmdline: "quiet".into() },
        memory_mib: 256,
        vcpus: 1,
        user: "root".into(),
        shell: Shell::Sh,
        host_key: HostKeyPolicy::Console,
        trusts_fleet_ca: false,
        boot_timeout: Duration::from_secs(10),
        nic_model: None,
        tpm: false,
        smc_key: None,
        firmware: None,
        network: GuestNetwork::Outbound,
        platform: "tiny".into(),
        start: paddock::config::Start::Cold,
        min_ready: 0,
        guest_agent: false,
    }
}

fn hosts() -> Vec<Host> {
    (0..HOSTS)
        .map(|i| Host {
            name: format!("h{i:02}"),
            uri: fixture(),
            accelerator: Accelerator::Tcg,
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            capacity: Capacity { max_vms: SLOTS, memory_mib: 65536, vcpus: 64 },
            network: None,
            image_pool: None,
            limits: Default::default(),
        })
        .collect()
}

/// (µs per run to the 1,000th placement, ms per run to serve all).
async fn manager() -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let store = paddock::store::Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let cfg = ManagerConfig {
        instance_id: "benchp00".into(),
        state_dir: dir.path().to_path_buf(),
        // Numbers in test:/// domain XML only: nothing binds them.
        ssh_ports: PortRange { first: 31000, last: 31999 },
        launch_retries: 1,
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
    };
    let hosts = hosts();
    let mgr = VmManager::start(cfg, hosts.clone(), store).await.unwrap();
    for h in &hosts {
        let b = Block::Drained { reason: "bench".into(), by: "bench".into(), at: chrono::Utc::now() };
        mgr.set_block(&h.name, Some(b)).await.unwrap();
    }
    let (progress, mut placed_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for k in 0..RUNS {
        let req = LaunchRequest {
            run_id: format!("r{k}"),
            job: Some(format!("job-{}", k % JOBS)),
            image: image(),
            authorized_keys: Vec::new(),
            ca_key: None,
            priority: 0,
            avoid_hosts: Vec::new(),
            progress: Some(progress.clone()),
        };
        let m = mgr.clone();
        tasks.push(tokio::spawn(async move {
            let vm = m.launch(req).await.unwrap();
            m.destroy(&vm.name).await.unwrap();
        }));
    }
    while mgr.snapshot().await.unwrap().queued < RUNS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t = Instant::now();
    for h in &hosts {
        mgr.set_block(&h.name, None).await.unwrap();
    }
    let mut placed = 0usize;
    let mut first_fill = None;
    while placed < RUNS {
        match placed_rx.recv().await.unwrap() {
            LaunchStage::Placed { .. } => placed += 1,
            LaunchStage::Booting | LaunchStage::Requeued => {}
        }
        if placed == (HOSTS * SLOTS as usize) && first_fill.is_none() {
            first_fill = Some(t.elapsed());
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let all = t.elapsed();
    let fill = first_fill.unwrap();
    (fill.as_secs_f64() * 1e6 / (HOSTS * SLOTS as usize) as f64, all.as_secs_f64() * 1e3 / RUNS as f64)
}

/// µs per run of the bare choice: the host with most free memory that has a slot.
fn bare_choice() -> f64 {
    let n = HOSTS * SLOTS as usize;
    let mut best = Duration::MAX;
    for _ in 0..20 {
        let mut used = vec![(0u32, 0u64); HOSTS];
        let t = Instant::now();
        for _ in 0..n {
            let i = (0..HOSTS).filter(|&i| used[i].0 < SLOTS).max_by_key(|&i| (65536 - used[i].1, std::cmp::Reverse(i))).unwrap();
            used[i].0 += 1;
            used[i].1 += 256;
        }
        std::hint::black_box(&used);
        best = best.min(t.elapsed());
    }
    best.as_secs_f64() * 1e6 / n as f64
}

/// ms per cycle of bare define/start/destroy/undefine on 20 hosts, 50 in flight per host.
async fn bare_cycles() -> f64 {
    let xml = |name: &str| {
        format!("<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>")
    };
    let handles: Vec<HostHandle> = (0..HOSTS).map(|i| HostHandle::spawn(&format!("h{i:02}"), &fixture())).collect();
    for h in &handles {
        h.wait_connected().await;
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (i, h) in handles.iter().enumerate() {
        for k in 0..SLOTS as usize {
            let h = h.clone();
            let per = RUNS / HOSTS / SLOTS as usize;
            tasks.push(tokio::spawn(async move {
                for c in 0..per {
                    let name = format!("bare-{i}-{k}-{c}");
                    h.define(&name, xml(&name)).await.unwrap();
                    h.start(&name).await.unwrap();
                    h.destroy(&name).await.unwrap();
                    h.undefine(&name).await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    t.elapsed().as_secs_f64() * 1e3 / RUNS as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let out = std::env::args().nth(1).expect("usage: placement_bench OUT.json");
    let (placed_us, served_ms) = manager().await;
    let choice_us = bare_choice();
    let cycles_ms = bare_cycles().await;
    let rows = serde_json::json!({"rows": [
        {"figure": "placement, 5,000 queued on 20x50 test:/// slots: open -> 1,000 placed", "unit": "us/run",
         "paddock": placed_us, "baseline": choice_us, "baseline_is": "bare loop: most free memory of 20"},
        {"figure": "queue of 5,000 served on 20x50 test:/// slots", "unit": "ms/run",
         "paddock": served_ms, "baseline": cycles_ms, "baseline_is": "bare define/start/destroy/undefine"},
    ]});
    std::fs::write(&out, serde_json::to_string_pretty(&rows).unwrap()).unwrap();
    println!("{rows}");
}
