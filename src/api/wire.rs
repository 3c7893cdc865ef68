//! JSON wire types of the REST API: the only serde types for HTTP, shared by
//! the server and the CLI client. Domain rows are converted by hand at the edge.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorOut {
    pub error: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusOut {
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub uptime_s: i64,
    pub hosts: usize,
    pub hosts_up: usize,
    pub vms: usize,
    pub runs_queued: usize,
    pub runs_in_flight: usize,
    pub runs_held: usize,
    pub outbox_pending: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct CapacityOut {
    pub vms: u64,
    pub memory_mib: u64,
    pub vcpus: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostOut {
    pub name: String,
    pub uri: String,
    pub accelerator: String,
    pub address: String,
    /// `None` until the VM manager has reported on the host.
    pub up: Option<bool>,
    pub last_error: Option<String>,
    pub vms_running: usize,
    pub capacity: CapacityOut,
    pub used: CapacityOut,
    pub free: CapacityOut,
    /// Why the host takes no new VMs (drained by an admin, or quarantined).
    #[serde(default)]
    pub blocked: Option<HostBlockOut>,
    /// Inside the donor's availability windows now (always true without windows).
    #[serde(default = "yes")]
    pub window_open: bool,
    #[serde(default)]
    pub windows: Vec<String>,
    #[serde(default)]
    pub health: HostHealthOut,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostBlockOut {
    /// `drained` or `quarantined`.
    pub kind: String,
    pub reason: String,
    pub by: String,
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostHealthOut {
    pub launches: u64,
    pub failures: u64,
    pub consecutive_failures: u32,
    pub mean_boot_ms: Option<u64>,
    pub last_boot_ms: Option<u64>,
}

/// Body of `POST /api/v1/hosts/{name}/drain` (a reason is required) and `/resume`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostBlockIn {
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmOut {
    pub name: String,
    pub host: Option<String>,
    pub image: String,
    pub state: String,
    pub run_id: Option<String>,
    pub ssh_port: Option<u16>,
    pub created_at: DateTime<Utc>,
    pub age_s: i64,
    pub hold_until: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// The SSH host key paddock pinned for this VM before it booted (OpenSSH public key
    /// line), for images whose VMs get their own (`identity = "cloud-init"`).
    #[serde(default)]
    pub host_key: Option<String>,
    /// Its `SHA256:...` fingerprint, as `ssh` prints it.
    #[serde(default)]
    pub host_key_sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageOut {
    pub name: String,
    pub os: String,
    pub arch: String,
    pub boot: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub user: String,
    pub jobs: Vec<String>,
}

/// A persistent machine (`[[machines]]`, `GET /api/v1/machines`) and what it is doing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineOut {
    pub name: String,
    pub host: String,
    /// The libvirt domain's name on that host.
    pub domain: String,
    /// The snapshot each run reverts it to first.
    pub snapshot: Option<String>,
    /// `keep`, `shutdown` or `revert`: what becomes of it when a run ends.
    pub after: String,
    /// `idle`, `running` (`run_id` has it) or `queued` (runs wait for their turn, none has it).
    pub state: String,
    pub run_id: Option<String>,
    /// Runs waiting for their turn on it.
    pub queued: usize,
    /// The last run that ended on it.
    pub last: Option<LastResultOut>,
}

/// A warm-start template on a host (`GET /api/v1/templates`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateOut {
    /// `None` when its folder names no host of the fleet (a removed host).
    pub host: Option<String>,
    pub image: Option<String>,
    /// The template's key (a SHA-256 of the image's settings, files and seed inputs); its
    /// first 16 characters while it is being built.
    pub key: String,
    /// `building`, `ready`, or `stale` (its key is no longer the image's current one); a row
    /// of a pool host whose pool could not be listed is `unlisted` (and names no template).
    pub state: String,
    pub made_at: Option<DateTime<Utc>>,
    /// Bytes its files (its volumes in the host's pool) take on disk.
    pub disk_bytes: u64,
    /// Clones whose overlay it backs now (of a diskless template: the live VMs restored from it).
    pub clones: usize,
    /// The host's pool when the template is volumes there; `None` for the state directory.
    #[serde(default)]
    pub pool: Option<String>,
    /// When the row was read where the template lives: the state directory at the request;
    /// a host's pool at the VM manager's last listing of it (its reconciliation passes, a
    /// template build starting or ending, a clone of a new template). Of an `unlisted` row:
    /// when the listing that failed was tried (`None`: not yet).
    #[serde(default)]
    pub listed_at: Option<DateTime<Utc>>,
    /// Why an `unlisted` host's templates are not shown.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleOut {
    pub cron: String,
    pub timezone: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepDefOut {
    pub name: String,
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastResultOut {
    pub image: String,
    pub run_id: String,
    pub outcome: String,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobOut {
    pub name: String,
    pub images: Vec<String>,
    pub schedule: Option<ScheduleOut>,
    pub next_fires: Vec<DateTime<Utc>>,
    pub maintainers: Vec<String>,
    pub tags: Vec<String>,
    pub steps: Vec<StepDefOut>,
    /// The newest finished run per image; images never run are absent.
    pub last: Vec<LastResultOut>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOut {
    pub id: String,
    pub job: String,
    pub image: String,
    pub trigger: String,
    pub requested_by: Option<String>,
    /// As stored: `queued`, `running:2`, `done`, ...
    pub state: String,
    /// For people: `running step 3`.
    pub state_label: String,
    pub terminal: bool,
    pub host: Option<String>,
    pub vm_name: Option<String>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
}

/// A run in `GET /api/v1/runs`: the run and its retry links, as its detail has them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunListOut {
    #[serde(flatten)]
    pub run: RunOut,
    /// This run re-runs another after an infrastructure failure.
    #[serde(default)]
    pub retry: Option<RetryOut>,
    /// The run queued to re-run this one.
    #[serde(default)]
    pub retried_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepOut {
    pub name: String,
    pub kind: String,
    pub status: Option<i64>,
    pub duration_s: Option<f64>,
    pub timed_out: bool,
    pub skipped: bool,
    pub output: String,
    pub errout: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunDetailOut {
    #[serde(flatten)]
    pub run: RunOut,
    /// From the result document; empty until the run has finished.
    pub steps: Vec<StepOut>,
    pub outbox: Vec<OutboxOut>,
    /// This run re-runs another after an infrastructure failure (a job's `retry_infrastructure`).
    #[serde(default)]
    pub retry: Option<RetryOut>,
    /// The run queued to re-run this one; its result, not this one's, goes to the recorders.
    #[serde(default)]
    pub retried_by: Option<String>,
    /// The run's log file on the daemon's machine (`GET /api/v1/runs/{id}/log` serves it).
    #[serde(default)]
    pub log_path: Option<String>,
    /// The guest's last console lines, from the result document: kept when a run ends outside
    /// its steps (a guest that never answered SSH, a VM lost mid-step). Secrets masked.
    #[serde(default)]
    pub console_tail: Option<String>,
    /// How the run got its VM and how fast, from the result document's `extras.timings`;
    /// `None` for a run that never got a VM (or finished before paddock recorded timings).
    #[serde(default)]
    pub timings: Option<TimingsOut>,
}

/// A run's start: how its VM came (`cold`, `warm`, `ready-pool`, `cold-after-warm-failed`)
/// and where the time went before its first step's first byte.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimingsOut {
    pub start: String,
    /// Why a warm start fell back to a cold boot.
    #[serde(default)]
    pub warm_fallback: Option<String>,
    /// From the VM's start (or restore) to readiness; of a ready-pool clone, its refill's.
    #[serde(default)]
    pub boot_s: Option<f64>,
    /// From the guest's SSH banner (of a ready-pool clone: the take) to the first byte of the
    /// first step's output.
    #[serde(default)]
    pub banner_to_first_byte_s: Option<f64>,
    /// Whether the session that proved the VM ready ran the steps (one SSH handshake).
    #[serde(default)]
    pub one_handshake: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetryOut {
    /// The run this one replaces.
    pub retry_of: String,
    /// 2 for the first retry.
    pub attempt: u32,
    /// 1 + the job's `retry_infrastructure`.
    pub attempts: u32,
    /// "retry 1 of 2 after infrastructure failure on host donor".
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TriggerIn {
    pub job: String,
    pub image: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TriggerOut {
    pub runs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelOut {
    pub run: String,
    pub cancel_requested: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxOut {
    pub id: i64,
    pub run_id: String,
    pub recorder: String,
    pub created_at: DateTime<Utc>,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditOut {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventOut {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub subject: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessOut {
    pub id: String,
    pub user: String,
    pub image: Option<String>,
    pub run_id: Option<String>,
    pub duration_s: i64,
    pub reason: String,
    pub state: String,
    pub decided_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub vm_name: Option<String>,
}

/// The `data` of the SSE `state` and `end` events of a log follow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FollowState {
    pub state: String,
    pub state_label: String,
    pub terminal: bool,
    pub outcome: Option<String>,
    pub reason: Option<String>,
}

/// `POST /api/v1/access`: exactly one of `image` and `run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessRequestIn {
    pub image: Option<String>,
    pub run: Option<String>,
    /// e.g. `2h`, `90m`.
    pub duration: String,
    pub reason: String,
}

/// `POST /api/v1/access/{id}/extend`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtendIn {
    pub duration: String,
}

/// `POST /api/v1/access/{id}/deny`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DenyIn {
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointOut {
    pub host: String,
    pub port: u16,
    pub user: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateOut {
    pub serial: u64,
    pub key_fingerprint: String,
    pub key: String,
    /// One OpenSSH line; save it as `…-cert.pub` and pass it with `-o CertificateFile=`.
    pub certificate: String,
}

/// A grant; certificates and the `ssh` command only in answers that issued them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantOut {
    pub id: String,
    pub user: String,
    pub image: Option<String>,
    pub run_id: Option<String>,
    pub duration_s: u64,
    pub reason: String,
    pub state: String,
    pub decided_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub vm_name: Option<String>,
    pub detail: Option<String>,
    pub ssh: Option<EndpointOut>,
    #[serde(default)]
    pub certificates: Vec<CertificateOut>,
    pub ssh_command: Option<String>,
    /// `[host]:port ssh-ed25519 AAAA...`: the VM's pinned host key as one `known_hosts`
    /// line, for images whose VMs get their own key.
    #[serde(default)]
    pub known_hosts: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaOut {
    /// The fleet CA's public key line, for `TrustedUserCAKeys`.
    pub public_key: String,
}
