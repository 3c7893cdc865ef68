//! Donated hosts: `host check` against qemu:///system and test:/// hosts that
//! lack things; drain and resume, availability windows with hard_stop, and
//! quarantine after failed launches, through the real VmManager.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::TimeZone;
use paddock::clock::Clock;
use paddock::config::{Accelerator, Arch, Boot, Capacity, DonorLimits, Host, Image, PortRange, Window};
use paddock::hosts::Block;
use paddock::hosts::check::{self, Level, Verdict};
use paddock::store::Store;
use paddock::vm::{LaunchRequest, ManagerConfig, Readiness, VmManager};
use support::fixtures::image;
use support::wait_until;

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    format!("test://{}", p.display())
}

fn host(name: &str, uri: &str, memory_mib: u64) -> Host {
    Host {
        name: name.into(),
        uri: uri.into(),
        accelerator: Accelerator::Tcg,
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        capacity: Capacity { max_vms: 4, memory_mib, vcpus: 4 },
        network: None,
        image_pool: None,
        limits: DonorLimits::default(),
    }
}

fn kernel_files(dir: &Path) -> Boot {
    let (k, i) = (dir.join("vmlinuz"), dir.join("initrd.img"));
    std::fs::write(&k, b"not really a kernel").unwrap();
    std::fs::write(&i, b"not really an initramfs").unwrap();
    Boot::Kernel { kernel: k, initrd: i, cmdline: String::new() }
}

fn missing_kernel() -> Boot {
    Boot::Kernel { kernel: "/nonexistent/vmlinuz".into(), initrd: "/nonexistent/initrd".into(), cmdline: String::new() }
}

fn config(state_dir: &Path, instance: &str, clock: Clock) -> ManagerConfig {
    ManagerConfig {
        instance_id: instance.into(),
        state_dir: state_dir.to_path_buf(),
        ssh_ports: PortRange { first: 23600, last: 23699 },
        launch_retries: 1,
        reconcile_interval: Duration::from_secs(3600),
        readiness: Readiness::DomainRunning,
        shutdown_timeout: Duration::from_secs(5),
        host_cooldown: Duration::from_millis(1),
        console_tail_lines: 20,
        clock,
        emulation_boot_factor: Default::default(),
        images: Vec::new(),
        upload_retry: Duration::from_secs(30),
        priority_aging: Duration::from_secs(60),
        upload_timeout: Duration::from_secs(600),
        libvirt: Default::default(),
    }
}

fn request(run: &str, job: Option<&str>, image: &Image) -> LaunchRequest {
    LaunchRequest {
        run_id: run.into(),
        job: job.map(str::to_string),
        image: image.clone(),
        authorized_keys: vec![],
        ca_key: None,
        priority: 0,
        avoid_hosts: Vec::new(),
        progress: None,
    }
}

fn find<'a>(lines: &'a [check::CheckLine], topic: &str, level: Level) -> &'a check::CheckLine {
    lines
        .iter()
        .find(|l| l.topic == topic && l.level == level)
        .unwrap_or_else(|| panic!("no {level:?} line about {topic}:\n{}", check::render("?", lines)))
}

