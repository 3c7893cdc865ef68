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
    /// `[[machines]]`: persistent libvirt domains jobs may name like images (`machines`).
    pub machines: Vec<Machine>,
    pub access: AccessPolicy,
    pub limits: Limits,
    /// `[retention]`; `None` (no section): everything is kept.
    pub retention: Option<Retention>,
}

/// `[retention]`: each platform's newest `keep_last` results (and each job+image's newest
/// `keep_last` run folders) are kept; older ones go once older than `max_age` (passes) or
/// `failure_max_age` (failures). Without `max_age`, what is past `keep_last` goes on count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub keep_last: u32,
    pub max_age: Option<Duration>,
    pub failure_max_age: Option<Duration>,
    pub every: Duration,
}

/// `[limits]`, with defaults for every key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A run's combined `run.log`; past it the log says where it was cut and by how much.
    pub run_log_bytes: u64,
    /// Each step's `step-NN.stdout`/`.stderr` (head and tail kept).
    pub step_log_bytes: u64,
    /// Each step's stdout and stderr in the result document (head and tail kept).
    pub step_output_bytes: usize,
    /// A recorder submission's body, either protocol.
    pub result_body_bytes: usize,
    /// Steps in one result.
    pub result_steps: usize,
    /// Tags in one result's `client_info`.
    pub result_tags: usize,
    /// The HTTP listener's deadline for a request's headers (and an idle connection).
    pub http_header_timeout: std::time::Duration,
    /// The HTTP listener's deadline for a request's body and the start of its response.
    pub http_request_timeout: std::time::Duration,
    /// HTTP connections served at once; one more gets 503 and is closed.
    pub http_connections: usize,
    /// Live log streams open at once, in all.
    pub live_streams: usize,
    /// Live log streams open at once for one client (a token's user, else an address).
    pub live_streams_per_client: usize,
    /// Each artifact listing and download from a guest.
    pub artifact_timeout: std::time::Duration,
    /// Each VM's serial console file on the daemon's machine; past it the file keeps its
    /// newest half after a line saying how much was cut (`vm::console_cap`).
    pub console_bytes: u64,
    /// A step whose stdout and stderr together pass this is killed and fails; `None`: never.
    pub step_kill_after_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            run_log_bytes: 64 << 20,
            step_log_bytes: 64 << 20,
            step_output_bytes: 1 << 20,
            result_body_bytes: 16 << 20,
            result_steps: 1000,
            result_tags: 100,
            http_header_timeout: std::time::Duration::from_secs(15),
            http_request_timeout: std::time::Duration::from_secs(60),
            http_connections: 1024,
            live_streams: 200,
            live_streams_per_client: 10,
            artifact_timeout: std::time::Duration::from_secs(120),
            console_bytes: 8 << 20,
            step_kill_after_bytes: Some(1 << 30),
        }
    }
}

impl Limits {
    /// What the HTTP listener enforces.
    pub fn listener(&self) -> crate::listener::ListenerConfig {
        crate::listener::ListenerConfig {
            header_timeout: self.http_header_timeout,
            request_timeout: self.http_request_timeout,
            max_connections: self.http_connections,
        }
    }
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
    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines.iter().find(|m| m.name == name)
    }
    /// What a run of `name` logs in to and reports as: the image, or the guest view of
    /// the persistent machine of that name (`Machine::guest`).
    pub fn run_target(&self, name: &str) -> Option<Image> {
        self.image(name).cloned().or_else(|| self.machine(name).map(Machine::guest))
    }
}

#[derive(Debug, Clone, PartialEq)]
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
    /// How long a host that failed a launch is passed over by the next launches.
    pub host_cooldown: Duration,
    /// The deadline of one libvirt call; a host whose call misses it is marked down.
    pub libvirt_timeout: Duration,
    /// The deadline of opening a host's connection (a remote one may start a daemon first).
    pub libvirt_connect_timeout: Duration,
    /// A queued launch gains one priority point per this much waiting.
    pub priority_aging: Duration,
    /// The deadline of one image file's upload into a pool host's storage.
    pub upload_timeout: Duration,
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

