//! Snapshot tests of every OS profile's domain XML, plus the kernel command line hand-over.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::TimeZone;

use super::*;
use crate::config::{Capacity, HostKeyPolicy, Shell};

pub(crate) fn host(accelerator: Accelerator) -> Host {
    Host {
        name: "local".into(),
        uri: "qemu:///system".into(),
        accelerator,
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        capacity: Capacity { max_vms: 4, memory_mib: 4096, vcpus: 4 },
        network: None,
        image_pool: None,
        limits: Default::default(),
    }
}

pub(crate) fn image(name: &str, os: Os, arch: Arch, boot: Boot) -> Image {
    Image {
        name: name.into(),
        os,
        arch,
        boot,
        memory_mib: 512,
        vcpus: 1,
        user: "root".into(),
        shell: Shell::Sh,
        host_key: HostKeyPolicy::Console,
        trusts_fleet_ca: true,
        boot_timeout: Duration::from_secs(120),
        nic_model: None,
        tpm: false,
        smc_key: None,
        firmware: None,
        network: crate::config::GuestNetwork::Outbound,
        platform: name.into(),
        start: crate::config::Start::Cold,
        min_ready: 0,
        guest_agent: false,
    }
}

pub(crate) fn kernel_boot(arch: &str) -> Boot {
    Boot::Kernel {
        kernel: PathBuf::from(format!("/images/{arch}/vmlinuz")),
        initrd: PathBuf::from(format!("/images/{arch}/initrd.img")),
        cmdline: "console=ttyS0 quiet".into(),
    }
}

pub(crate) fn disk_boot() -> Boot {
    Boot::Disk { base: "/images/base.qcow2".into() }
}

/// One image per profile the snapshot and `define` tests cover.
pub(crate) fn profiles() -> Vec<Image> {
    let mut win = image("win11", Os::Windows, Arch::X86_64, disk_boot());
    win.tpm = true;
    win.shell = Shell::Powershell;
    let mut mac = image("sonoma", Os::Macos, Arch::X86_64, disk_boot());
    mac.smc_key = Some("ourhardworkbythesewordsguardedpleasedontsteal(c)AppleComputerInc".into());
    let mut s390 = image("tiny-s390x", Os::Linux, Arch::S390x, kernel_boot("s390x"));
    if let Boot::Kernel { cmdline, .. } = &mut s390.boot {
        *cmdline = "console=ttysclp0".into();
    }
    // The warm-capable bundled guest (images/out/x86_64-warm): agent channel and <genid/>.
    let mut warm = image("tiny-x86_64-warm", Os::Linux, Arch::X86_64, kernel_boot("x86_64"));
    warm.guest_agent = true;
    vec![
        image("tiny-x86_64", Os::Linux, Arch::X86_64, kernel_boot("x86_64")),
        image("debian-disk", Os::Linux, Arch::X86_64, disk_boot()),
        win,
        seeded("debian-12", Os::Linux, Shell::Sh),
        seeded("win11-cloudbase", Os::Windows, Shell::Powershell),
        mac,
        image("tiny-aarch64", Os::Linux, Arch::Aarch64, kernel_boot("aarch64")),
        s390,
        image("tiny-ppc64le", Os::Linux, Arch::Ppc64le, kernel_boot("ppc64le")),
        image("tiny-riscv64", Os::Linux, Arch::Riscv64, kernel_boot("riscv64")),
        warm,
    ]
}

/// A disk image that takes its identity from a cloud-init (or cloudbase-init) seed.
fn seeded(name: &str, os: Os, shell: Shell) -> Image {
    let mut i = image(name, os, Arch::X86_64, disk_boot());
    i.shell = shell;
    i.host_key = HostKeyPolicy::PerVm;
    i
}

pub(crate) fn mark() -> Mark {
    Mark { run_id: "run-0001".into(), instance: "0123abcd".into(), created_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() }
}

pub(crate) fn render_profile(image: &Image, host: &Host, name: &str, dir: &Path) -> String {
    render_with_console(image, host, name, dir, ConsoleXml::Pty)
}

