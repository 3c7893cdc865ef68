//! libvirt domain XML for the subset paddock writes, as typed serde structs, and
//! the OS profiles (linux, windows, macos, other architectures) that fill them.
//!
//! Only serialisation lives here: paddock never needs to read a whole domain
//! back, only its `<paddock:vm>` metadata (see `parse_metadata`).

use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::config::{Accelerator, Arch, Boot, GuestNetwork, Host, Image, Os};

/// The XML namespace of paddock's ownership mark in `<metadata>`.
pub const PADDOCK_NS: &str = "https://paddock.dev/xmlns/vm/1";
const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// Everything about one VM that is not in the image or host config.
#[derive(Debug, Clone)]
pub struct DomainSpec<'a> {
    pub name: &'a str,
    pub image: &'a Image,
    pub host: &'a Host,
    /// `qemu`, `kvm` (from the host's accelerator) or `test` (see `HostFacts::domain_type`).
    pub domain_type: &'static str,
    pub mark: &'a Mark,
    /// The host port forwarded to the guest's port 22 (user-mode networking only).
    pub ssh_port: u16,
    /// The writable disk the guest boots from: an overlay over the image's base.
    /// `None` for kernel+initrd images.
    pub disk: Option<DiskSpec>,
    /// Where the guest's serial console goes.
    pub console: ConsoleXml<'a>,
    /// Lines for the guest's `authorized_keys`, handed over on the kernel command line.
    pub authorized_keys: &'a [String],
    /// The fleet CA's public key line, handed over on the kernel command line.
    pub ca_key: Option<&'a str>,
}

/// A VM's serial console in its XML.
#[derive(Debug, Clone, Copy)]
pub enum ConsoleXml<'a> {
    /// A `pty` with no path, read over the libvirt connection (`HostHandle::start_with_console`):
    /// for hosts that are (or may be) another machine, whose XML names no file of the daemon's.
    Pty,
    /// A file on the host that the daemon reads directly: only for a host that shares the
    /// daemon's filesystem (no `image_pool`). QEMU writes it without back-pressure, so a chatty
    /// console never slows the guest.
    File(&'a std::path::Path),
}

#[derive(Debug, Clone)]
pub struct DiskSpec {
    pub path: PathBuf,
    /// `qcow2` for overlays.
    pub format: String,
}

/// paddock's ownership mark, written into every domain's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub run_id: String,
    pub instance: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
#[serde(rename = "domain")]
struct Domain {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@xmlns:qemu", skip_serializing_if = "Option::is_none")]
    xmlns_qemu: Option<&'static str>,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    genid: Option<Empty>,
    metadata: Metadata,
    memory: Memory,
    vcpu: u32,
    os: OsXml,
    #[serde(skip_serializing_if = "Option::is_none")]
    features: Option<Features>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<Cpu>,
    clock: Clock,
    on_poweroff: &'static str,
    on_reboot: &'static str,
    on_crash: &'static str,
    devices: Devices,
    #[serde(rename = "qemu:commandline", skip_serializing_if = "Option::is_none")]
    qemu_commandline: Option<QemuCommandline>,
}

#[derive(Debug, Serialize)]
struct Metadata {
    #[serde(rename = "paddock:vm")]
    vm: PaddockVm,
}

#[derive(Debug, Serialize)]
struct PaddockVm {
    #[serde(rename = "@xmlns:paddock")]
    xmlns: &'static str,
    #[serde(rename = "paddock:run")]
    run: String,
    #[serde(rename = "paddock:instance")]
    instance: String,
    #[serde(rename = "paddock:created")]
    created: String,
}

#[derive(Debug, Serialize)]
struct Memory {
    #[serde(rename = "@unit")]
    unit: &'static str,
    #[serde(rename = "$text")]
    value: u64,
}

#[derive(Debug, Serialize)]
struct OsXml {
    #[serde(rename = "@firmware", skip_serializing_if = "Option::is_none")]
    firmware: Option<&'static str>,
    #[serde(rename = "type")]
    os_type: OsType,
    #[serde(skip_serializing_if = "Option::is_none")]
    loader: Option<Loader>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initrd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmdline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot: Option<BootDev>,
}