#[test]
fn host_check_on_qemu_system() {
    let dir = tempfile::tempdir().unwrap();
    let img = image("tiny", Arch::X86_64, 512, kernel_files(dir.path()));
    let h = host("local", "qemu:///system", 2048);
    let probe = paddock::libvirt::probe("qemu:///system").unwrap();
    assert!(probe.libvirt_version.starts_with("11."), "{}", probe.libvirt_version);
    let files = check::local_files(std::slice::from_ref(&img));
    let lines = check::assess("qemu:///system", Ok(&probe), Some(&h), std::slice::from_ref(&img), &files);
    let text = check::render("qemu:///system", &lines);
    println!("{text}");
    assert!(find(&lines, "connection", Level::Ok).text.contains("libvirt 11."), "{text}");
    assert!(find(&lines, "connection", Level::Ok).text.contains("hypervisor 10."), "{text}");
    assert!(find(&lines, "emulators", Level::Ok).text.contains("x86_64 (qemu"), "{text}");
    assert!(find(&lines, "accelerator", Level::Ok).text.starts_with("`qemu` as configured"), "{text}");
    assert_eq!(find(&lines, "passt", Level::Ok).text, "the passt interface backend is available");
    let image_lines: Vec<_> = lines.iter().filter(|l| l.topic == "image tiny").collect();
    assert_eq!(image_lines.len(), 2, "{text}");
    assert!(image_lines.iter().all(|l| l.level == Level::Ok && l.text.contains("read from")), "{text}");
    assert_ne!(check::verdict(&lines), Verdict::NotReady, "{text}");

    // Asking for KVM where it is not offered is a failure with a fix.
    let mut kvm = h.clone();
    kvm.accelerator = Accelerator::Kvm;
    let lines = check::assess("qemu:///system", Ok(&probe), Some(&kvm), &[], &files);
    if !probe.emulators.iter().any(|e| e.domain_type == "kvm") {
        let l = find(&lines, "accelerator", Level::Fail);
        assert!(l.fix.as_deref().unwrap().contains("accelerator = \"tcg\""));
        assert_eq!(check::verdict(&lines), Verdict::NotReady);
    }
}

