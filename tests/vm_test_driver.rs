//! The VmManager on libvirt's `test:///` driver: fake hosts from XML files with
//! different capacities (placement, queuing, down hosts), and `test:///default`
//! for reconciliation at scale and after a daemon restart.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use paddock::config::{Accelerator, Arch, Boot, Capacity, Host, Image, PortRange};
use paddock::libvirt::{HostHandle, HostStatus};
use paddock::store::Store;
use paddock::vm::{LaunchRequest, ManagerConfig, Readiness, VmError, VmManager, VmState};
use support::fixtures::image;
use support::wait_until;

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    format!("test://{}", p.display())
}

fn host(name: &str, uri: &str, max_vms: u32, memory_mib: u64, vcpus: u32) -> Host {
    Host {
        name: name.into(),
        uri: uri.into(),
        accelerator: Accelerator::Tcg,
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        capacity: Capacity { max_vms, memory_mib, vcpus },
        network: None,
        image_pool: None,
        limits: Default::default(),
    }
}

fn kernel() -> Boot {
    Boot::Kernel { kernel: "/nonexistent/vmlinuz".into(), initrd: "/nonexistent/initrd".into(), cmdline: "quiet".into() }
}

fn config(state_dir: &Path, instance: &str) -> ManagerConfig {
    ManagerConfig {
        instance_id: instance.into(),
        state_dir: state_dir.to_path_buf(),
        ssh_ports: PortRange { first: 23000, last: 23499 },
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
        priority_aging: Duration::from_secs(60),
        upload_timeout: Duration::from_secs(600),
        libvirt: Default::default(),
    }
}

fn request(run: &str, image: &Image) -> LaunchRequest {
    LaunchRequest {
        run_id: run.into(),
        job: None,
        image: image.clone(),
        authorized_keys: vec![],
        ca_key: None,
        priority: 0,
        avoid_hosts: Vec::new(),
        progress: None,
    }
}

async fn store(dir: &Path) -> Store {
    Store::open(&dir.join("paddock.db")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_by_capacity_queues_when_full_and_proceeds_after_a_destroy() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path()).await;
    let hosts = vec![host("small", &fixture("host-small.xml"), 1, 1024, 1), host("big", &fixture("host-big.xml"), 3, 4096, 4)];
    let mgr = VmManager::start(config(dir.path(), "aaaa1111"), hosts, st.clone()).await.unwrap();
    let img = image("tiny", Arch::X86_64, 512, kernel());

    let mut ready = Vec::new();
    for i in 0..4 {
        let vm = mgr.launch(request(&format!("run-{i}"), &img)).await.unwrap();
        assert!(vm.name.starts_with("paddock-aaaa1111-"), "{}", vm.name);
        ready.push(vm);
    }
    // Most free memory first: the big host fills up before the small one gets its one VM.
    let on = |h: &str| ready.iter().filter(|v| v.host == h).count();
    assert_eq!((on("big"), on("small")), (3, 1));
    let mut ports: Vec<_> = ready.iter().map(|v| v.ssh_addr.port()).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 4, "ports collide");
    let row = st.vm(&ready[0].name).await.unwrap().unwrap();
    assert_eq!(row.state, "ready");

    // Full: the fifth launch waits instead of failing ...
    let m2 = mgr.clone();
    let img2 = img.clone();
    let fifth = tokio::spawn(async move { m2.launch(request("run-5", &img2)).await });
    wait_until("the fifth launch to queue", Duration::from_secs(5), || async { mgr.snapshot().await.unwrap().queued == 1 }).await;
    assert!(!fifth.is_finished());
    let snap = mgr.snapshot().await.unwrap();
    assert_eq!(snap.vms.len(), 4);
    assert!(snap.hosts.iter().all(|h| h.up && h.used.vms == h.capacity.max_vms));

    // ... and proceeds once a VM is destroyed, on the host that freed up.
    let gone = ready.iter().find(|v| v.host == "small").unwrap().clone();
    mgr.destroy(&gone.name).await.unwrap();
    assert!(st.vm(&gone.name).await.unwrap().is_none(), "the row of a gone VM stays");
    let fifth = tokio::time::timeout(Duration::from_secs(10), fifth).await.unwrap().unwrap().unwrap();
    assert_eq!(fifth.host, "small");

    for vm in ready.iter().filter(|v| v.name != gone.name).chain([&fifth]) {
        mgr.destroy(&vm.name).await.unwrap();
    }
    let snap = mgr.snapshot().await.unwrap();
    assert!(snap.vms.is_empty() && snap.queued == 0);
    assert!(st.vms().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_goes_first_and_fifo_within_a_priority() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = vec![host("one", &fixture("host-medium.xml"), 1, 2048, 2)];
    let mgr = VmManager::start(config(dir.path(), "bbbb2222"), hosts, store(dir.path()).await).await.unwrap();
    let img = image("tiny", Arch::X86_64, 256, kernel());
    let first = mgr.launch(request("hold-the-slot", &img)).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (run, prio) in [("low-1", 0), ("low-2", 0), ("high", 5)] {
        let (m, img, tx) = (mgr.clone(), img.clone(), tx.clone());
        let mut req = request(run, &img);
        req.priority = prio;
        tokio::spawn(async move {
            let vm = m.launch(req).await.unwrap();
            tx.send(run).unwrap();
            m.destroy(&vm.name).await.unwrap();
        });
        let n = match run {
            "low-1" => 1,
            "low-2" => 2,
            _ => 3,
        };
        wait_until("queueing", Duration::from_secs(5), || async { mgr.snapshot().await.unwrap().queued == n }).await;
    }
    mgr.destroy(&first.name).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
        order.push(tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap());
    }
    assert_eq!(order, vec!["high", "low-1", "low-2"]);
}