#[derive(Debug, Serialize)]
struct OsType {
    #[serde(rename = "@arch")]
    arch: &'static str,
    #[serde(rename = "@machine")]
    machine: &'static str,
    #[serde(rename = "$text")]
    value: &'static str,
}

#[derive(Debug, Serialize)]
struct Loader {
    #[serde(rename = "@readonly")]
    readonly: &'static str,
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "$text")]
    path: String,
}

#[derive(Debug, Serialize)]
struct BootDev {
    #[serde(rename = "@dev")]
    dev: &'static str,
}

/// An element with no content, e.g. `<acpi/>`.
#[derive(Debug, Serialize)]
struct Empty {}

#[derive(Debug, Serialize)]
struct Features {
    #[serde(skip_serializing_if = "Option::is_none")]
    acpi: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    apic: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hyperv: Option<HyperV>,
    #[serde(skip_serializing_if = "Option::is_none")]
    smm: Option<OnOff>,
}

#[derive(Debug, Serialize)]
struct HyperV {
    #[serde(rename = "@mode")]
    mode: &'static str,
    relaxed: OnOff,
    vapic: OnOff,
    spinlocks: Spinlocks,
    vpindex: OnOff,
    synic: OnOff,
    stimer: OnOff,
}

#[derive(Debug, Serialize)]
struct OnOff {
    #[serde(rename = "@state")]
    state: &'static str,
}

const ON: OnOff = OnOff { state: "on" };

#[derive(Debug, Serialize)]
struct Spinlocks {
    #[serde(rename = "@state")]
    state: &'static str,
    #[serde(rename = "@retries")]
    retries: u32,
}

#[derive(Debug, Serialize)]
struct Cpu {
    #[serde(rename = "@mode")]
    mode: &'static str,
    #[serde(rename = "@check", skip_serializing_if = "Option::is_none")]
    check: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<CpuModel>,
}

#[derive(Debug, Serialize)]
struct CpuModel {
    #[serde(rename = "@fallback")]
    fallback: &'static str,
    #[serde(rename = "$text")]
    name: &'static str,
}

#[derive(Debug, Serialize)]
struct Clock {
    #[serde(rename = "@offset")]
    offset: &'static str,
    #[serde(rename = "timer", skip_serializing_if = "Vec::is_empty")]
    timers: Vec<Timer>,
}

