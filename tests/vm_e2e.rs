//! End to end on the real `qemu:///system` (TCG): the bundled guest booted
//! through the VmManager, its SSH banner seen on the 127.0.0.1 forward, then
//! torn down with nothing left; plus the boot-to-SSH time of the same guest
//! started by hand with `virsh create` for comparison.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use paddock::config::{Accelerator, Arch, Boot, Capacity, Host, HostKeyPolicy, Image, Os, PortRange, Shell};
use paddock::store::Store;
use paddock::vm::{LaunchRequest, ManagerConfig, Readiness, VmManager};
use support::free_port;
use support::guest::guest;
use support::virsh::domains as virsh_names;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_guest_boots_answers_ssh_and_leaves_nothing() {
    let out = guest();
    // qemu runs as an unprivileged user: the state directory must be traversable.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();

    let image = Image {
        name: "tiny-x86_64".into(),
        os: Os::Linux,
        arch: Arch::X86_64,
        boot: Boot::Kernel {
            kernel: out.join("vmlinuz"),
            initrd: out.join("initrd.img"),
            cmdline: "console=ttyS0 quiet no_timer_check panic=1".into(),
        },
        memory_mib: 512,
        vcpus: 1,
        user: "root".into(),
        shell: Shell::Sh,
        // identity = "cmdline": paddock makes this VM's host key and passes it to /init.
        host_key: HostKeyPolicy::PerVm,
        trusts_fleet_ca: false,
        boot_timeout: Duration::from_secs(180),
        nic_model: None,
        tpm: false,
        smc_key: None,
        firmware: None,
        network: paddock::config::GuestNetwork::Outbound,
        platform: "tiny-x86_64".into(),
        start: paddock::config::Start::Cold,
        min_ready: 0,
        guest_agent: false,
    };
    let host = Host {
        name: "local".into(),
        uri: "qemu:///system".into(),
        accelerator: Accelerator::Tcg,
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        capacity: Capacity { max_vms: 2, memory_mib: 2048, vcpus: 2 },
        network: None,
        image_pool: None,
        limits: Default::default(),
    };
    let port = free_port();
    let instance = format!("e2e{:05}", std::process::id() % 100000);
    let cfg = ManagerConfig {
        instance_id: instance.clone(),
        state_dir: state.clone(),
        ssh_ports: PortRange { first: port, last: port },
        launch_retries: 1,
        reconcile_interval: Duration::from_secs(3600),
        readiness: Readiness::SshBanner { poll: Duration::from_millis(100) },
        shutdown_timeout: Duration::from_secs(10),
        host_cooldown: Duration::from_secs(60),
        console_tail_lines: 30,
        clock: paddock::clock::Clock::system(),
        emulation_boot_factor: Default::default(),
        images: Vec::new(),
        upload_retry: Duration::from_secs(30),
        priority_aging: Duration::from_secs(60),
        upload_timeout: Duration::from_secs(600),
        libvirt: Default::default(),
    };
    let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let mgr = VmManager::start(cfg, vec![host], store.clone()).await.unwrap();
    let key = support::sshd::random_key().public_key().to_openssh().unwrap();

    let t = Instant::now();
    let vm = mgr
        .launch(LaunchRequest {
            run_id: "e2e".into(),
            job: None,
            image: image.clone(),
            authorized_keys: vec![key.trim().to_string()],
            ca_key: None,
            priority: 0,
            avoid_hosts: Vec::new(),
            progress: None,
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {e:?}"));
    let paddock_boot = t.elapsed();
    assert_eq!(vm.ssh_addr, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    assert!(paddock::vm::readiness::probe_banner(vm.ssh_addr, Duration::from_secs(5)).await);
    assert!(virsh_names().contains(&vm.name));
    assert_eq!(store.vm(&vm.name).await.unwrap().unwrap().state, "ready");
    assert!(vm.console_path.exists());

    mgr.destroy(&vm.name).await.unwrap();
    assert!(!virsh_names().iter().any(|n| n.starts_with(&format!("paddock-{instance}"))), "domain left: {:?}", virsh_names());
    assert!(!vm.console_path.exists(), "console log left");
    let overlays = state.join("overlays");
    assert!(!overlays.exists() || std::fs::read_dir(&overlays).unwrap().next().is_none(), "overlay left");
    assert!(store.vms().await.unwrap().is_empty());

    // The same guest by hand: `virsh create` and a banner poll loop (with a host key of
    // its own on the command line: the image has none).
    let by_hand = format!("paddock-{instance}-byhand");
    let hand_key = support::guest::test_host_key(&by_hand);
    let console = state.join("byhand.log");
    let xml = format!(
        "<domain type='qemu'><name>{by_hand}</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{k}</kernel><initrd>{i}</initrd><cmdline>console=ttyS0 quiet {hk}</cmdline></os>\
         <devices><interface type='user'><backend type='passt'/><model type='virtio'/>\
         <portForward proto='tcp' address='127.0.0.1'><range start='{port}' to='22'/></portForward></interface>\
         <serial type='file'><source path='{c}'/></serial><rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\
         <memballoon model='none'/></devices></domain>",
        k = out.join("vmlinuz").display(),
        i = out.join("initrd.img").display(),
        c = console.display(),
        hk = hand_key.cmdline,
    );
    let xml_path = state.join("byhand.xml");
    std::fs::write(&xml_path, xml).unwrap();
    let t = Instant::now();
    let st = Command::new("virsh").args(["-c", "qemu:///system", "create"]).arg(&xml_path).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut up = false;
    while Instant::now() < deadline {
        if paddock::vm::readiness::probe_banner(vm.ssh_addr, Duration::from_secs(2)).await {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hand_boot = t.elapsed();
    let _ = Command::new("virsh").args(["-c", "qemu:///system", "destroy", &by_hand]).output();
    assert!(up, "the hand-started guest never answered");
    eprintln!(
        "boot to SSH banner: paddock {:.2?} (launch call, includes define) vs virsh create {:.2?}: ratio {:.2}",
        paddock_boot,
        hand_boot,
        paddock_boot.as_secs_f64() / hand_boot.as_secs_f64()
    );
    assert!(!virsh_names().contains(&by_hand));
}
