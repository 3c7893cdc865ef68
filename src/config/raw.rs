//! The `fleet.toml` wire format: serde types that mirror the file, with spans kept
//! so that every later validation error can point at a line and column.
//!
//! Nothing outside `config` sees these types; `validate` turns them into the
//! plain domain types of `config::model`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub version: S<i64>,
    pub daemon: S<RawDaemon>,
    #[serde(default)]
    pub hosts: Vec<S<RawHost>>,
    #[serde(default)]
    pub images: Vec<S<RawImage>>,
    #[serde(default)]
    pub jobs: Vec<S<RawJob>>,
    #[serde(default)]
    pub users: Vec<S<RawUser>>,
    #[serde(default)]
    pub recorders: Vec<S<RawRecorder>>,
    #[serde(default)]
    pub machines: Vec<S<RawMachine>>,
    pub access: Option<S<RawAccess>>,
    pub limits: Option<S<RawLimits>>,
    pub retention: Option<S<RawRetention>>,
}

/// `[retention]`: how long the embedded recorder's results and the run folders are kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub keep_last: Option<S<i64>>,
    pub max_age: Option<S<String>>,
    pub failure_max_age: Option<S<String>>,
    pub every: Option<S<String>>,
}

/// `[limits]`: how much a run, a guest or a recorder client may make paddock keep.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub run_log: Option<S<String>>,
    pub step_log: Option<S<String>>,
    pub step_output: Option<S<String>>,
    pub result_body: Option<S<String>>,
    pub result_steps: Option<S<i64>>,
    pub result_tags: Option<S<i64>>,
    pub http_header_timeout: Option<S<String>>,
    pub http_request_timeout: Option<S<String>>,
    pub http_connections: Option<S<i64>>,
    pub live_streams: Option<S<i64>>,
    pub live_streams_per_client: Option<S<i64>>,
    pub artifact_timeout: Option<S<String>>,
    pub console: Option<S<String>>,
    pub step_kill_after: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub listen: S<String>,
    pub state_dir: S<String>,
    pub ssh_ports: S<String>,
    pub reconcile_interval: Option<S<String>>,
    pub max_hold: Option<S<String>>,
    pub launch_retries: Option<S<i64>>,
    pub libvirt_timeout: Option<S<String>>,
    pub libvirt_connect_timeout: Option<S<String>>,
    pub priority_aging: Option<S<String>>,
    pub upload_timeout: Option<S<String>>,
    pub public_reads: Option<bool>,
    #[serde(default)]
    pub emulation_boot_factor: BTreeMap<String, S<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub name: S<String>,
    pub uri: S<String>,
    pub accelerator: S<String>,
    pub address: S<String>,
    pub max_vms: S<i64>,
    pub memory_mib: S<i64>,
    pub vcpus: S<i64>,
    pub network: Option<S<String>>,
    /// Donor limits: when new VMs may start (`"Mon-Fri 20:00-07:00"`), in `timezone`.
    #[serde(default)]
    pub windows: Vec<S<String>>,
    pub timezone: Option<S<String>>,
    #[serde(default)]
    pub hard_stop: bool,
    /// Allow-lists; absent means any.
    pub jobs: Option<Vec<S<String>>>,
    pub images: Option<Vec<S<String>>>,
    pub quarantine_after: Option<S<i64>>,
    pub notify_command: Option<S<String>>,
    /// A libvirt storage pool on the host that paddock uploads image files into.
    pub image_pool: Option<S<String>>,
    /// Ready-pool size per image on this host (`{ "debian-12" = 2 }`), in place of the
    /// image's `min_ready` there.
    pub ready: Option<BTreeMap<String, S<i64>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImage {
    pub name: S<String>,
    pub os: S<String>,
    pub arch: S<String>,
    pub disk: Option<S<String>>,
    pub kernel: Option<S<String>>,
    pub initrd: Option<S<String>>,
    pub cmdline: Option<S<String>>,
    pub memory_mib: S<i64>,
    pub vcpus: S<i64>,
    pub user: S<String>,
    pub shell: Option<S<String>>,
    /// Required unless `identity` hands each VM a key of its own.
    pub host_key: Option<S<String>>,
    /// `"cloud-init"`: each VM gets a NoCloud seed with its own host key and principal.
    pub identity: Option<S<String>>,
    #[serde(default)]
    pub trusts_fleet_ca: bool,
    pub boot_timeout: Option<S<String>>,
    pub nic_model: Option<S<String>>,
    #[serde(default)]
    pub tpm: bool,
    pub smc_key: Option<S<String>>,
    pub firmware: Option<S<String>>,
    /// `"outbound"` (default) or `"none"`; see `GuestNetwork`.
    pub network: Option<S<String>>,
    /// The platform name results of this image carry as `host`; absent: the image's name.
    pub platform: Option<S<String>>,
    /// `"cold"` (default) or `"warm"`; see `Start`.
    pub start: Option<S<String>>,
    /// Restored clones kept idle per host for a trigger to take at once (warm images only).
    pub min_ready: Option<S<i64>>,
}

/// `[[machines]]`: a libvirt domain that already exists on a host, driven by name (issue 18).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMachine {
    pub name: S<String>,
    pub host: S<String>,
    pub domain: S<String>,
    pub snapshot: Option<S<String>>,
    pub ssh_port: S<i64>,
    pub host_key: S<String>,
    pub user: S<String>,
    pub os: Option<S<String>>,
    pub arch: Option<S<String>>,
    pub shell: Option<S<String>>,
    pub boot_timeout: Option<S<String>>,
    pub after: Option<S<String>>,
    pub platform: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    pub name: S<String>,
    pub images: S<Vec<S<String>>>,
    pub schedule: Option<S<String>>,
    pub timezone: Option<S<String>>,
    #[serde(default)]
    pub steps: Vec<S<RawStep>>,
    pub stop_if_failure: Option<bool>,
    #[serde(default)]
    pub env: BTreeMap<String, S<RawEnvValue>>,
    #[serde(default)]
    pub tags: Vec<S<String>>,
    pub hold_on_failure: Option<S<String>>,
    pub retry_infrastructure: Option<S<i64>>,
    pub priority: Option<S<i64>>,
    #[serde(default)]
    pub maintainers: Vec<S<String>>,
    #[serde(default)]
    pub artifacts: Vec<S<String>>,
    #[serde(default)]
    pub inputs: Vec<S<RawInput>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInput {
    pub path: S<String>,
    pub dest: S<String>,
    /// `"16M"`, `"512K"`, `"1G"` or a byte count; default 16M.
    pub max_size: Option<S<String>>,
}

/// An env value: text, or a secret read from a file (`{ from_file = "PATH" }`) or from the
/// daemon's own environment (`{ from_env = "NAME" }`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawEnvValue {
    Plain(String),
    Secret(RawSecret),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    pub from_file: Option<String>,
    pub from_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub name: S<String>,
    #[serde(rename = "type")]
    pub kind: S<String>,
    pub command: S<String>,
    pub timeout: Option<S<String>>,
    #[serde(default)]
    pub ignore_failure: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub name: S<String>,
    pub role: S<String>,
    #[serde(default)]
    pub ssh_keys: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecorder {
    pub name: S<String>,
    pub kind: S<String>,
    pub url: Option<S<String>>,
    pub token: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccess {
    pub auto_approve_max: Option<S<String>>,
    pub max_grant: Option<S<String>>,
    /// Whether certificates permit agent, X11 and port forwarding and `~/.ssh/rc`.
    #[serde(default)]
    pub allow_forwarding: bool,
}
