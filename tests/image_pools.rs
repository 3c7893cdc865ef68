//! Images on hosts with an `image_pool`, on the real `qemu:///system` with a
//! directory pool in a temporary directory: the VmManager uploads the bundled
//! guest's kernel and initramfs into the pool over libvirt, a launch waits
//! (without failing) while the pool cannot take them, is placed only after the
//! upload, and boots from the volumes' paths; a changed initramfs is re-sent
//! and its old version removed once the VM using it is gone. A disk image's
//! overlay is a qcow2 volume in the pool backed by the uploaded base. Per-VM
//! cloud-init seeds (a volume on a pool host, a file beside the overlay on one
//! without) survive a restart with the held VM that owns them, and go with it.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use paddock::config::{Accelerator, Arch, Boot, Capacity, Host, HostKeyPolicy, Image, Os, PortRange, Shell};
use paddock::store::Store;
use paddock::vm::{LaunchRequest, ManagerConfig, Readiness, VmManager};
use support::guest::guest;
use support::virsh::virsh;
use support::wait_until;

/// A transient directory pool; destroyed (and so forgotten by libvirt) on drop.
struct Pool {
    name: String,
    dir: PathBuf,
}

impl Pool {
    fn name_for(tag: &str) -> String {
        format!("paddock-test-{tag}-{}", std::process::id())
    }

    fn create(name: &str, dir: &Path) -> Pool {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = virsh(&["pool-create-as", name, "dir", "--target", dir.to_str().unwrap()]);
        assert!(out.status.success(), "pool-create-as: {}", String::from_utf8_lossy(&out.stderr));
        Pool { name: name.into(), dir: dir.into() }
    }

    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(&self.dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = virsh(&["pool-destroy", &self.name]);
    }
}

/// Destroys and undefines domains of an instance on drop (a failed test
/// leaves nothing); domain names carry the instance id's first 8 characters.
struct Domains(String);

impl Drop for Domains {
    fn drop(&mut self) {
        let out = virsh(&["list", "--all", "--name"]);
        for n in String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|n| n.starts_with(&self.0)) {
            let _ = virsh(&["destroy", n]);
            let _ = virsh(&["undefine", n]);
        }
    }
}

/// A directory qemu (an unprivileged user) can traverse.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn pooled_host(pool: &str) -> Host {
    Host {
        name: "pooled".into(),
        uri: "qemu:///system".into(),
        accelerator: Accelerator::Tcg,
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        capacity: Capacity { max_vms: 2, memory_mib: 2048, vcpus: 2 },
        network: None,
        image_pool: Some(pool.into()),
        limits: Default::default(),
    }
}

fn config(state: &Path, instance: &str, ports: (u16, u16), readiness: Readiness, images: Vec<Image>) -> ManagerConfig {
    ManagerConfig {
        instance_id: instance.into(),
        state_dir: state.to_path_buf(),
        ssh_ports: PortRange { first: ports.0, last: ports.1 },
        launch_retries: 1,
        reconcile_interval: Duration::from_secs(3600),
        readiness,
        shutdown_timeout: Duration::from_secs(5),
        host_cooldown: Duration::from_secs(60),
        console_tail_lines: 30,
        clock: paddock::clock::Clock::system(),
        emulation_boot_factor: Default::default(),
        images,
        upload_retry: Duration::from_millis(300),
        priority_aging: Duration::from_secs(60),
        upload_timeout: Duration::from_secs(600),
        libvirt: Default::default(),
    }
}

fn image(name: &str, boot: Boot, host_key: HostKeyPolicy) -> Image {
    Image {
        name: name.into(),
        os: Os::Linux,
        arch: Arch::X86_64,
        boot,
        memory_mib: 512,
        vcpus: 1,
        user: "root".into(),
        shell: Shell::Sh,
        host_key,
        trusts_fleet_ca: false,
        boot_timeout: Duration::from_secs(180),
        nic_model: None,
        tpm: false,
        smc_key: None,
        firmware: None,
        network: paddock::config::GuestNetwork::Outbound,
        platform: name.into(),
        start: paddock::config::Start::Cold,
        min_ready: 0,
        guest_agent: false,
    }
}