#[derive(Debug, Clone, PartialEq)]
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
    /// A libvirt storage pool on the host: paddock uploads each image's files
    /// into it over the libvirt connection and boots from those volumes.
    /// `None`: the host reads image files by their paths (a local host).
    pub image_pool: Option<String>,
    /// What the donor of this machine allows.
    pub limits: DonorLimits,
}

/// A donor's limits on their host: when paddock may start VMs there, which
/// jobs and images may run, and when paddock stops trusting it.
#[derive(Debug, Clone, PartialEq)]
pub struct DonorLimits {
    /// New VMs start only inside one of these; empty means always.
    pub windows: Vec<Window>,
    /// The donor's time zone, in which `windows` are read.
    pub timezone: chrono_tz::Tz,
    /// VMs still running when every window has closed are stopped.
    pub hard_stop: bool,
    /// Jobs allowed here; `None` allows every job.
    pub jobs: Option<Vec<String>>,
    /// Images allowed here; `None` allows every image.
    pub images: Option<Vec<String>>,
    /// This many launches failing in a row quarantine the host.
    pub quarantine_after: u32,
    /// Run (through `sh -c`) when the host goes down or is quarantined.
    pub notify_command: Option<String>,
    /// `ready = { IMAGE = N }`: the ready-pool size of those images on this host, in place of
    /// their `min_ready`. Kept with the donor's limits because idle clones hold the host's
    /// memory, which is its owner's to give (`Image::min_ready_on`).
    pub ready: BTreeMap<String, u32>,
}

impl Default for DonorLimits {
    fn default() -> Self {
        DonorLimits {
            windows: Vec::new(),
            timezone: chrono_tz::UTC,
            hard_stop: false,
            jobs: None,
            images: None,
            quarantine_after: 3,
            notify_command: None,
            ready: BTreeMap::new(),
        }
    }
}

impl DonorLimits {
    /// Whether new VMs may start at `t`.
    pub fn open_at(&self, t: DateTime<Utc>) -> bool {
        self.windows.is_empty() || self.windows.iter().any(|w| w.contains(t.with_timezone(&self.timezone).naive_local()))
    }

    pub fn allows_image(&self, image: &str) -> bool {
        self.images.as_ref().is_none_or(|l| l.iter().any(|i| i == image))
    }

    /// A launch that belongs to no job (an access grant's VM) is allowed
    /// wherever its image is.
    pub fn allows_job(&self, job: Option<&str>) -> bool {
        match (job, &self.jobs) {
            (_, None) | (None, Some(_)) => true,
            (Some(j), Some(l)) => l.iter().any(|x| x == j),
        }
    }
}

/// A weekly availability window, `"Mon-Fri 20:00-07:00"`: it opens at `start`
/// on each listed day and runs to `end`, past midnight when `end <= start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Monday first.
    pub days: [bool; 7],
    pub start: chrono::NaiveTime,
    /// `None` is the end of the day (`24:00`).
    pub end: Option<chrono::NaiveTime>,
    /// As written in fleet.toml.
    pub text: String,
}

impl Window {
    /// Whether the donor's local time `t` lies inside the window.
    pub fn contains(&self, t: chrono::NaiveDateTime) -> bool {
        use chrono::Datelike;
        let day = t.weekday().num_days_from_monday() as usize;
        let prev = (day + 6) % 7;
        let time = t.time();
        match self.end {
            None => self.days[day] && time >= self.start,
            Some(end) if end > self.start => self.days[day] && time >= self.start && time < end,
            // Overnight: the evening part belongs to today, the morning part to yesterday's window.
            Some(end) => (self.days[day] && time >= self.start) || (self.days[prev] && time < end),
        }
    }