pub(crate) fn render_with_console(image: &Image, host: &Host, name: &str, dir: &Path, console: ConsoleXml<'_>) -> String {
    let disk = match &image.boot {
        Boot::Disk { .. } => Some(DiskSpec { path: dir.join(format!("overlays/{name}.qcow2")), format: "qcow2".into() }),
        Boot::Kernel { .. } => None,
    };
    let keys = vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA/XDHqQ4zGgrAo2cLdmgWGXXbEazbp/V20Cd7HR/aap paddock".to_string()];
    let mark = mark();
    let seed = (image.host_key == HostKeyPolicy::PerVm).then(|| crate::vm::seed::path_for(dir, name));
    let handover = match &seed {
        Some(p) => Handover::Seed(p),
        None => Handover::None,
    };
    render_with(
        &DomainSpec {
            name,
            image,
            host,
            domain_type: host.accelerator.domain_type(),
            mark: &mark,
            ssh_port: 22200,
            disk,
            console,
            authorized_keys: &keys,
            ca_key: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ0d2Z0aGlzaXNhZmFrZWNha2V5Zm9ydGVzdHNvbmx5 ca"),
        },
        &handover,
    )
}

#[test]
fn every_profile_snapshot() {
    let tcg = host(Accelerator::Tcg);
    for image in profiles() {
        let xml = render_profile(&image, &tcg, &format!("paddock-0123abcd-{}", image.name), Path::new("/state"));
        insta::assert_snapshot!(image.name.clone(), xml);
    }
}

/// Remote first: the XML of a VM on a pool host names no file of the daemon's machine. Its
/// console is a `pty` read over the connection, its disks are paths the pool reported.
#[test]
fn no_profile_names_a_console_file() {
    for image in profiles() {
        let xml = render_profile(&image, &host(Accelerator::Tcg), "paddock-0123abcd-pty", Path::new("/daemon-state"));
        assert!(!xml.contains("consoles") && !xml.contains(".log"), "{xml}");
        let ptys = xml.matches("<serial type=\"pty\">").count() + xml.matches("<console type=\"pty\">").count();
        assert_eq!(ptys, 1, "{xml}");
        assert!(!xml.contains("type=\"file\">\n      <target"), "{xml}");
    }
}

/// A host without a pool shares the daemon's filesystem: its console may be a file QEMU writes,
/// appending, so that `vm::console_cap` can cut it in place.
#[test]
fn a_local_host_may_write_the_console_to_a_file() {
    let image = &profiles()[0];
    let xml =
        render_with_console(image, &host(Accelerator::Tcg), "paddock-0123abcd-f", Path::new("/s"), ConsoleXml::File(Path::new("/s/c.log")));
    assert!(xml.contains("<serial type=\"file\">") && xml.contains("<source path=\"/s/c.log\" append=\"on\"/>"), "{xml}");
}

#[test]
fn kvm_host_passes_the_cpu_through() {
    let kvm = host(Accelerator::Kvm);
    let xml = render_profile(&profiles()[0], &kvm, "paddock-0123abcd-kvm", Path::new("/state"));
    assert!(xml.starts_with("<domain type=\"kvm\">"), "{xml}");
    assert!(xml.contains("<cpu mode=\"host-passthrough\" check=\"none\"/>"), "{xml}");
}

#[test]
fn lab_network_replaces_user_networking() {
    let mut h = host(Accelerator::Tcg);
    h.network = Some("lab".into());
    let xml = render_profile(&profiles()[0], &h, "paddock-0123abcd-net", Path::new("/state"));
    assert!(xml.contains("<interface type=\"network\">"), "{xml}");
    assert!(xml.contains("<source network=\"lab\"/>"), "{xml}");
    assert!(!xml.contains("portForward"), "{xml}");
}