#[test]
fn host_check_on_test_hosts_that_lack_things() {
    let dir = tempfile::tempdir().unwrap();
    let uri = fixture("host-small.xml");
    let probe = paddock::libvirt::probe(&uri).unwrap();
    assert_eq!(probe.facts.memory_mib, 2048);
    let h = host("small", &uri, 4096);
    let good = image("good", Arch::X86_64, 512, kernel_files(dir.path()));
    let arm = image("arm", Arch::Aarch64, 512, kernel_files(dir.path()));
    let huge = image("huge", Arch::X86_64, 8192, kernel_files(dir.path()));
    let missing = image("missing", Arch::X86_64, 512, missing_kernel());
    let images = vec![good.clone(), arm.clone(), huge.clone(), missing.clone()];
    let files = check::local_files(&images);
    let lines = check::assess(&uri, Ok(&probe), Some(&h), &images, &files);
    let text = check::render(&uri, &lines);
    println!("{text}");
    assert_eq!(find(&lines, "capacity", Level::Warn).text, "memory_mib = 4096 but the host has 2048 MiB");
    assert_eq!(find(&lines, "image arm", Level::Warn).text, "aarch64 guests cannot run here with `test`; it will not be placed here");
    assert_eq!(find(&lines, "image huge", Level::Warn).text, "needs 8192 MiB and 1 vCPUs; the host has room for 4096 MiB and 4 vCPUs");
    assert_eq!(find(&lines, "image missing", Level::Fail).text, "kernel /nonexistent/vmlinuz is missing on this machine");
    assert!(lines.iter().any(|l| l.topic == "image good" && l.level == Level::Ok));
    assert_eq!(check::verdict(&lines), Verdict::NotReady);
    assert!(text.ends_with("verdict: not ready (2 failure(s), 6 warning(s))\n"), "{text}");

    // Only an arch the host cannot run: nothing at all can go there.
    let lines = check::assess(&uri, Ok(&probe), Some(&h), std::slice::from_ref(&arm), &check::local_files(std::slice::from_ref(&arm)));
    assert_eq!(find(&lines, "images", Level::Fail).text, "none of the fleet's images can run on this host");

    // The donor's allow-list hides images from the check as from placement.
    let mut only_good = h.clone();
    only_good.capacity.memory_mib = 1024;
    only_good.limits.images = Some(vec!["good".into()]);
    let lines = check::assess(&uri, Ok(&probe), Some(&only_good), &images, &files);
    assert!(!lines.iter().any(|l| l.topic == "image missing"));
    // The test driver says nothing of passt: a warning, not a failure.
    assert_eq!(find(&lines, "passt", Level::Warn).text, "libvirt does not say whether the passt backend is available");
    assert_eq!(check::verdict(&lines), Verdict::ReadyWithWarnings, "{}", check::render(&uri, &lines));

    // A host that cannot be reached.
    let bad = "test:///nonexistent/host.xml";
    let err = paddock::libvirt::probe(bad).map_err(|e| paddock::libvirt::error_chain(&e));
    let lines = check::assess(bad, err.as_ref().map_err(Clone::clone), None, &[], &files);
    assert!(find(&lines, "connection", Level::Fail).text.starts_with("cannot connect to test:///nonexistent/host.xml: connecting to"));
    assert_eq!(check::verdict(&lines), Verdict::NotReady);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_host_gets_no_new_vms_until_resumed_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let st = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let hosts = vec![host("small", &fixture("host-small.xml"), 1024), host("big", &fixture("host-big.xml"), 4096)];
    let mgr = VmManager::start(config(dir.path(), "dddd0001", Clock::system()), hosts.clone(), st.clone()).await.unwrap();
    let img = image("tiny", Arch::X86_64, 512, missing_kernel());

    let first = mgr.launch(request("r1", None, &img)).await.unwrap();
    assert_eq!(first.host, "big", "most free memory first");
    let drained = Block::Drained { reason: "disk swap".into(), by: "alice".into(), at: chrono::Utc::now() };
    st.set_host_block("big", Some(drained.clone()), None).await.unwrap();
    mgr.set_block("big", Some(drained)).await.unwrap();
    let second = mgr.launch(request("r2", None, &img)).await.unwrap();
    assert_eq!(second.host, "small", "a drained host takes no new VM");
    // Running work on the drained host is left alone.
    assert!(mgr.snapshot().await.unwrap().vms.iter().any(|v| v.name == first.name));
    let snap = mgr.snapshot().await.unwrap();
    let big = snap.hosts.iter().find(|h| h.name == "big").unwrap();
    assert_eq!(big.blocked.as_ref().map(|b| b.reason()), Some("disk swap"));
    for vm in [&first, &second] {
        mgr.destroy(&vm.name).await.unwrap();
    }
    drop(mgr);

    // A new manager on the same store still keeps the host drained.
    let mgr = VmManager::start(config(dir.path(), "dddd0001", Clock::system()), hosts, st.clone()).await.unwrap();
    let third = mgr.launch(request("r3", None, &img)).await.unwrap();
    assert_eq!(third.host, "small");
    st.set_host_block("big", None, None).await.unwrap();
    mgr.set_block("big", None).await.unwrap();
    let fourth = mgr.launch(request("r4", None, &img)).await.unwrap();
    assert_eq!(fourth.host, "big", "a resumed host takes VMs again");
    for vm in [&third, &fourth] {
        mgr.destroy(&vm.name).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_hold_launches_until_they_open_and_hard_stop_ends_vms_when_they_close() {
    let dir = tempfile::tempdir().unwrap();
    let st = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let mut donor = host("donor", &fixture("host-medium.xml"), 2048);
    donor.limits.windows = vec![Window::parse("Mon-Fri 20:00-07:00").unwrap()];
    donor.limits.timezone = chrono_tz::Europe::Berlin;
    donor.limits.hard_stop = true;
    // Tuesday 19:59:59 in Berlin (18:59:59 UTC): one second before the window opens.
    let clock = Clock::starting_at(chrono::Utc.with_ymd_and_hms(2026, 11, 24, 18, 59, 59).unwrap());
    let mgr = VmManager::start(config(dir.path(), "dddd0002", clock), vec![donor.clone()], st.clone()).await.unwrap();
    let img = image("tiny", Arch::X86_64, 512, missing_kernel());
    let m = mgr.clone();
    let i = img.clone();
    let launch = tokio::spawn(async move { m.launch(request("w1", None, &i)).await });
    wait_until("the launch to queue", Duration::from_secs(5), || async { mgr.snapshot().await.unwrap().queued == 1 }).await;
    assert!(!mgr.snapshot().await.unwrap().hosts[0].window_open);
    let vm = tokio::time::timeout(Duration::from_secs(10), launch).await.unwrap().unwrap().unwrap();
    assert!(clock.now() >= chrono::Utc.with_ymd_and_hms(2026, 11, 24, 19, 0, 0).unwrap(), "placed before the window opened");
    assert_eq!(vm.host, "donor");
    drop(mgr);

    // Wednesday 06:59:59 in Berlin: the window closes in a second and the donor wants its machine back.
    let clock = Clock::starting_at(chrono::Utc.with_ymd_and_hms(2026, 11, 25, 5, 59, 59).unwrap());
    let mgr = VmManager::start(config(dir.path(), "dddd0003", clock), vec![donor], st.clone()).await.unwrap();
    let vm = mgr.launch(request("w2", None, &img)).await.unwrap();
    wait_until("the hard stop", Duration::from_secs(10), || async { mgr.snapshot().await.unwrap().vms.is_empty() }).await;
    assert!(clock.now() >= chrono::Utc.with_ymd_and_hms(2026, 11, 25, 6, 0, 0).unwrap());
    let stops = st.events(Some("window_hard_stop"), 10).await.unwrap();
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0].subject, vm.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_lists_keep_jobs_and_images_off_a_host_and_a_missed_job_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let st = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let mut picky = host("picky", &fixture("host-big.xml"), 4096);
    picky.limits.jobs = Some(vec!["nightly".into()]);
    let mut open = host("open", &fixture("host-small.xml"), 1024);
    open.limits.jobs = Some(vec!["weekly".into()]);
    let mgr = VmManager::start(config(dir.path(), "dddd0004", Clock::system()), vec![picky, open], st.clone()).await.unwrap();
    let img = image("tiny", Arch::X86_64, 512, missing_kernel());
    let other = mgr.launch(request("a1", Some("weekly"), &img)).await.unwrap();
    assert_eq!(other.host, "open", "the donor of `picky` allows only `nightly`");
    let nightly = mgr.launch(request("a2", Some("nightly"), &img)).await.unwrap();
    assert_eq!(nightly.host, "picky");
    mgr.destroy(&nightly.name).await.unwrap();

    // The host meant for `nightly` is drained: the run waits, and that is reported once.
    let b = Block::Drained { reason: "maintenance".into(), by: "alice".into(), at: chrono::Utc::now() };
    mgr.set_block("picky", Some(b)).await.unwrap();
    let m = mgr.clone();
    let i = img.clone();
    let waiting = tokio::spawn(async move { m.launch(request("a3", Some("nightly"), &i)).await });
    wait_until("the missed-job event", Duration::from_secs(5), || async {
        !st.events(Some("host_missed_job"), 10).await.unwrap().is_empty()
    })
    .await;
    let ev = st.events(Some("host_missed_job"), 10).await.unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].subject, "picky");
    assert_eq!(ev[0].detail, "job nightly (run a3): drained: maintenance");
    mgr.set_block("picky", None).await.unwrap();
    let a3 = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap().unwrap();
    assert_eq!(a3.host, "picky");
    for vm in [&other, &a3] {
        mgr.destroy(&vm.name).await.unwrap();
    }
}