#[derive(Debug, Serialize)]
struct Timer {
    #[serde(rename = "@name")]
    name: &'static str,
    #[serde(rename = "@present", skip_serializing_if = "Option::is_none")]
    present: Option<&'static str>,
    #[serde(rename = "@tickpolicy", skip_serializing_if = "Option::is_none")]
    tickpolicy: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct Devices {
    #[serde(rename = "disk", skip_serializing_if = "Vec::is_empty")]
    disks: Vec<Disk>,
    #[serde(rename = "controller", skip_serializing_if = "Vec::is_empty")]
    controllers: Vec<Controller>,
    interface: Interface,
    #[serde(rename = "serial", skip_serializing_if = "Vec::is_empty")]
    serials: Vec<CharDev>,
    #[serde(rename = "console", skip_serializing_if = "Vec::is_empty")]
    consoles: Vec<CharDev>,
    #[serde(rename = "channel", skip_serializing_if = "Option::is_none")]
    agent: Option<Channel>,
    #[serde(rename = "input", skip_serializing_if = "Vec::is_empty")]
    inputs: Vec<Input>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tpm: Option<Tpm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rng: Option<Rng>,
    memballoon: Model,
}

#[derive(Debug, Serialize)]
struct Disk {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@device")]
    device: &'static str,
    driver: DiskDriver,
    source: DiskSource,
    target: DiskTarget,
    #[serde(skip_serializing_if = "Option::is_none")]
    readonly: Option<Empty>,
}

/// The QEMU guest agent's virtio-serial port (libvirt picks the socket path).
#[derive(Debug, Serialize)]
struct Channel {
    #[serde(rename = "@type")]
    kind: &'static str,
    target: ChannelTarget,
}

#[derive(Debug, Serialize)]
struct ChannelTarget {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@name")]
    name: &'static str,
}

#[derive(Debug, Serialize)]
struct DiskDriver {
    #[serde(rename = "@name")]
    name: &'static str,
    #[serde(rename = "@type")]
    format: String,
}

#[derive(Debug, Serialize)]
struct DiskSource {
    #[serde(rename = "@file")]
    file: String,
}

#[derive(Debug, Serialize)]
struct DiskTarget {
    #[serde(rename = "@dev")]
    dev: &'static str,
    #[serde(rename = "@bus")]
    bus: &'static str,
}

#[derive(Debug, Serialize)]
struct Controller {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@model")]
    model: &'static str,
}

#[derive(Debug, Serialize)]
struct Interface {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<NetSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<Backend>,
    model: Model,
    #[serde(rename = "portForward", skip_serializing_if = "Option::is_none")]
    port_forward: Option<PortForward>,
    /// `ua-paddock-<mode>` on passt interfaces: libvirt puts the alias into passt's `--socket`
    /// path, which is how the host's passt fence (`scripts/passt-fence.sh`) knows a paddock
    /// guest and its network mode; libvirt 11.3 has no other way to hand passt options.
    #[serde(skip_serializing_if = "Option::is_none")]
    alias: Option<Alias>,
}

#[derive(Debug, Serialize)]
struct Alias {
    #[serde(rename = "@name")]
    name: &'static str,
}

#[derive(Debug, Serialize)]
struct NetSource {
    #[serde(rename = "@network")]
    network: String,
}

#[derive(Debug, Serialize)]
struct Backend {
    #[serde(rename = "@type")]
    kind: &'static str,
}

#[derive(Debug, Serialize)]
struct Model {
    #[serde(rename = "@type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(rename = "@model", skip_serializing_if = "Option::is_none")]
    model: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct PortForward {
    #[serde(rename = "@proto")]
    proto: &'static str,
    #[serde(rename = "@address")]
    address: String,
    range: PortRangeXml,
}

#[derive(Debug, Serialize)]
struct PortRangeXml {
    #[serde(rename = "@start")]
    start: u16,
    #[serde(rename = "@to")]
    to: u16,
}

/// A serial port or console: a `pty` (read over the libvirt connection) or a file.
#[derive(Debug, Serialize)]
struct CharDev {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<CharSource>,
    target: CharTarget,
}

#[derive(Debug, Serialize)]
struct CharSource {
    #[serde(rename = "@path")]
    path: String,
    #[serde(rename = "@append")]
    append: &'static str,
}

#[derive(Debug, Serialize)]
struct CharTarget {
    #[serde(rename = "@type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(rename = "@port")]
    port: u32,
}

#[derive(Debug, Serialize)]
struct Input {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@bus")]
    bus: &'static str,
}

#[derive(Debug, Serialize)]
struct Tpm {
    #[serde(rename = "@model")]
    model: &'static str,
    backend: TpmBackend,
}

#[derive(Debug, Serialize)]
struct TpmBackend {
    #[serde(rename = "@type")]
    kind: &'static str,
    #[serde(rename = "@version")]
    version: &'static str,
}

#[derive(Debug, Serialize)]
struct Rng {
    #[serde(rename = "@model")]
    model: &'static str,
    backend: RngBackend,
}

#[derive(Debug, Serialize)]
struct RngBackend {
    #[serde(rename = "@model")]
    model: &'static str,
    #[serde(rename = "$text")]
    path: &'static str,
}

#[derive(Debug, Serialize)]
struct QemuCommandline {
    #[serde(rename = "qemu:arg")]
    args: Vec<QemuArg>,
}

#[derive(Debug, Serialize)]
struct QemuArg {
    #[serde(rename = "@value")]
    value: String,
}

/// The machine type libvirt should emulate for `arch`.
fn machine(arch: Arch, os: Os) -> &'static str {
    match (arch, os) {
        // Windows and macOS want PCIe, AHCI and a modern chipset.
        (Arch::X86_64, Os::Windows | Os::Macos) => "q35",
        (Arch::X86_64, Os::Linux) => "pc",
        (Arch::Aarch64, _) => "virt",
        (Arch::S390x, _) => "s390-ccw-virtio",
        (Arch::Ppc64le, _) => "pseries",
        (Arch::Riscv64, _) => "virt",
    }
}

/// Renders the domain XML for `spec` following its image's OS profile.
pub fn render(spec: &DomainSpec<'_>) -> String {
    render_with(spec, &Handover::None)
}

/// How a VM's own identity (`vm::seed::Identity`) reaches the guest.
#[derive(Debug, Clone)]
pub enum Handover<'a> {
    /// The image has none of its own.
    None,
    /// Its cloud-init NoCloud seed, attached read-only. A seeded VM also gets the
    /// guest-agent channel and a VM generation ID (`<genid/>`), which warm starts build on
    /// (as does an image with `guest_agent = true`).
    Seed(&'a Path),
    /// The bundled guest: `paddock.hostkey=` / `paddock.hostpub=` / `paddock.principal=`
    /// on the kernel command line (base64, like the other keys).
    Cmdline { host_key_pem: &'a str, host_pub: &'a str, principal: &'a str },
}

/// As [`render`], with the VM's identity handed over as `handover` says.
pub fn render_with(spec: &DomainSpec<'_>, handover: &Handover<'_>) -> String {
    let seed = match handover {
        Handover::Seed(p) => Some(*p),
        Handover::None | Handover::Cmdline { .. } => None,
    };
    let mut domain = build(spec, seed);
    if let (Handover::Cmdline { host_key_pem, host_pub, principal }, Some(line)) = (handover, domain.os.cmdline.as_mut()) {
        line.push_str(&identity_cmdline(host_key_pem, host_pub, principal));
    }
    let mut out = String::new();
    let mut ser = quick_xml::se::Serializer::new(&mut out);
    ser.indent(' ', 2);
    // The structs above contain nothing serde could refuse (no maps, no bare sequences).
    domain.serialize(ser).expect("domain XML structs always serialise");
    out.push('\n');
    out
}

fn build(spec: &DomainSpec<'_>, seed: Option<&Path>) -> Domain {
    let image = spec.image;
    let host = spec.host;
    let arch = image.arch;
    let os = image.os;
    let x86 = arch == Arch::X86_64;
    let uefi = matches!(os, Os::Windows | Os::Macos);
    // The guest agent's channel and a VM generation ID: what a warm clone's fresh identity
    // needs (a cloud-init image has the agent; a `guest_agent` image says it has).
    let agent = seed.is_some() || image.guest_agent;

    let (kernel, initrd, cmdline) = match &image.boot {
        Boot::Kernel { kernel, initrd, cmdline } => (
            Some(kernel.display().to_string()),
            Some(initrd.display().to_string()),
            Some(kernel_cmdline(cmdline, spec.authorized_keys, spec.ca_key)),
        ),
        Boot::Disk { .. } => (None, None, None),
    };
    let loader = match (&image.firmware, uefi) {
        (Some(path), _) => Some(Loader { readonly: "yes", kind: "pflash", path: path.display().to_string() }),
        (None, _) => None,
    };
    let os_xml = OsXml {
        // Without an explicit loader, let libvirt pick an OVMF build from the
        // host's firmware descriptors.
        firmware: (uefi && loader.is_none()).then_some("efi"),
        os_type: OsType { arch: arch.as_str(), machine: machine(arch, os), value: "hvm" },
        loader,
        kernel,
        initrd,
        cmdline,
        boot: spec.disk.as_ref().map(|_| BootDev { dev: "hd" }),
    };

    let features = x86.then(|| Features {
        acpi: Some(Empty {}),
        apic: Some(Empty {}),
        hyperv: (os == Os::Windows).then_some(HyperV {
            mode: "custom",
            relaxed: ON,
            vapic: ON,
            spinlocks: Spinlocks { state: "on", retries: 8191 },
            vpindex: ON,
            synic: ON,
            stimer: ON,
        }),
        // OVMF builds with Secure Boot need SMM; harmless otherwise.
        smm: uefi.then_some(ON),
    });

    let cpu = match (host.accelerator, arch, os) {
        (Accelerator::Kvm, _, _) => Some(Cpu { mode: "host-passthrough", check: Some("none"), model: None }),
        // macOS checks for a CPU it knows; Penryn is the long-standing choice.
        (Accelerator::Tcg, Arch::X86_64, Os::Macos) => {
            Some(Cpu { mode: "custom", check: Some("none"), model: Some(CpuModel { fallback: "allow", name: "Penryn" }) })
        }
        // Under TCG, `max` on aarch64 emulates costly extensions (pointer authentication):
        // a Cortex-A57 boots the bundled guest about a third faster.
        (Accelerator::Tcg, Arch::Aarch64, _) => {
            Some(Cpu { mode: "custom", check: Some("none"), model: Some(CpuModel { fallback: "forbid", name: "cortex-a57" }) })
        }
        // pseries already defaults to a 64-bit POWER CPU; QEMU's ppc64 has no `max` CPU.
        (Accelerator::Tcg, Arch::X86_64 | Arch::Ppc64le, _) => None,
        // QEMU's default CPUs for these machines are old or 32-bit; take everything TCG can emulate.
        (Accelerator::Tcg, _, _) => Some(Cpu { mode: "maximum", check: Some("none"), model: None }),
    };

    let clock = match os {
        // Windows keeps the RTC in local time.
        Os::Windows => Clock {
            offset: "localtime",
            timers: vec![
                Timer { name: "rtc", present: None, tickpolicy: Some("catchup") },
                Timer { name: "pit", present: None, tickpolicy: Some("delay") },
                Timer { name: "hpet", present: Some("no"), tickpolicy: None },
                Timer { name: "hypervclock", present: Some("yes"), tickpolicy: None },
            ],
        },
        Os::Linux | Os::Macos => Clock { offset: "utc", timers: vec![] },
    };

    // Windows and macOS have no virtio drivers out of the box: SATA disks.
    let disk_bus = match os {
        Os::Linux => ("vda", "virtio"),
        Os::Windows | Os::Macos => ("sda", "sata"),
    };
    let mut disks: Vec<Disk> = spec
        .disk
        .iter()
        .map(|d| Disk {
            kind: "file",
            device: "disk",
            driver: DiskDriver { name: "qemu", format: d.format.clone() },
            source: DiskSource { file: d.path.display().to_string() },
            target: DiskTarget { dev: disk_bus.0, bus: disk_bus.1 },
            readonly: None,
        })
        .collect();
    // The seed: a read-only virtio disk on Linux (cloud-init finds it by its `cidata`
    // label), a SATA CD-ROM where the guest has no virtio drivers (cloudbase-init).
    if let Some(seed) = seed {
        let (device, dev, bus) = match os {
            Os::Linux => ("disk", "vdb", "virtio"),
            Os::Windows | Os::Macos => ("cdrom", "sdb", "sata"),
        };
        disks.push(Disk {
            kind: "file",
            device,
            driver: DiskDriver { name: "qemu", format: "raw".into() },
            source: DiskSource { file: seed.display().to_string() },
            target: DiskTarget { dev, bus },
            readonly: Some(Empty {}),
        });
    }

    let nic_model = image.nic_model.clone().unwrap_or_else(|| {
        match os {
            Os::Linux => "virtio",
            Os::Windows => "e1000e",
            Os::Macos => "vmxnet3",
        }
        .to_string()
    });
    let interface = match &host.network {
        Some(network) => Interface {
            kind: "network",
            source: Some(NetSource { network: network.clone() }),
            backend: None,
            model: Model { kind: Some(nic_model), model: None },
            port_forward: None,
            alias: None,
        },
        None => Interface {
            kind: "user",
            source: None,
            backend: Some(Backend { kind: "passt" }),
            model: Model { kind: Some(nic_model), model: None },
            port_forward: Some(PortForward {
                proto: "tcp",
                address: host.address.to_string(),
                range: PortRangeXml { start: spec.ssh_port, to: 22 },
            }),
            alias: Some(Alias { name: passt_alias(image) }),
        },
    };

    let chardev = |target: CharTarget| match spec.console {
        ConsoleXml::Pty => CharDev { kind: "pty", source: None, target },
        // Appending (`O_APPEND`, as virtlogd always does): `vm::console_cap` cuts the file
        // in place, and a writer at its own offset would leave a hole of zeros instead.
        ConsoleXml::File(path) => {
            CharDev { kind: "file", source: Some(CharSource { path: path.display().to_string(), append: "on" }), target }
        }
    };
    // s390x has no serial port; its console is SCLP.
    let (serials, consoles) = match arch {
        Arch::S390x => (vec![], vec![chardev(CharTarget { kind: Some("sclp"), port: 0 })]),
        _ => (vec![chardev(CharTarget { kind: None, port: 0 })], vec![]),
    };

    let (controllers, inputs) = match os {
        Os::Macos => (
            vec![Controller { kind: "usb", model: "qemu-xhci" }],
            vec![Input { kind: "keyboard", bus: "usb" }, Input { kind: "tablet", bus: "usb" }],
        ),
        Os::Windows => (vec![Controller { kind: "usb", model: "qemu-xhci" }], vec![Input { kind: "tablet", bus: "usb" }]),
        Os::Linux => (vec![], vec![]),
    };

    let qemu_commandline = (os == Os::Macos).then(|| {
        let smc = match &image.smc_key {
            Some(key) => format!("isa-applesmc,osk={key}"),
            None => "isa-applesmc".to_string(),
        };
        QemuCommandline { args: vec![QemuArg { value: "-device".into() }, QemuArg { value: smc }] }
    });

    Domain {
        kind: spec.domain_type,
        xmlns_qemu: qemu_commandline.as_ref().map(|_| QEMU_NS),
        name: spec.name.to_string(),
        genid: agent.then_some(Empty {}),
        metadata: Metadata {
            vm: PaddockVm {
                xmlns: PADDOCK_NS,
                run: spec.mark.run_id.clone(),
                instance: spec.mark.instance.clone(),
                // Milliseconds: reconciliation compares it with the moment a pass began.
                created: spec.mark.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            },
        },
        memory: Memory { unit: "MiB", value: image.memory_mib },
        vcpu: image.vcpus,
        os: os_xml,
        features,
        cpu,
        clock,
        on_poweroff: "destroy",
        on_reboot: "restart",
        on_crash: "destroy",
        devices: Devices {
            disks,
            controllers,
            interface,
            serials,
            consoles,
            agent: agent.then_some(Channel { kind: "unix", target: ChannelTarget { kind: "virtio", name: "org.qemu.guest_agent.0" } }),
            inputs,
            tpm: image.tpm.then_some(Tpm { model: "tpm-crb", backend: TpmBackend { kind: "emulator", version: "2.0" } }),
            rng: (os == Os::Linux).then_some(Rng { model: "virtio", backend: RngBackend { model: "random", path: "/dev/urandom" } }),
            memballoon: Model { kind: None, model: Some("none") },
        },
        qemu_commandline,
    }
}

/// Reads paddock's mark from the `<paddock:vm>` element libvirt returns for
/// [`PADDOCK_NS`]. Prefixes are ignored: libvirt may re-prefix the element.
pub fn parse_metadata(xml: &str) -> Option<Mark> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let (mut run, mut instance, mut created) = (None, None, None);
    let mut current: Option<String> = None;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => current = Some(e.local_name().as_ref().to_string()),
            Event::Text(t) => {
                let text = t.xml10_content().into_owned();
                match current.as_deref() {
                    Some("run") => run = Some(text),
                    Some("instance") => instance = Some(text),
                    Some("created") => created = Some(text),
                    _ => {}
                }
            }
            Event::End(_) => current = None,
            Event::Eof => break,
            _ => {}
        }
    }
    let created_at = DateTime::parse_from_rfc3339(&created?).ok()?.with_timezone(&Utc);
    Some(Mark { run_id: run.unwrap_or_default(), instance: instance?, created_at })
}

mod cmdline;
#[cfg(test)]
use cmdline::base64;
pub use cmdline::{identity_cmdline, kernel_cmdline};

#[cfg(test)]
pub(crate) mod tests;

/// The interface alias that tells the host's passt fence (`scripts/passt-fence.sh`) how to start
/// passt for this guest: gateway mapping always off; for `network = "none"` also no outbound.
fn passt_alias(image: &Image) -> &'static str {
    match image.network {
        GuestNetwork::Outbound => "ua-paddock-outbound",
        GuestNetwork::None => "ua-paddock-none",
    }
}
