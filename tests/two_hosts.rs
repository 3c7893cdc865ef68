//! Two real hypervisors: the machine's `qemu:///system` and a donor host started by the test
//! (`tests/support/donor.rs`: a user's session libvirtd reached over `qemu+ssh://` through an
//! sshd of the test's own). Host ports of these tests: 24200-24399 (sshd 24200-24249, guest
//! forwards from 24300; the capability cache test's sshd 23800-23819). Donor users `pdkp2`,
//! `pdkp4`, `pdkc-1`, … one per test so that tests may run at once.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use paddock::config::{Accelerator, Arch, Boot, Capacity, Host, Image, PortRange};
use paddock::hosts::Block;
use paddock::libvirt::{HostHandle, HostOptions, HostStatus, LibvirtError};
use paddock::store::Store;
use paddock::vm::{LaunchRequest, ManagerConfig, Readiness, VmError, VmManager};
use support::donor::Donor;

const SSHD_PORTS: std::ops::RangeInclusive<u16> = 24200..=24249;

/// The donor is a separate hypervisor reached only over SSH, and a frozen session libvirtd
/// (SIGSTOP of the donor's own daemon, never the system one) makes the host go down within
/// its call deadline instead of hanging its callers; after SIGCONT it comes back by itself. Frozen
/// again during an image upload, the launch fails within `upload_timeout` naming host and image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_donor_libvirtd_goes_down_within_the_deadline_and_comes_back() {
    let donor = Donor::start("pdkp2", SSHD_PORTS);
    let options = HostOptions { call_timeout: Duration::from_secs(3), connect_timeout: Duration::from_secs(60) };
    let handle = HostHandle::spawn_with("donor", &donor.uri, options);
    let status = handle.wait_connected().await;
    assert!(matches!(status, HostStatus::Up(_)), "donor not up: {status:?}\nsshd log:\n{}", donor.sshd_log());
    assert!(handle.list().await.unwrap().is_empty(), "a new donor has no domains");
    assert!(!donor.libvirtd_pids().is_empty(), "the donor's session libvirtd runs as its own user");
    let system = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(system.contains("Uid:\t0"), "tests run as root, the donor's daemon does not");

    let frozen = donor.signal_libvirtd(libc::SIGSTOP);
    assert!(!frozen.is_empty());
    let t = Instant::now();
    let err = handle.list().await.expect_err("a frozen daemon answers nothing");
    let waited = t.elapsed();
    assert!(matches!(err, LibvirtError::Timeout { .. }), "{err:?}");
    assert!(waited < Duration::from_secs(6), "the call took {waited:?}, past its 3 s deadline");
    let HostStatus::Down { reason, .. } = handle.status() else { panic!("host not down: {:?}", handle.status()) };
    assert!(reason.contains("list") && reason.contains("donor"), "{reason}");
    // While down, calls fail at once rather than queueing behind the stuck thread.
    let t = Instant::now();
    assert!(matches!(handle.is_active("x").await, Err(LibvirtError::Down { .. })));
    assert!(t.elapsed() < Duration::from_millis(500), "a call to a down host waited {:?}", t.elapsed());

    // Meanwhile a daemon (re)starts: the frozen host costs it one connect deadline, no more,
    // and runs still start on the other host.
    let (dir, img, client) = (open_dir(), tiny_image(&support::guest::test_host_key("tiny")), client_key());
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let instance = format!("pdks{:04x}feedface", std::process::id() % 0xffff);
    let _local = LocalDomains(format!("paddock-{}", &instance[..8]));
    let mut cfg = manager_config(&state, &instance, vec![img.clone()]);
    cfg.ssh_ports = PortRange { first: 24320, last: 24329 };
    // The frozen donor costs its connect deadline; the local `start` of a TCG domain may take
    // seconds when other tests load the machine, so calls get more than the handle's 3 s above.
    cfg.libvirt = HostOptions { call_timeout: Duration::from_secs(10), connect_timeout: Duration::from_secs(5) };
    let hosts = vec![host("local", "qemu:///system", None), host("donor", &donor.uri, Some(support::donor::POOL))];
    let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let t = Instant::now();
    let mgr = VmManager::start(cfg, hosts, store).await.unwrap();
    let started_in = t.elapsed();
    assert!(started_in < Duration::from_secs(20), "start took {started_in:?} with a frozen host");
    let snap = mgr.snapshot().await.unwrap();
    let frozen_host = snap.hosts.iter().find(|h| h.name == "donor").unwrap();
    assert!(!frozen_host.up, "the frozen donor is not up");
    assert!(frozen_host.down_reason.as_deref().is_some_and(|r| r.contains("no answer")), "{:?}", frozen_host.down_reason);
    let vm = mgr.launch(request("r-frozen", &img, &client)).await.unwrap();
    assert_eq!(vm.host, "local");
    mgr.destroy(&vm.name).await.unwrap();
    drop(mgr);

    donor.signal_libvirtd(libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !handle.status().is_up() {
        assert!(Instant::now() < deadline, "donor did not come back: {:?}", handle.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(handle.list().await.unwrap().is_empty());

    // A hung upload: the donor's libvirtd frozen just as an image is put into its pool (the
    // host itself was up a moment before). The launch no other host can take fails within
    // `upload_timeout`, naming the host and the image, instead of waiting for ever.
    let dir = open_dir();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = manager_config(&state, &format!("pdkp{:04x}cafe0001", std::process::id() % 0xffff), Vec::new());
    cfg.ssh_ports = PortRange { first: 26250, last: 26259 };
    cfg.upload_timeout = Duration::from_secs(4);
    cfg.libvirt = HostOptions { call_timeout: Duration::from_secs(60), connect_timeout: Duration::from_secs(60) };
    let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let mgr = VmManager::start(cfg, vec![host("donor", &donor.uri, Some(support::donor::POOL))], store.clone()).await.unwrap();
    assert!(mgr.snapshot().await.unwrap().hosts[0].up, "the donor is up before its daemon freezes");
    assert!(!donor.signal_libvirtd(libc::SIGSTOP).is_empty());
    let t = Instant::now();
    let err = mgr.launch(request("r-hung-upload", &img, &client)).await.expect_err("the image never gets there");
    let took = t.elapsed();
    donor.signal_libvirtd(libc::SIGCONT);
    match &err {
        VmError::UploadHung { image, why } => {
            assert_eq!(image, "tiny");
            assert_eq!(why, "uploading image tiny to host donor did not finish within 4s");
        }
        other => panic!("expected a hung upload, got {other:?}"),
    }
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(15), "the launch failed after {took:?}");
    let events = store.events(Some("image_upload_failed"), 10).await.unwrap();
    assert!(!events.is_empty(), "the hung upload is recorded");
    drop(mgr);
}

/// A donor's session daemon answers its first capabilities question from the copy of the
/// system daemon's QEMU capability cache that `Donor::start` put in the user's cache dir, so no
/// donor test pays for a probe of every installed QEMU (~40 s on two cores). The daemon
/// rewrites an entry it finds stale: none is. Donor user `pdkc-1`, sshd in 23800-23819.
#[test]
fn a_donor_answers_from_the_copied_capability_cache_without_probing_qemu() {
    let donor = Donor::start("pdkc-1", 23800..=23819);
    assert!(donor.capability_copies() > 0, "the system daemon has no QEMU capability cache to copy");
    let out = donor.virsh(&["capabilities"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let caps = String::from_utf8_lossy(&out.stdout);
    assert!(caps.contains("<emulator>/usr/bin/qemu-system-x86_64</emulator>"), "{caps}");
    assert!(caps.contains("<domain type='qemu'"), "TCG is offered: {caps}");
    let rewritten = donor.capability_copies_rewritten();
    assert!(rewritten.is_empty(), "the donor's daemon probed again instead of using the copies: {rewritten:?}");
    assert!(!donor.libvirtd_pids().is_empty(), "the answer came from the donor's own session daemon");
}

/// A pty lock (`/run/lock/LCK..*`, what libvirt writes when it hands out a console) whose PID
/// is no live libvirt daemon is removed before a donor starts, so a daemon getting the same pty
/// later is not refused ("Couldn't create lock file ... File exists"); one of the live system
/// daemon, and one being written (no PID yet), are kept. Fake locks named `LCK..pdkc4-*`.
#[test]
fn pty_locks_of_dead_daemons_are_swept_and_those_of_live_ones_kept() {
    use std::os::unix::fs::OpenOptionsExt;
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let system = std::process::Command::new("pgrep").args(["-o", "-x", "libvirtd"]).output().unwrap();
    let live: u32 = String::from_utf8_lossy(&system.stdout).trim().parse().expect("the system libvirtd runs");
    let lock = |name: &str, pid: Option<u32>| {
        let path = Path::new("/run/lock").join(format!("LCK..pdkc4-{name}-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path).unwrap();
        if let Some(pid) = pid {
            // libvirt's format (FHS): the PID in ten columns and a newline.
            std::io::Write::write_all(&mut f, format!("{pid:10}\n").as_bytes()).unwrap();
        }
        path
    };
    let (of_dead, of_live, not_a_daemon, being_made) =
        (lock("dead", Some(dead)), lock("live", Some(live)), lock("test", Some(std::process::id())), lock("new", None));
    let removed = support::donor::sweep_stale_chardev_locks();
    let left = [&of_dead, &of_live, &not_a_daemon, &being_made].map(|p| p.exists());
    for p in [&of_dead, &of_live, &not_a_daemon, &being_made] {
        let _ = std::fs::remove_file(p);
    }
    assert_eq!(left, [false, true, false, true], "dead, live, not a daemon, being made: {removed:?}");
}

/// The bundled guest, its host key learnt from the console: a key of the test's own, on the
/// command line (the image has none; paddock's own `identity = "cmdline"` would pin one).
fn tiny_image(key: &support::guest::TestHostKey) -> Image {
    let out = support::guest::guest();
    let mut img = support::fixtures::image(
        "tiny",
        Arch::X86_64,
        256,
        Boot::Kernel {
            kernel: out.join("vmlinuz"),
            initrd: out.join("initrd.img"),
            cmdline: format!("console=ttyS0 quiet no_timer_check panic=1 {}", key.cmdline),
        },
    );
    img.boot_timeout = Duration::from_secs(240);
    img
}

fn client_key() -> String {
    support::sshd::random_key().public_key().to_openssh().unwrap()
}

fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("pdkr-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn host(name: &str, uri: &str, pool: Option<&str>) -> Host {
    Host {
        name: name.into(),
        uri: uri.into(),
        accelerator: Accelerator::Tcg,
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        capacity: Capacity { max_vms: 1, memory_mib: 2048, vcpus: 2 },
        network: None,
        image_pool: pool.map(String::from),
        limits: Default::default(),
    }
}

fn manager_config(state: &Path, instance: &str, images: Vec<Image>) -> ManagerConfig {
    ManagerConfig {
        instance_id: instance.into(),
        state_dir: state.to_path_buf(),
        ssh_ports: PortRange { first: 24300, last: 24319 },
        launch_retries: 1,
        reconcile_interval: Duration::from_secs(3600),
        readiness: Readiness::SshBanner { poll: Duration::from_millis(200) },
        shutdown_timeout: Duration::from_secs(5),
        host_cooldown: Duration::from_secs(60),
        console_tail_lines: 30,
        clock: paddock::clock::Clock::system(),
        emulation_boot_factor: Default::default(),
        images,
        upload_retry: Duration::from_millis(500),
        priority_aging: Duration::from_secs(60),
        upload_timeout: Duration::from_secs(600),
        libvirt: HostOptions::default(),
    }
}

fn request(run: &str, image: &Image, key: &str) -> LaunchRequest {
    LaunchRequest {
        run_id: run.into(),
        job: None,
        image: image.clone(),
        authorized_keys: vec![key.to_string()],
        ca_key: None,
        progress: None,
        priority: 0,
        avoid_hosts: Vec::new(),
    }
}

/// Destroys this instance's domains on the system host on drop (a failed test leaves nothing there).
struct LocalDomains(String);

impl Drop for LocalDomains {
    fn drop(&mut self) {
        for n in support::virsh::domains_named(&self.0) {
            let _ = support::virsh::virsh(&["destroy", &n]);
            let _ = support::virsh::virsh(&["undefine", &n]);
        }
    }
}

/// Two real hosts: runs spread over both by capacity; the donor's VM boots from volumes uploaded
/// through libvirt storage, with its console read over the connection (the host key is learnt
/// from it, and nothing in its XML names a file of the daemon's machine); with the local host
/// drained the next VM goes to the donor without re-uploading the image; after the manager dies
/// with a VM on the donor, the next start removes its domain and per-VM pool volume there; a
/// held VM on the donor is adopted after a restart with its console read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_spread_over_two_real_hosts_and_a_dead_daemons_leftovers_on_the_donor_are_reaped() {
    let donor = Donor::start("pdkp4", SSHD_PORTS);
    let out = support::guest::guest();
    let host_key = support::guest::test_host_key("tiny");
    let guest_key = host_key.public.clone();
    let client = client_key();
    let dir = open_dir();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = tiny_image(&host_key);
    let instance = format!("pdkr{:04x}feedface", std::process::id() % 0xffff);
    let short = format!("paddock-{}", &instance[..8]);
    let _local = LocalDomains(short.clone());
    let hosts = vec![host("local", "qemu:///system", None), host("donor", &donor.uri, Some(support::donor::POOL))];
    let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let mgr = VmManager::start(manager_config(&state, &instance, vec![img.clone()]), hosts.clone(), store.clone()).await.unwrap();

    // One VM slot per host: two launches at once take one each.
    let (a, b) = tokio::join!(mgr.launch(request("r1", &img, &client)), mgr.launch(request("r2", &img, &client)));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut on: Vec<&str> = vec![&a.host, &b.host];
    on.sort();
    assert_eq!(on, ["donor", "local"]);
    let remote = if a.host == "donor" { &a } else { &b };
    let learnt = remote.host_key_from_console.as_ref().expect("the donor VM's host key, read from its console over libvirt");
    assert_eq!(learnt.to_openssh().unwrap().split_whitespace().nth(1), guest_key.split_whitespace().nth(1));
    let console = std::fs::read_to_string(&remote.console_path).unwrap();
    assert!(console.contains("PADDOCK-READY"), "console copy: {console}");
    let xml = String::from_utf8_lossy(&donor.virsh(&["dumpxml", &remote.name]).stdout).into_owned();
    assert!(!xml.contains(state.to_str().unwrap()) && !xml.contains(out.to_str().unwrap()), "a daemon path in {xml}");
    assert!(xml.contains(donor.pool_dir.to_str().unwrap()), "boots from the donor's pool: {xml}");
    assert!(paddock::vm::readiness::probe_banner(remote.ssh_addr, Duration::from_secs(5)).await, "the donor VM's forwarded SSH answers");
    let volumes = donor.volumes();
    assert_eq!(volumes.iter().filter(|v| v.starts_with("paddock-tiny-")).count(), 2, "kernel and initrd: {volumes:?}");
    let stamps = pool_stamps(&donor);
    mgr.destroy(&a.name).await.unwrap();
    mgr.destroy(&b.name).await.unwrap();

    // Local drained: the next VM runs on the donor, from the volumes already there.
    let drained = Block::Drained { reason: "test".into(), by: "test".into(), at: chrono::Utc::now() };
    mgr.set_block("local", Some(drained)).await.unwrap();
    let c = mgr.launch(request("r3", &img, &client)).await.unwrap();
    assert_eq!(c.host, "donor");
    assert_eq!(pool_stamps(&donor), stamps, "the unchanged image was not sent again");

    // A per-VM volume beside it (what a disk image's overlay or a seed is), then the manager
    // dies without tearing anything down, as a SIGKILLed daemon does.
    let overlay = format!("{}-overlay.qcow2", c.name);
    let made = donor.virsh(&["vol-create-as", support::donor::POOL, &overlay, "1M", "--format", "qcow2"]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    drop(mgr);
    assert!(donor.domains().contains(&c.name));

    let hosts_again = hosts.clone();
    let mgr = VmManager::start(manager_config(&state, &instance, vec![img.clone()]), hosts, store.clone()).await.unwrap();
    let left: Vec<String> = donor.domains().into_iter().filter(|d| d.starts_with(&short)).collect();
    assert!(left.is_empty(), "domains left on the donor: {left:?}");
    let vols = donor.volumes();
    assert!(!vols.contains(&overlay), "the dead VM's volume is left: {vols:?}");
    assert_eq!(vols.iter().filter(|v| v.starts_with("paddock-tiny-")).count(), 2, "image volumes stay: {vols:?}");
    assert!(donor.qemu_pids().is_empty(), "a QEMU still runs on the donor");

    // A held VM on the donor outlives a restart: it is adopted and its console, a pty read
    // over the connection, is read again into the same copy (appended): a line the guest
    // prints on its console after the restart reaches the copy.
    let key = support::sshd::random_key();
    let login = key.public_key().to_openssh().unwrap();
    let drained = Block::Drained { reason: "test".into(), by: "test".into(), at: chrono::Utc::now() };
    mgr.set_block("local", Some(drained)).await.unwrap();
    let d = mgr.launch(request("r4", &img, &login)).await.unwrap();
    assert_eq!(d.host, "donor");
    mgr.hold(&d.name, chrono::Utc::now() + chrono::Duration::hours(1)).await.unwrap();
    mgr.release(&d.name).await.unwrap();
    drop(mgr);
    let mgr = VmManager::start(manager_config(&state, &instance, vec![img.clone()]), hosts_again, store.clone()).await.unwrap();
    let snap = mgr.snapshot().await.unwrap();
    assert_eq!(snap.vms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), vec![d.name.as_str()], "the held VM is adopted");
    let before = std::fs::read_to_string(&d.console_path).unwrap();
    assert!(before.contains("PADDOCK-READY"), "the boot's console copy is kept: {before}");
    let target = paddock::ssh::Target { addr: d.ssh_addr, user: "root".into() };
    let check = paddock::ssh::HostKeyCheck::exact(ssh_key::PublicKey::from_openssh(&guest_key).unwrap());
    let auth = paddock::ssh::Auth::Key(std::sync::Arc::new(key));
    let session = paddock::ssh::connect(&target, &auth, &check, &Default::default()).await.unwrap();
    let (_, err, status) = session.exec_collect("echo pdkg2-after-restart >/dev/console", Vec::new()).await.unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&err));
    support::wait_until("the line printed after the restart in the console copy", Duration::from_secs(30), async || {
        std::fs::read_to_string(&d.console_path).unwrap_or_default().contains("pdkg2-after-restart")
    })
    .await;
    let after = std::fs::read_to_string(&d.console_path).unwrap();
    assert!(after.starts_with(&before), "the copy from before the restart was not kept");
    mgr.destroy(&d.name).await.unwrap();
    assert!(!donor.domains().contains(&d.name));
    drop(mgr);
}

/// Name → modification time of every file in the donor's pool.
fn pool_stamps(donor: &Donor) -> Vec<(String, std::time::SystemTime)> {
    donor
        .pool_files()
        .into_iter()
        .map(|f| {
            let t = std::fs::metadata(donor.pool_dir.join(&f)).unwrap().modified().unwrap();
            (f, t)
        })
        .collect()
}