/// Launches that fail on a real host (qemu cannot open the kernel) quarantine
/// it after `quarantine_after` in a row; the notify hook hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_launches_quarantine_a_host_and_run_the_notify_hook() {
    let dir = tempfile::tempdir().unwrap();
    let st = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let note: PathBuf = dir.path().join("notified");
    let mut h = host("flaky", "qemu:///system", 2048);
    h.limits.quarantine_after = 2;
    h.limits.notify_command = Some(format!("echo \"$PADDOCK_EVENT $PADDOCK_HOST\" >> {}", note.display()));
    let mgr = VmManager::start(config(dir.path(), "dddd0005", Clock::system()), vec![h], st.clone()).await.unwrap();
    let img = image("tiny", Arch::X86_64, 128, missing_kernel());
    for run in ["q1", "q2"] {
        let err = mgr.launch(request(run, None, &img)).await.unwrap_err();
        assert!(err.to_string().contains("failed after 1 attempt"), "{err}");
    }
    let snap = mgr.snapshot().await.unwrap();
    let blocked = snap.hosts[0].blocked.clone().expect("quarantined");
    assert_eq!(blocked.kind(), "quarantined");
    assert!(blocked.reason().starts_with("2 launches in a row failed; last: "), "{}", blocked.reason());
    assert_eq!(st.host_blocks().await.unwrap().len(), 1, "the quarantine is persisted");
    assert_eq!(st.events(Some("host_quarantined"), 10).await.unwrap().len(), 1);
    let health = st.host_health("flaky").await.unwrap();
    assert_eq!((health.launches, health.failures, health.consecutive_failures), (2, 2, 2));
    wait_until("the notify hook", Duration::from_secs(5), || async {
        std::fs::read_to_string(&note).is_ok_and(|s| s.contains("quarantined flaky"))
    })
    .await;
    // A quarantined host takes nothing until an admin resumes it.
    let m = mgr.clone();
    let i = img.clone();
    let waiting = tokio::spawn(async move { m.launch(request("q3", None, &i)).await });
    wait_until("the launch to queue", Duration::from_secs(5), || async { mgr.snapshot().await.unwrap().queued == 1 }).await;
    mgr.set_block("flaky", None).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), waiting).await.unwrap().unwrap().unwrap_err();
    assert!(err.to_string().contains("failed after 1 attempt"), "{err}");
    wait_until("the failed VMs to be removed", Duration::from_secs(10), || async { mgr.snapshot().await.unwrap().vms.is_empty() }).await;
}