/// One job's 8-image matrix queued first does not hold back another job's single run: with one
/// slot, the single run is placed right after the matrix's first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_fair_between_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = vec![host("one", &fixture("host-medium.xml"), 1, 2048, 2)];
    let mgr = VmManager::start(config(dir.path(), "bbbb3333"), hosts, store(dir.path()).await).await.unwrap();
    let img = image("tiny", Arch::X86_64, 256, kernel());
    let first = mgr.launch(request("hold-the-slot", &img)).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let runs: Vec<(String, &str)> = (0..8).map(|i| (format!("matrix-{i}"), "matrix")).chain([("single".to_string(), "single")]).collect();
    for (n, (run, job)) in runs.iter().enumerate() {
        let (m, img, tx) = (mgr.clone(), img.clone(), tx.clone());
        let mut req = request(run, &img);
        req.job = Some(job.to_string());
        let run = run.clone();
        tokio::spawn(async move {
            let vm = m.launch(req).await.unwrap();
            tx.send(run).unwrap();
            m.destroy(&vm.name).await.unwrap();
        });
        wait_until("queueing", Duration::from_secs(5), || async { mgr.snapshot().await.unwrap().queued == n + 1 }).await;
    }
    mgr.destroy(&first.name).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..runs.len() {
        order.push(tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap());
    }
    assert_eq!(order[..3], ["matrix-0", "single", "matrix-1"], "{order:?}");
    assert_eq!(
        order.iter().filter(|r| r.starts_with("matrix-")).cloned().collect::<Vec<_>>(),
        (0..8).map(|i| format!("matrix-{i}")).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_host_is_skipped_and_an_arch_nobody_runs_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = vec![
        // A bigger host that cannot be reached: it would win placement if it were up.
        host("gone", "test:///nonexistent/paddock/host.xml", 8, 65536, 16),
        host("ok", &fixture("host-small.xml"), 2, 2048, 2),
    ];
    let mgr = VmManager::start(config(dir.path(), "cccc3333"), hosts, store(dir.path()).await).await.unwrap();
    let snap = mgr.snapshot().await.unwrap();
    let gone = snap.hosts.iter().find(|h| h.name == "gone").unwrap();
    assert!(!gone.up);
    assert!(gone.down_reason.as_deref().unwrap().contains("test:///nonexistent"), "{:?}", gone.down_reason);
    let vm = mgr.launch(request("r", &image("tiny", Arch::X86_64, 512, kernel()))).await.unwrap();
    assert_eq!(vm.host, "ok");
    // The test driver emulates x86 only: an aarch64 image cannot go anywhere that is up,
    // but the down host might run it once back, so it waits rather than failing ...
    let arm = image("tiny-arm", Arch::Aarch64, 512, kernel());
    let waiting = tokio::time::timeout(Duration::from_millis(300), mgr.launch(request("r2", &arm))).await;
    assert!(waiting.is_err(), "an aarch64 launch must wait while a host with unknown arches is down");
    // ... while with only known hosts it fails at once.
    let dir2 = tempfile::tempdir().unwrap();
    let only_ok = vec![host("ok", &fixture("host-small.xml"), 2, 2048, 2)];
    let mgr2 = VmManager::start(config(dir2.path(), "cccc4444"), only_ok, store(dir2.path()).await).await.unwrap();
    match mgr2.launch(request("r3", &arm)).await {
        Err(VmError::NoHost { arch, why, .. }) => {
            assert_eq!(arch, "aarch64");
            assert_eq!(why, "no host runs arch aarch64", "the run says which constraint no host meets");
        }
        other => panic!("expected NoHost, got {other:?}"),
    }
    mgr.destroy(&vm.name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_images_boot_from_an_overlay_that_teardown_removes() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let st = std::process::Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("8M").status().unwrap();
    assert!(st.success());
    let hosts = vec![host("h", &fixture("host-medium.xml"), 2, 4096, 2)];
    let state = dir.path().join("state");
    let mgr = VmManager::start(config(&state, "dddd5555"), hosts, store(dir.path()).await).await.unwrap();
    let img = image("disk", Arch::X86_64, 512, Boot::Disk { base: base.clone() });
    let vm = mgr.launch(request("r", &img)).await.unwrap();
    let ov = state.join("overlays").join(format!("{}.qcow2", vm.name));
    let info = std::process::Command::new("qemu-img").args(["info", "--output=json"]).arg(&ov).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(PathBuf::from(info["backing-filename"].as_str().unwrap()), base);
    mgr.release(&vm.name).await.unwrap();
    wait_until("the overlay to go", Duration::from_secs(5), || async { !ov.exists() }).await;
    assert!(base.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_keeps_a_released_vm_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = vec![host("h", &fixture("host-medium.xml"), 2, 4096, 2)];
    let st = store(dir.path()).await;
    let mgr = VmManager::start(config(dir.path(), "eeee6666"), hosts, st.clone()).await.unwrap();
    let vm = mgr.launch(request("r", &image("tiny", Arch::X86_64, 512, kernel()))).await.unwrap();
    let until = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    mgr.hold(&vm.name, until).await.unwrap();
    assert!(st.vm(&vm.name).await.unwrap().unwrap().hold_until.is_some());
    mgr.release(&vm.name).await.unwrap();
    let snap = mgr.snapshot().await.unwrap();
    assert_eq!(snap.vms.len(), 1, "a held VM must outlive its release");
    assert_eq!(snap.vms[0].state, VmState::Ready);
    wait_until("the hold to end", Duration::from_secs(10), || async { mgr.snapshot().await.unwrap().vms.is_empty() }).await;
    assert!(chrono::Utc::now() >= until);
}

/// The only test on `test:///default` (its state is shared by every connection
/// in the process): 200 define/start/destroy cycles for timing, then 200
/// orphans reaped at manager start while unmarked and foreign domains survive,
/// then a "crashed" manager's VM reaped by the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_reaps_200_orphans_and_never_touches_other_domains() {
    let dir = tempfile::tempdir().unwrap();
    let instance = "ffff7777";
    let conn = HostHandle::spawn("default", "test:///default");
    assert!(matches!(conn.wait_connected().await, HostStatus::Up(_)));
    let before: Vec<String> = conn.list().await.unwrap().into_iter().map(|d| d.name).collect();

    let xml = |name: &str, mark: Option<&str>| {
        let meta = mark
            .map(|inst| {
                format!(
                    "<metadata><paddock:vm xmlns:paddock='https://paddock.dev/xmlns/vm/1'><paddock:run>orphan</paddock:run>\
                     <paddock:instance>{inst}</paddock:instance><paddock:created>2026-01-01T00:00:00.000Z</paddock:created></paddock:vm></metadata>"
                )
            })
            .unwrap_or_default();
        format!(
            "<domain type='test'><name>{name}</name>{meta}<memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>"
        )
    };

    let t = Instant::now();
    for i in 0..200 {
        let name = format!("cycle-{i}");
        conn.define(&name, xml(&name, Some(instance))).await.unwrap();
        conn.start(&name).await.unwrap();
        conn.destroy(&name).await.unwrap();
        conn.undefine(&name).await.unwrap();
    }
    let cycles = t.elapsed();

    let t = Instant::now();
    for i in 0..200 {
        let name = format!("paddock-{instance}-orphan{i:03}");
        conn.define(&name, xml(&name, Some(instance))).await.unwrap();
        if i % 2 == 0 {
            conn.start(&name).await.unwrap();
        }
    }
    let made = t.elapsed();
    conn.define("not-paddocks", xml("not-paddocks", None)).await.unwrap();
    conn.start("not-paddocks").await.unwrap();
    conn.define("paddock-other-instance", xml("paddock-other-instance", Some("99999999"))).await.unwrap();
    // An orphaned overlay file, as a crashed daemon would leave it.
    let overlays = dir.path().join("overlays");
    std::fs::create_dir_all(&overlays).unwrap();
    let stray = overlays.join(format!("paddock-{instance}-stray.qcow2"));
    std::fs::write(&stray, b"x").unwrap();

    let st = store(dir.path()).await;
    let hosts = vec![host("default", "test:///default", 50, 65536, 64)];
    let t = Instant::now();
    let mgr = VmManager::start(config(dir.path(), instance), hosts.clone(), st.clone()).await.unwrap();
    let reaped = t.elapsed();
    let left: Vec<String> = conn.list().await.unwrap().into_iter().map(|d| d.name).collect();
    assert!(!left.iter().any(|n| n.contains("orphan")), "orphans left: {left:?}");
    for keep in ["not-paddocks", "paddock-other-instance"].iter().map(|s| s.to_string()).chain(before.clone()) {
        assert!(left.contains(&keep), "{keep} was touched; left: {left:?}");
    }
    assert_eq!(conn.is_active("not-paddocks").await.unwrap(), Some(true));
    assert!(!stray.exists(), "the orphaned overlay is still there");
    assert_eq!(st.events(Some("reaped_domain"), 1000).await.unwrap().len(), 200);
    eprintln!(
        "test:///default: 200 define/start/destroy/undefine cycles {:?} ({:?} each); \
         defining 200 orphans {:?}; manager start with reaping 200 {:?}",
        cycles,
        cycles / 200,
        made,
        reaped
    );

    // A VM of a manager that dies (every handle dropped, nothing torn down) ...
    let vm = mgr.launch(request("crash", &image("tiny", Arch::X86_64, 64, kernel()))).await.unwrap();
    assert_eq!(st.vm(&vm.name).await.unwrap().unwrap().state, "ready");
    drop(mgr);
    assert_eq!(conn.is_active(&vm.name).await.unwrap(), Some(true));
    // ... is reaped by the next manager of the same instance, row and all.
    let mgr = VmManager::start(config(dir.path(), instance), hosts, st.clone()).await.unwrap();
    assert_eq!(conn.is_active(&vm.name).await.unwrap(), None);
    assert!(st.vm(&vm.name).await.unwrap().is_none());
    // A periodic pass with nothing to do touches nothing.
    let report = mgr.reconcile_now().await.unwrap();
    assert!(report.domains_removed.is_empty() && report.errors.is_empty(), "{report:?}");
    assert!(report.foreign_domains >= 2);

    conn.destroy("not-paddocks").await.unwrap();
    conn.undefine("not-paddocks").await.unwrap();
    conn.undefine("paddock-other-instance").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_go_to_hosts_of_their_arch() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = vec![host("x86", &fixture("host-big.xml"), 4, 8192, 4), host("arm", &fixture("host-arm.xml"), 2, 2048, 2)];
    let mgr = VmManager::start(config(dir.path(), "abab0000"), hosts, store(dir.path()).await).await.unwrap();
    let arm = mgr.launch(request("a", &image("tiny-arm", Arch::Aarch64, 512, kernel()))).await.unwrap();
    let x86 = mgr.launch(request("x", &image("tiny", Arch::X86_64, 512, kernel()))).await.unwrap();
    assert_eq!((arm.host.as_str(), x86.host.as_str()), ("arm", "x86"));
    match mgr.launch(request("s", &image("tiny-s390x", Arch::S390x, 512, kernel()))).await {
        Err(VmError::NoHost { arch, .. }) => assert_eq!(arch, "s390x"),
        other => panic!("expected NoHost, got {other:?}"),
    }
    mgr.destroy(&arm.name).await.unwrap();
    mgr.destroy(&x86.name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_withdrawn_while_queued_never_boots() {
    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path()).await;
    let mut cfg = config(dir.path(), "pdkl0001");
    cfg.ssh_ports = PortRange { first: 24900, last: 24949 };
    let mgr = VmManager::start(cfg, vec![host("small", &fixture("host-small.xml"), 1, 1024, 1)], st.clone()).await.unwrap();
    let img = image("tiny", Arch::X86_64, 512, kernel());
    let first = mgr.launch(request("run-a", &img)).await.unwrap();

    // A run cancelled while it waits for a host drops its launch.
    let (progress, mut stages) = tokio::sync::mpsc::unbounded_channel();
    let (m2, img2) = (mgr.clone(), img.clone());
    let withdrawn = tokio::spawn(async move { m2.launch(LaunchRequest { progress: Some(progress), ..request("run-b", &img2) }).await });
    wait_until("the second launch to queue", Duration::from_secs(5), || async { mgr.snapshot().await.unwrap().queued == 1 }).await;
    withdrawn.abort();
    let _ = withdrawn.await;
    let (m3, img3) = (mgr.clone(), img.clone());
    let third = tokio::spawn(async move { m3.launch(request("run-c", &img3)).await });
    wait_until("the third launch to queue", Duration::from_secs(5), || async { mgr.snapshot().await.unwrap().queued >= 1 }).await;

    // Room frees up: the launch behind the withdrawn one gets it, and nothing
    // was ever placed, defined or booted for the withdrawn run.
    mgr.destroy(&first.name).await.unwrap();
    let third = tokio::time::timeout(Duration::from_secs(10), third).await.unwrap().unwrap().unwrap();
    assert_eq!(third.host, "small");
    let snap = mgr.snapshot().await.unwrap();
    assert!(snap.vms.iter().all(|v| v.run_id != "run-b"), "{:?}", snap.vms);
    assert_eq!(snap.queued, 0);
    assert!(stages.try_recv().is_err(), "the withdrawn launch was placed");
    assert!(st.vms().await.unwrap().iter().all(|v| v.run_id.as_deref() != Some("run-b")));
    mgr.destroy(&third.name).await.unwrap();
}