    /// Parses `DAYS HH:MM-HH:MM`; DAYS is `daily`, a day (`Mon`), a range
    /// (`Mon-Fri`, wrapping like `Fri-Mon`) or a comma list of those.
    pub fn parse(s: &str) -> Result<Window, String> {
        let bad = |why: &str| format!("`{s}` is not a window like \"Mon-Fri 20:00-07:00\": {why}");
        let (days_s, times) = s.trim().split_once(' ').ok_or_else(|| bad("expected DAYS and HH:MM-HH:MM"))?;
        const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let day = |d: &str| NAMES.iter().position(|n| n.eq_ignore_ascii_case(d.trim()));
        let mut days = [false; 7];
        if days_s.eq_ignore_ascii_case("daily") {
            days = [true; 7];
        } else {
            for part in days_s.split(',') {
                match part.split_once('-') {
                    Some((a, b)) => {
                        let (Some(a), Some(b)) = (day(a), day(b)) else {
                            return Err(bad(&format!("unknown day in `{part}`")));
                        };
                        let mut d = a;
                        loop {
                            days[d] = true;
                            if d == b {
                                break;
                            }
                            d = (d + 1) % 7;
                        }
                    }
                    None => days[day(part).ok_or_else(|| bad(&format!("unknown day `{part}`")))?] = true,
                }
            }
        }
        let (a, b) = times.trim().split_once('-').ok_or_else(|| bad("expected HH:MM-HH:MM"))?;
        let time = |t: &str| chrono::NaiveTime::parse_from_str(t.trim(), "%H:%M").map_err(|_| bad(&format!("`{t}` is not HH:MM")));
        let start = time(a)?;
        let end = if b.trim() == "24:00" { None } else { Some(time(b)?) };
        if end == Some(start) {
            return Err(bad("it starts and ends at the same time"));
        }
        Ok(Window { days, start, end, text: s.to_string() })
    }
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
    /// A key paddock generates for each VM and pins before boot, handed to the guest
    /// with the VM's identity (`identity = "cloud-init"` in `fleet.toml`: a NoCloud seed
    /// on a disk image). No two VMs share it.
    PerVm,
}

#[derive(Debug, Clone, PartialEq)]
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
    /// What the guest may reach besides its SSH forward.
    pub network: GuestNetwork,
    /// The stable name of this platform in recorders (a result's `host`): the image's name
    /// unless `platform` says otherwise. Never a VM's or a hypervisor's name, so every run of a
    /// job on this image lands in one tagset.
    pub platform: String,
    /// Whether runs boot the image or restore a clone of its saved template.
    pub start: Start,
    /// How many restored clones each host keeps idle for this image (its ready pool;
    /// `start = "warm"` only; a host with an `image_pool` keeps none of a kernel image). 0: none.
    pub min_ready: u32,
    /// The image declares (`guest_agent = true`) that its guest runs the QEMU guest agent on
    /// the `org.qemu.guest_agent.0` port and that its kernel reseeds its RNG when the VM
    /// generation ID changes (the warm-capable bundled guest, `images/out/x86_64-warm`): its
    /// domains get the agent's channel and a `<genid/>`, and with `identity = "cmdline"` it
    /// may start warm. Images with `identity = "cloud-init"` get both without it.
    pub guest_agent: bool,
}

impl Image {
    /// How many idle restored clones of this image `host` keeps: its `ready` entry for the
    /// image, else the image's `min_ready`.
    pub fn min_ready_on(&self, host: &Host) -> u32 {
        host.limits.ready.get(&self.name).copied().unwrap_or(self.min_ready)
    }
}

/// How a run's VM comes up (issue 18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A full boot from the image's files.
    Cold,
    /// A clone restored from the image's template (booted once per host, saved, its disk
    /// frozen), given its own identity before any SSH handshake; a cold boot when the
    /// restore fails. Only for images whose clones can get fresh identity through the
    /// guest agent and a VM generation ID (`identity = "cloud-init"`, or `identity =
    /// "cmdline"` with `guest_agent = true`).
    Warm,
}

/// What a guest on user-mode networking (passt) may reach. Neither mode reaches the host's
/// loopback (passt's gateway mapping is off for every paddock guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestNetwork {
    /// Connections out to other hosts, as passt forwards them from the hypervisor.
    Outbound,
    /// No connection leaves the hypervisor: passt binds its outbound sockets to loopback and
    /// the guest has no IPv6. DNS through a resolver on the host itself is not blocked.
    None,
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
        self.cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
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
    /// Every env value, secrets resolved (read at load).
    pub env: BTreeMap<String, String>,
    /// Names in `env` whose values came from a file or the daemon's environment: masked as
    /// `***` in every log, reason, result and page.
    pub secret_env: std::collections::BTreeSet<String>,
    pub tags: Vec<String>,
    pub hold_on_failure: Option<Duration>,
    /// How many times a run that ends as an infrastructure failure is run again
    /// (preferably on another host); 0: never.
    pub retry_infrastructure: u32,
    /// Higher is placed first when hosts are full (ageing keeps lower ones from
    /// starving: `vm::manager::launch`).
    pub priority: i32,
    pub maintainers: Vec<String>,
    pub artifacts: Vec<String>,
    /// Host files or folders uploaded into the guest before the first step.
    pub inputs: Vec<Input>,
}