/// An image file goes into a directory pool on qemu:///system over a libvirt
/// stream, is verified by reading it back, is not re-sent when unchanged, and
/// a changed file replaces the old version.
#[test]
fn image_upload_through_a_libvirt_pool_is_checksummed_and_replaces_old_versions() {
    use paddock::hosts::images::{ImageFile, sha256_file, volume_name, volume_prefix};
    use paddock::libvirt::storage::ensure_volume;
    let dir = tempfile::tempdir().unwrap();
    let pool_dir = dir.path().join("pool");
    std::fs::create_dir(&pool_dir).unwrap();
    let pool = format!("paddock-test-{}", std::process::id());
    let define = |args: &[&str]| {
        let out = std::process::Command::new("virsh").arg("-c").arg("qemu:///system").args(args).output().unwrap();
        assert!(out.status.success(), "virsh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    define(&["pool-create-as", &pool, "dir", "--target", pool_dir.to_str().unwrap()]);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("virsh").args(["-c", "qemu:///system", "pool-destroy", &self.0]).output();
        }
    }
    let _cleanup = Cleanup(pool.clone());

    let file = dir.path().join("initrd.img");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let f = ImageFile { image: "tiny".into(), role: "initrd", path: file.clone() };
    let sha = sha256_file(&file).unwrap();
    let name = volume_name(&f, &sha);
    let up = ensure_volume("qemu:///system", &pool, &name, &volume_prefix(&f), &file, &sha).unwrap();
    assert!(up.sent);
    assert_eq!(std::fs::read(&up.path).unwrap(), data, "the volume holds the file");
    let again = ensure_volume("qemu:///system", &pool, &name, &volume_prefix(&f), &file, &sha).unwrap();
    assert!(!again.sent, "an unchanged image is not re-sent");

    // The image changes: a new volume, the old one removed.
    std::fs::write(&file, b"a newer initramfs").unwrap();
    let sha2 = sha256_file(&file).unwrap();
    let name2 = volume_name(&f, &sha2);
    let up2 = ensure_volume("qemu:///system", &pool, &name2, &volume_prefix(&f), &file, &sha2).unwrap();
    assert!(up2.sent);
    assert_eq!(up2.removed, vec![name.clone()]);
    assert!(!Path::new(&up.path).exists());
    // host check now sees the current version as present.
    let probe = paddock::libvirt::probe("qemu:///system").unwrap();
    assert!(probe.volumes.iter().any(|v| v.name == name2 && v.pool == pool));

    // A wrong checksum is refused and leaves nothing behind.
    let bad = ensure_volume("qemu:///system", &pool, "paddock-tiny-initrd-bad", "paddock-tiny-initrd-bad", &file, "00").unwrap_err();
    assert!(bad.to_string().starts_with("volume paddock-tiny-initrd-bad has sha256 "), "{bad}");
    assert!(!pool_dir.join("paddock-tiny-initrd-bad").exists());
}

