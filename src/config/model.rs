//! The validated fleet: plain domain types with no serde in sight.
//!
//! Every value here has passed validation: names are unique, cross-references
//! resolve, durations and cron expressions parse, SSH keys are real keys.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The whole of a validated `fleet.toml`.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The file this fleet was read from.
    pub source: PathBuf,
    pub daemon: Daemon,
    pub hosts: Vec<Host>,
    pub images: Vec<Image>,
    pub jobs: Vec<Job>,
    pub users: Vec<User>,
    pub recorders: Vec<Recorder>,
    pub access: AccessPolicy,
}

impl Fleet {
    pub fn image(&self, name: &str) -> Option<&Image> {
        self.images.iter().find(|i| i.name == name)
    }
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct Daemon {
    pub listen: SocketAddr,
    /// Absolute; a relative `state_dir` is resolved against the config file's folder.
    pub state_dir: PathBuf,
    pub ssh_ports: PortRange,
    pub reconcile_interval: Duration,
    /// The longest any failed run's VM may be held, whatever a job asks for.
    pub max_hold: Duration,
    /// How many hosts a launch is tried on before the run fails as infrastructure.
    pub launch_retries: u32,
    /// Whether the API, dashboard and metrics may be read without a token.
    pub public_reads: bool,
    /// How much longer than `boot_timeout` a guest of this arch gets on a host
    /// that emulates it (a host of another arch).
    pub emulation_boot_factor: BTreeMap<Arch, f64>,
}

/// An inclusive range of host ports for guest SSH forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl Accelerator {
    /// The libvirt domain `type` attribute for this accelerator.
    pub fn domain_type(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "qemu",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub uri: String,
    pub accelerator: Accelerator,
    /// Where this host's forwarded guest ports are reached (and bound).
    pub address: IpAddr,
    pub capacity: Capacity,
    /// A libvirt network to attach guests to instead of user-mode networking
    /// (labs only; never used in tests here).
    pub network: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub max_vms: u32,
    pub memory_mib: u64,
    pub vcpus: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Os {
    Linux,
    Windows,
    Macos,
}

impl Os {
    pub fn as_str(self) -> &'static str {
        match self {
            Os::Linux => "linux",
            Os::Windows => "windows",
            Os::Macos => "macos",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    X86_64,
    Aarch64,
    S390x,
    Ppc64le,
    Riscv64,
}

impl Arch {
    pub const ALL: [Arch; 5] = [Arch::X86_64, Arch::Aarch64, Arch::S390x, Arch::Ppc64le, Arch::Riscv64];

    /// The name libvirt and `uname -m` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::S390x => "s390x",
            Arch::Ppc64le => "ppc64le",
            Arch::Riscv64 => "riscv64",
        }
    }

    pub fn parse(s: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an image boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// A base disk; each run gets a copy-on-write overlay over it.
    Disk { base: PathBuf },
    /// A kernel and initramfs; the guest runs from RAM, so nothing of the image is writable.
    Kernel { kernel: PathBuf, initrd: PathBuf, cmdline: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    Sh,
    Powershell,
    Cmd,
}

/// Which SSH host key a guest must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Exactly this key.
    Pinned(ssh_key::PublicKey),
    /// The key in this `.pub` file, read when the image is launched (the file is
    /// made by the image build, which may run after `paddock check`).
    File(PathBuf),
    /// The key the guest prints on its serial console at boot, between
    /// `PADDOCK-HOSTKEY-BEGIN` and `PADDOCK-HOSTKEY-END`.
    Console,
}

#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub os: Os,
    pub arch: Arch,
    pub boot: Boot,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub user: String,
    pub shell: Shell,
    pub host_key: HostKeyPolicy,
    pub trusts_fleet_ca: bool,
    pub boot_timeout: Duration,
    pub nic_model: Option<String>,
    pub tpm: bool,
    pub smc_key: Option<String>,
    pub firmware: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub expr: String,
    pub cron: croner::Cron,
    pub tz: chrono_tz::Tz,
}

impl Schedule {
    /// The first fire strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The next `n` fires after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Setup,
    Build,
    Test,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Setup => "setup",
            StepKind::Build => "build",
            StepKind::Test => "test",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub kind: StepKind,
    pub command: String,
    pub timeout: Duration,
    pub ignore_failure: bool,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub images: Vec<String>,
    pub schedule: Option<Schedule>,
    pub steps: Vec<Step>,
    pub stop_if_failure: bool,
    pub env: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub hold_on_failure: Option<Duration>,
    pub maintainers: Vec<String>,
    pub artifacts: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Maintainer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Maintainer => "maintainer",
            Role::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub ssh_keys: Vec<ssh_key::PublicKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecorderTarget {
    /// The recorder running inside this daemon.
    Embedded,
    /// Another paddock recorder, over its REST API.
    Paddock { url: String, token: Option<String> },
    /// A pony-build server, over XML-RPC `add_results`.
    PonyBuild { url: String },
}

#[derive(Debug, Clone)]
pub struct Recorder {
    pub name: String,
    pub target: RecorderTarget,
}

#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// A maintainer's request up to this long for their own job's images is approved at once.
    pub auto_approve_max: Duration,
    /// No grant, approved or extended, lasts longer than this.
    pub max_grant: Duration,
}