/// A host file or folder a job uploads into its guest over SFTP before the first step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Absolute, on the daemon's machine (a relative `path` is resolved against the
    /// config file's folder).
    pub path: PathBuf,
    /// Where it lands in the guest (absolute, `/`-separated): a file is written there,
    /// a folder's contents go below it.
    pub dest: String,
    /// The most bytes the input may hold in all; a bigger one fails the run before upload.
    pub max_bytes: u64,
}

impl Job {
    /// The values to mask wherever this job's output or reasons go.
    pub fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.secret_env.iter().filter_map(|k| self.env.get(k)).map(String::as_str)
    }
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

#[derive(Debug, Clone, PartialEq)]
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

#[derive(Debug, Clone, PartialEq)]
pub struct Recorder {
    pub name: String,
    pub target: RecorderTarget,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessPolicy {
    /// A maintainer's request up to this long for their own job's images is approved at once.
    pub auto_approve_max: Duration,
    /// No grant, approved or extended, lasts longer than this.
    pub max_grant: Duration,
    /// Certificates carry `permit-agent-forwarding`, `permit-X11-forwarding`,
    /// `permit-port-forwarding` and `permit-user-rc` only when this is set; otherwise
    /// only `permit-pty` (`[access] allow_forwarding`, default false).
    pub allow_forwarding: bool,
}

/// `[[machines]]`: a libvirt domain that exists on a host before paddock and outlives every
/// run (a licensed macOS or Windows box). paddock never defines, undefines or deletes it; each
/// run may revert it to `snapshot` first, and one run at a time uses it (`crate::machines`).
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// How jobs name it (in their `images`); unique among images and machines.
    pub name: String,
    /// The `[[hosts]]` entry whose libvirt holds the domain.
    pub host: String,
    /// The libvirt domain's name on that host.
    pub domain: String,
    /// Reverted to before each run (and started if it is not running then).
    pub snapshot: Option<String>,
    /// The host port (on the host's `address`) forwarded to the guest's SSH port.
    pub ssh_port: u16,
    /// Pinned, or a `.pub` file: never learned on first use.
    pub host_key: HostKeyPolicy,
    pub user: String,
    pub os: Os,
    pub arch: Arch,
    pub shell: Shell,
    /// From the revert or start to a working login.
    pub boot_timeout: Duration,
    pub after: AfterRun,
    pub platform: String,
}

/// What becomes of a persistent machine when its run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRun {
    /// Left running (the next run reverts it anyway, if it has a snapshot).
    Keep,
    /// Shut down through ACPI (never destroyed, never undefined).
    Shutdown,
    /// Reverted to its snapshot at once, so it waits clean.
    Revert,
}

impl AfterRun {
    pub fn as_str(self) -> &'static str {
        match self {
            AfterRun::Keep => "keep",
            AfterRun::Shutdown => "shutdown",
            AfterRun::Revert => "revert",
        }
    }
}

impl Machine {
    /// The machine as the executor logs in to and reports it: user, shell, host key, boot
    /// timeout, os, arch and platform. Its `boot` is an empty disk path and its size zero:
    /// it never goes to the VM manager, only `crate::machines` starts it.
    pub fn guest(&self) -> Image {
        Image {
            name: self.name.clone(),
            os: self.os,
            arch: self.arch,
            boot: Boot::Disk { base: PathBuf::new() },
            memory_mib: 0,
            vcpus: 0,
            user: self.user.clone(),
            shell: self.shell,
            host_key: self.host_key.clone(),
            trusts_fleet_ca: false,
            boot_timeout: self.boot_timeout,
            nic_model: None,
            tpm: false,
            smc_key: None,
            firmware: None,
            network: GuestNetwork::Outbound,
            platform: self.platform.clone(),
            start: Start::Cold,
            min_ready: 0,
            guest_agent: false,
        }
    }
}