/// A volume already in a pool is read back once: its checksum is then remembered in the state
/// dir for the size and times the host reports, so the next put (the next daemon start) does
/// not read it again. A touch of the volume on the host reads it again (found the same: not
/// re-sent); a same-size write in place with its mtime set back still moves its ctime, so it
/// is read again, found changed and sent again.
#[test]
fn a_verified_volume_is_not_read_back_again_until_it_changes_on_the_host() {
    use paddock::checksums::Checksums;
    use paddock::hosts::images::{ImageFile, volume_name};
    use paddock::libvirt::storage::{put_volume, put_volume_with};
    use std::os::unix::fs::FileExt;
    let dir = tempfile::Builder::new().prefix("pdkc5-").tempdir().unwrap();
    let pool_dir = dir.path().join("pool");
    std::fs::create_dir(&pool_dir).unwrap();
    let pool = format!("pdkc5-vol-{}", std::process::id());
    let out = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "pool-create-as", &pool, "dir", "--target"])
        .arg(&pool_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "pool-create-as: {}", String::from_utf8_lossy(&out.stderr));
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("virsh").args(["-c", "qemu:///system", "pool-destroy", &self.0]).output();
        }
    }
    let _cleanup = Cleanup(pool.clone());

    let file = dir.path().join("disk.img");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 241) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let state = dir.path().join("state");
    let known = Checksums::in_state_dir(&state);
    let sha = known.file(&file).unwrap().sha256;
    let name = volume_name(&ImageFile { image: "pdkc5".into(), role: "disk", path: file.clone() }, &sha);
    let put = |known: &Checksums| put_volume_with("qemu:///system", &pool, &name, &file, &sha, known).unwrap();
    let up = put(&known);
    assert!(up.sent && up.read_back, "{up:?}");
    // The next daemon start: a new cache on the same state dir.
    let next = put(&Checksums::in_state_dir(&state));
    assert!(!next.sent && !next.read_back, "an unchanged, verified volume was read again: {next:?}");
    let uncached = put_volume("qemu:///system", &pool, &name, &file, &sha).unwrap();
    assert!(!uncached.sent && uncached.read_back, "{uncached:?}");

    // Touched on the host: read again, the same, not sent; then known again.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options().write(true).open(&up.path).unwrap().set_modified(later).unwrap();
    let touched = put(&known);
    assert!(touched.read_back && !touched.sent, "{touched:?}");
    assert!(!put(&known).read_back);

    // Changed on the host, same size, mtime set back: read again, found changed, sent again.
    let mtime = std::fs::metadata(&up.path).unwrap().modified().unwrap();
    let vol = std::fs::File::options().write(true).open(&up.path).unwrap();
    vol.write_all_at(&[data[1000] ^ 0xff], 1000).unwrap();
    vol.set_modified(mtime).unwrap();
    drop(vol);
    let fixed = put(&known);
    assert!(fixed.read_back && fixed.sent, "a volume changed on the host was not checked: {fixed:?}");
    assert_eq!(std::fs::read(&fixed.path).unwrap(), data, "the volume holds the file again");
    assert!(!put(&known).read_back);
}