#[test]
fn cmdline_hands_over_keys_in_base64() {
    let line = kernel_cmdline("console=ttyS0", &["ssh-ed25519 AAAA k".into()], Some("ssh-ed25519 BBBB ca"));
    assert_eq!(line, "console=ttyS0 paddock.authkey=c3NoLWVkMjU1MTkgQUFBQSBr paddock.ca=c3NoLWVkMjU1MTkgQkJCQiBjYQ==");
    assert_eq!(kernel_cmdline("quiet", &[], None), "quiet");
    assert_eq!(base64(b"a"), "YQ==");
    assert_eq!(base64(b"ab"), "YWI=");
    assert_eq!(base64(b""), "");
}

#[test]
fn cmdline_identity_appends_the_vm_key_and_principal() {
    let image = image("tiny-x86_64", Os::Linux, Arch::X86_64, kernel_boot("x86_64"));
    let tcg = host(Accelerator::Tcg);
    let (mark, console) = (mark(), PathBuf::from("/state/consoles/x.log"));
    let spec = DomainSpec {
        name: "paddock-0123abcd-x",
        image: &image,
        host: &tcg,
        domain_type: "qemu",
        mark: &mark,
        ssh_port: 22200,
        disk: None,
        console: ConsoleXml::File(&console),
        authorized_keys: &[],
        ca_key: None,
    };
    let xml =
        render_with(&spec, &Handover::Cmdline { host_key_pem: "PEM", host_pub: "ssh-ed25519 AAAA x", principal: "paddock-0123abcd-x" });
    assert!(
        xml.contains("<cmdline>console=ttyS0 quiet paddock.hostkey=UEVN paddock.hostpub=c3NoLWVkMjU1MTkgQUFBQSB4 paddock.principal=paddock-0123abcd-x</cmdline>"),
        "{xml}"
    );
    assert!(!xml.contains("genid"), "{xml}");
}

#[test]
fn metadata_round_trips_through_the_rendered_xml() {
    let xml = render_profile(&profiles()[0], &host(Accelerator::Tcg), "paddock-0123abcd-x", Path::new("/state"));
    let start = xml.find("<paddock:vm").unwrap();
    let end = xml.find("</paddock:vm>").unwrap() + "</paddock:vm>".len();
    assert_eq!(parse_metadata(&xml[start..end]), Some(mark()));
    // libvirt hands the element back with its own prefix choice.
    let relabelled = r#"<p:vm xmlns:p="https://paddock.dev/xmlns/vm/1"><p:run>r</p:run><p:instance>i</p:instance><p:created>2026-01-02T03:04:05Z</p:created></p:vm>"#;
    assert_eq!(parse_metadata(relabelled).unwrap().instance, "i");
    assert_eq!(parse_metadata("<other/>"), None);
}

/// Every profile's XML passes libvirt's schema and is accepted by `define` on
/// the real `qemu:///system` (then undefined again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_validates_and_defines_on_qemu_system() {
    let dir = tempfile::tempdir().unwrap();
    let conn = crate::libvirt::HostHandle::spawn("local", "qemu:///system");
    let status = conn.wait_connected().await;
    let crate::libvirt::HostStatus::Up(facts) = status else { panic!("qemu:///system is not reachable: {status:?}") };
    let tcg = host(Accelerator::Tcg);
    let mut defined = Vec::new();
    let mut failures = Vec::new();
    for image in profiles() {
        assert!(facts.supports(image.arch.as_str(), "qemu"), "no emulator for {} here", image.arch);
        let name = format!("paddock-test{}-{}", std::process::id(), image.name);
        let xml = render_profile(&image, &tcg, &name, dir.path());
        let file = dir.path().join(format!("{name}.xml"));
        std::fs::write(&file, &xml).unwrap();
        let out = std::process::Command::new("virt-xml-validate").arg(&file).arg("domain").output().unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{}: virt-xml-validate: {}{}",
                image.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        match conn.define(&name, xml).await {
            Ok(()) => defined.push(name),
            Err(e) => failures.push(format!("{}: {}", image.name, crate::libvirt::error_chain(&e))),
        }
    }
    for name in &defined {
        conn.undefine(name).await.unwrap();
        assert_eq!(conn.is_active(name).await.unwrap(), None, "{name} is still defined");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