fn request(run: &str, image: &Image, key: &str) -> LaunchRequest {
    LaunchRequest {
        run_id: run.into(),
        job: None,
        image: image.clone(),
        authorized_keys: vec![key.trim().to_string()],
        ca_key: None,
        priority: 0,
        avoid_hosts: Vec::new(),
        progress: None,
    }
}

fn domain_xml(name: &str) -> String {
    String::from_utf8_lossy(&virsh(&["dumpxml", name]).stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_images_are_uploaded_into_the_pool_before_runs_are_placed_and_replaced_when_they_change() {
    let out = guest();
    let dir = open_dir();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Copies of the guest's files, so the test can change one.
    let files = dir.path().join("image");
    std::fs::create_dir_all(&files).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::copy(out.join(f), files.join(f)).unwrap();
    }
    let img = image(
        "tiny-pooled",
        Boot::Kernel {
            kernel: files.join("vmlinuz"),
            initrd: files.join("initrd.img"),
            cmdline: "console=ttyS0 quiet no_timer_check panic=1".into(),
        },
        HostKeyPolicy::PerVm,
    );
    let key = support::sshd::random_key().public_key().to_openssh().unwrap();
    let pool_name = Pool::name_for("k");
    let instance = format!("pool{:05}", std::process::id() % 100000);
    let _domains = Domains(format!("paddock-{}", &instance[..8]));

    // The pool does not exist yet: uploads fail, and the launch waits rather than fails.
    let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let cfg = config(&state, &instance, (23400, 23409), Readiness::SshBanner { poll: Duration::from_millis(100) }, vec![img.clone()]);
    let mgr = VmManager::start(cfg, vec![pooled_host(&pool_name)], store.clone()).await.unwrap();
    let launching = tokio::spawn({
        let (mgr, req) = (mgr.clone(), request("r1", &img, &key));
        async move { mgr.launch(req).await }
    });
    wait_until("a failed upload", Duration::from_secs(20), || async {
        store.events(Some("image_upload_failed"), 10).await.unwrap().len() >= 2
    })
    .await;
    let snap = mgr.snapshot().await.unwrap();
    assert_eq!((snap.queued, snap.vms.len()), (1, 0), "the launch waits for the image");
    assert!(!launching.is_finished());

    let pool = Pool::create(&pool_name, &dir.path().join("pool"));
    let vm1 = tokio::time::timeout(Duration::from_secs(240), launching).await.unwrap().unwrap().unwrap_or_else(|e| panic!("{e}: {e:?}"));
    let uploaded = store.events(Some("image_uploaded"), 10).await.unwrap();
    assert_eq!(uploaded.len(), 1, "{uploaded:?}");
    let row = store.vm(&vm1.name).await.unwrap().unwrap();
    assert!(row.created_at >= uploaded[0].at, "the VM was placed ({}) before the upload finished ({})", row.created_at, uploaded[0].at);
    assert!((23400..=23409).contains(&vm1.ssh_addr.port()));

    // Both files are in the pool, recorded in the store, and the domain boots from them.
    let volumes = store.host_volumes("pooled").await.unwrap();
    assert_eq!(volumes.iter().map(|v| v.role.as_str()).collect::<Vec<_>>(), ["initrd", "kernel"]);
    let xml = domain_xml(&vm1.name);
    for v in &volumes {
        assert!(Path::new(&v.path).starts_with(&pool.dir), "{}", v.path);
        assert_eq!(
            std::fs::read(&v.path).unwrap(),
            std::fs::read(files.join(if v.role == "kernel" { "vmlinuz" } else { "initrd.img" })).unwrap()
        );
        assert!(xml.contains(&format!(">{}<", v.path)), "the domain does not boot from {}: {xml}", v.path);
    }
    assert!(!xml.contains(files.to_str().unwrap()), "the domain still names the local files: {xml}");
    let old_initrd = volumes.iter().find(|v| v.role == "initrd").unwrap().clone();
    let kernel = volumes.iter().find(|v| v.role == "kernel").unwrap().clone();

    // The initramfs changes (zero padding after the cpio archive is allowed):
    // the new version is sent while VM 1 still uses the old one, which stays.
    let mut data = std::fs::read(files.join("initrd.img")).unwrap();
    data.extend_from_slice(&[0u8; 4096]);
    std::fs::write(files.join("initrd.img"), &data).unwrap();
    wait_until("the changed initramfs to be uploaded", Duration::from_secs(60), || async {
        store.events(Some("image_uploaded"), 10).await.unwrap().len() == 2
    })
    .await;
    let second = &store.events(Some("image_uploaded"), 10).await.unwrap()[0];
    assert!(!second.detail.contains(&kernel.volume), "the unchanged kernel was re-sent: {}", second.detail);
    let new_initrd = store.host_volumes("pooled").await.unwrap().into_iter().find(|v| v.role == "initrd").unwrap();
    assert_ne!(new_initrd.volume, old_initrd.volume);
    assert!(Path::new(&old_initrd.path).exists(), "the old version went while VM 1 uses it");
    assert_eq!(pool.files(), {
        let mut v = vec![kernel.volume.clone(), old_initrd.volume.clone(), new_initrd.volume.clone()];
        v.sort();
        v
    });

    // A new run boots from the new version.
    let vm2 = mgr.launch(request("r2", &img, &key)).await.unwrap_or_else(|e| panic!("{e}: {e:?}"));
    assert!(domain_xml(&vm2.name).contains(&format!(">{}<", new_initrd.path)));
    assert!(paddock::vm::readiness::probe_banner(vm2.ssh_addr, Duration::from_secs(5)).await);

    // VM 1 goes: nothing uses the old initramfs any more, so it is removed.
    mgr.destroy(&vm1.name).await.unwrap();
    wait_until("the old initramfs to be removed", Duration::from_secs(20), || async { !Path::new(&old_initrd.path).exists() }).await;
    assert!(Path::new(&new_initrd.path).exists() && Path::new(&kernel.path).exists());
    mgr.destroy(&vm2.name).await.unwrap();
    let mut left = vec![kernel.volume.clone(), new_initrd.volume.clone()];
    left.sort();
    assert_eq!(pool.files(), left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_overlays_on_pool_hosts_are_qcow2_volumes_backed_by_the_uploaded_base() {
    let dir = open_dir();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A blank qcow2 base: the guest never boots an OS, but the domain runs.
    let base = dir.path().join("base.qcow2");
    let st = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("64M").status().unwrap();
    assert!(st.success());
    let img = image("disk-pooled", Boot::Disk { base: base.clone() }, HostKeyPolicy::Console);
    let pool = Pool::create(&Pool::name_for("d"), &dir.path().join("pool"));
    let instance = format!("pold{:05}", std::process::id() % 100000);
    let _domains = Domains(format!("paddock-{}", &instance[..8]));
    let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let cfg = config(&state, &instance, (23410, 23419), Readiness::DomainRunning, Vec::new());
    let mgr = VmManager::start(cfg, vec![pooled_host(&pool.name)], store.clone()).await.unwrap();

    // A stale version of this image's disk, and a volume of an image whose
    // name merely extends this one's prefix (`disk-pooled-disk`).
    let stale = "paddock-disk-pooled-disk-0000000000000000";
    let other = "paddock-disk-pooled-disk-kernel-0123456789abcdef";
    for v in [stale, other] {
        let out = virsh(&["vol-create-as", &pool.name, v, "1M"]);
        assert!(out.status.success(), "vol-create-as: {}", String::from_utf8_lossy(&out.stderr));
    }
    let vm = mgr.launch(request("d1", &img, "ssh-ed25519 AAAA test")).await.unwrap_or_else(|e| panic!("{e}: {e:?}"));
    let base_vol = store.host_volumes("pooled").await.unwrap().into_iter().find(|v| v.role == "disk").unwrap();
    let overlay = pool.dir.join(format!("{}-overlay.qcow2", vm.name));
    assert!(overlay.exists(), "no overlay volume in the pool: {:?}", pool.files());
    let info = Command::new("qemu-img").args(["info", "-U", "--output=json"]).arg(&overlay).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["backing-filename"], base_vol.path.as_str());
    assert_eq!(info["virtual-size"], 64 * 1024 * 1024);
    assert!(domain_xml(&vm.name).contains(overlay.to_str().unwrap()));
    assert!(!state.join("overlays").exists(), "a local overlay was made for a pool host");

    wait_until("the stale version to be removed", Duration::from_secs(20), || async { !pool.dir.join(stale).exists() }).await;
    assert!(pool.dir.join(other).exists(), "another image's volume was removed");

    mgr.destroy(&vm.name).await.unwrap();
    assert_eq!(pool.files(), vec![base_vol.volume.clone(), other.to_string()], "the overlay volume is removed with the VM");
}

/// A daemon that dies on a pool host leaves overlay and seed volumes there: the next start
/// removes the orphan's, and an adopted held VM's (a per-VM identity: its seed is a volume
/// too) stay while it lives and go with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_on_a_pool_host_orphaned_overlay_and_seed_volumes_are_reaped_and_adopted_ones_removed_with_their_vm() {
    let dir = open_dir();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = dir.path().join("base.qcow2");
    let st = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("64M").status().unwrap();
    assert!(st.success());
    // identity = "cloud-init": each VM gets a seed, here uploaded as a pool volume.
    let img = image("pdkl-disk", Boot::Disk { base: base.clone() }, HostKeyPolicy::PerVm);
    let pool = Pool::create(&format!("pdkl-crash-{}", std::process::id()), &dir.path().join("pool"));
    let instance = format!("pdkl{:04}", std::process::id() % 10000);
    let _domains = Domains(format!("paddock-{}", &instance[..8]));
    let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let cfg = || config(&state, &instance, (24950, 24959), Readiness::DomainRunning, Vec::new());

    let mgr = VmManager::start(cfg(), vec![pooled_host(&pool.name)], store.clone()).await.unwrap();
    let orphan = mgr.launch(request("r-orphan", &img, "ssh-ed25519 AAAA test")).await.unwrap_or_else(|e| panic!("{e}: {e:?}"));
    let held = mgr.launch(request("r-held", &img, "ssh-ed25519 AAAA test")).await.unwrap_or_else(|e| panic!("{e}: {e:?}"));
    mgr.hold(&held.name, chrono::Utc::now() + chrono::Duration::hours(1)).await.unwrap();
    mgr.release(&held.name).await.unwrap();
    let overlay = |vm: &str| format!("{vm}-overlay.qcow2");
    let seed = |vm: &str| format!("{vm}-seed.iso");
    let files = pool.files();
    for vm in [&orphan.name, &held.name] {
        assert!(files.contains(&overlay(vm)) && files.contains(&seed(vm)), "{files:?}");
    }
    assert!(!state.join("overlays").join(seed(&held.name)).exists(), "the local copy of an uploaded seed stays");
    // The crash: the manager goes without tearing anything down.
    drop(mgr);

    let mgr = VmManager::start(cfg(), vec![pooled_host(&pool.name)], store.clone()).await.unwrap();
    let base_vol = store.host_volumes("pooled").await.unwrap().into_iter().find(|v| v.role == "disk").unwrap().volume;
    // The start-up pass reaped the orphan's domain, overlay and seed volumes; the held VM was adopted.
    let mut kept = vec![base_vol.clone(), overlay(&held.name), seed(&held.name)];
    kept.sort();
    assert_eq!(pool.files(), kept);
    let snap = mgr.snapshot().await.unwrap();
    assert_eq!(snap.vms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), vec![held.name.as_str()]);
    let events = store.events(Some("reaped_overlay"), 10).await.unwrap();
    assert!(events.iter().any(|e| e.subject == orphan.name), "{events:?}");
    assert!(store.vm_host_key(&held.name).await.unwrap().is_some(), "the adopted VM's pinned key was dropped");

    // The adopted VM's end removes its overlay and seed volumes too, and keeps the base.
    mgr.destroy(&held.name).await.unwrap();
    assert_eq!(pool.files(), vec![base_vol]);
}

/// The same on a host without a pool: a seeded VM held across a restart is adopted with its
/// seed file (and overlay) kept while it lives; the orphan's are reaped; the adopted VM's
/// end removes its seed and overlay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_vm_held_across_a_restart_is_adopted_with_its_seed_which_goes_with_it() {
    let dir = open_dir();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = dir.path().join("base.qcow2");
    let st = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("64M").status().unwrap();
    assert!(st.success());
    let img = image("pdkg2-disk", Boot::Disk { base: base.clone() }, HostKeyPolicy::PerVm);
    let instance = format!("pdkg{:04}", std::process::id() % 10000);
    let _domains = Domains(format!("paddock-{}", &instance[..8]));
    let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let cfg = || config(&state, &instance, (26030, 26039), Readiness::DomainRunning, Vec::new());
    let host = || {
        let mut h = pooled_host("unused");
        h.name = "local".into();
        h.image_pool = None;
        h
    };
    let overlays = state.join("overlays");
    let files = || {
        let mut v: Vec<String> = std::fs::read_dir(&overlays)
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };

    let mgr = VmManager::start(cfg(), vec![host()], store.clone()).await.unwrap();
    let orphan = mgr.launch(request("r-orphan", &img, "ssh-ed25519 AAAA test")).await.unwrap_or_else(|e| panic!("{e}: {e:?}"));
    let held = mgr.launch(request("r-held", &img, "ssh-ed25519 AAAA test")).await.unwrap_or_else(|e| panic!("{e}: {e:?}"));
    mgr.hold(&held.name, chrono::Utc::now() + chrono::Duration::hours(1)).await.unwrap();
    mgr.release(&held.name).await.unwrap();
    let seed = |vm: &str| format!("{vm}-seed.iso");
    let overlay = |vm: &str| format!("{vm}.qcow2");
    let mut all = vec![overlay(&orphan.name), seed(&orphan.name), overlay(&held.name), seed(&held.name)];
    all.sort();
    assert_eq!(files(), all);
    let xml = String::from_utf8_lossy(&virsh(&["dumpxml", &held.name]).stdout).into_owned();
    assert!(xml.contains(overlays.join(seed(&held.name)).to_str().unwrap()), "the seed is not attached: {xml}");
    let key = store.vm_host_key(&held.name).await.unwrap().expect("the held VM's pinned key");
    drop(mgr);

    let mgr = VmManager::start(cfg(), vec![host()], store.clone()).await.unwrap();
    let mut kept = vec![overlay(&held.name), seed(&held.name)];
    kept.sort();
    assert_eq!(files(), kept, "the orphan's seed and overlay are reaped, the adopted VM's kept");
    assert!(!support::virsh::domains().contains(&orphan.name), "the orphan's domain is left");
    let snap = mgr.snapshot().await.unwrap();
    assert_eq!(snap.vms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), vec![held.name.as_str()]);
    assert_eq!(store.vm_host_key(&held.name).await.unwrap().as_deref(), Some(key.as_str()), "the adopted VM keeps its pinned key");

    mgr.destroy(&held.name).await.unwrap();
    assert_eq!(files(), Vec::<String>::new(), "the adopted VM's seed or overlay is left");
    assert!(!support::virsh::domains().contains(&held.name));
}
