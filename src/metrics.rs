//! Every Prometheus metric paddock exports: the names, their labels, and the
//! helper functions the code doing the work calls to record them (the VM
//! manager for queue waits and boots, the executor for steps and run ends, the
//! reconciler for reaped leaks, the forwarder for deliveries). No other module
//! names a metric.
//!
//! Counters and histograms are recorded where things happen (through the
//! helpers below); gauges that describe current state (VMs, queue, outbox,
//! hosts) are computed from the store when `/metrics` is scraped, so they can
//! never drift from what the store says.

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::runs::Outcome;

pub const RUNS_FINISHED: &str = "paddock_runs_finished_total";
pub const RUNS_QUEUED: &str = "paddock_runs_queued";
pub const RUNS_IN_FLIGHT: &str = "paddock_runs_in_flight";
pub const QUEUE_WAIT: &str = "paddock_run_queue_wait_seconds";
pub const BOOT_READY: &str = "paddock_boot_to_ready_seconds";
pub const STEP_DURATION: &str = "paddock_step_duration_seconds";
pub const VMS: &str = "paddock_vms";
pub const HOST_UP: &str = "paddock_host_up";
pub const OUTBOX_PENDING: &str = "paddock_outbox_pending";
pub const OUTBOX_OLDEST_AGE: &str = "paddock_outbox_oldest_age_seconds";
pub const SSH_CONNECT_FAILURES: &str = "paddock_ssh_connect_failures_total";
pub const LEAKED_DOMAINS_REAPED: &str = "paddock_leaked_domains_reaped_total";
pub const LOG_FOLLOWS: &str = "paddock_log_follows";
pub const VMS_LOST: &str = "paddock_vm_lost_total";
pub const FIRES_SKIPPED: &str = "paddock_fires_skipped_total";
pub const OUTBOX_DELIVERED: &str = "paddock_outbox_delivered_total";
pub const OUTBOX_FAILURES: &str = "paddock_outbox_failures_total";
pub const OWNER_RESTARTS: &str = "paddock_owner_restarts_total";
pub const HTTP_CONNECTIONS_REFUSED: &str = "paddock_http_connections_refused_total";
pub const RECORDER_RETENTION_REMOVED: &str = "paddock_recorder_retention_removed_total";
pub const RUN_DIRS_REMOVED: &str = "paddock_run_dirs_removed_total";
pub const READY_CLONES: &str = "paddock_ready_clones";

/// Seconds; boots under TCG take tens of seconds, builds take minutes to hours.
const BOOT_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];
const WAIT_BUCKETS: &[f64] = &[0.1, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];
const STEP_BUCKETS: &[f64] = &[0.1, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle; later calls
/// return the same handle. Metrics recorded before this call are lost.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(BOOT_READY.into()), BOOT_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(QUEUE_WAIT.into()), WAIT_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STEP_DURATION.into()), STEP_BUCKETS))
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be global (a test harness); the handle
            // then renders only what this one saw, which is still well-formed.
            if ::metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be sparse");
            }
            handle
        })
        .clone()
}

/// A recorder retention pass removed `results` (with their steps) and `files` of `bytes`.
pub fn recorder_retention_removed(results: u64, files: u64, bytes: u64) {
    ::metrics::counter!(RECORDER_RETENTION_REMOVED, "what" => "results").increment(results);
    ::metrics::counter!(RECORDER_RETENTION_REMOVED, "what" => "files").increment(files);
    ::metrics::counter!(RECORDER_RETENTION_REMOVED, "what" => "file_bytes").increment(bytes);
}

/// The daemon's retention removed `n` run folders (logs and artifacts) from its state dir.
pub fn run_dirs_removed(n: u64) {
    ::metrics::counter!(RUN_DIRS_REMOVED).increment(n);
}

/// A run ended with `outcome`.
pub fn run_finished(outcome: Outcome) {
    ::metrics::counter!(RUNS_FINISHED, "outcome" => outcome.as_str()).increment(1);
}

/// A launch left the VM manager's queue (its first placement) after waiting `secs` for a host.
pub fn queue_waited(secs: f64) {
    ::metrics::histogram!(QUEUE_WAIT).record(secs);
}

/// A VM of `image` answered on SSH `secs` after it was started.
pub fn boot_ready(image: &str, secs: f64) {
    ::metrics::histogram!(BOOT_READY, "image" => image.to_string()).record(secs);
}

/// A step of `job` of `kind` (setup/build/test) finished after `secs`.
pub fn step_finished(job: &str, kind: &str, secs: f64) {
    ::metrics::histogram!(STEP_DURATION, "job" => job.to_string(), "kind" => kind.to_string()).record(secs);
}

/// An SSH connection to a guest of `image` failed (each attempt counts).
pub fn ssh_connect_failed(image: &str) {
    ::metrics::counter!(SSH_CONNECT_FAILURES, "image" => image.to_string()).increment(1);
}

/// The reconciler destroyed a domain on `host` that no run owned.
pub fn leaked_domain_reaped(host: &str) {
    ::metrics::counter!(LEAKED_DOMAINS_REAPED, "host" => host.to_string()).increment(1);
}

/// A run's VM stopped behind paddock's back while steps ran.
pub fn vm_lost() {
    ::metrics::counter!(VMS_LOST).increment(1);
}

/// A scheduled fire of `job` was skipped: its previous run still goes.
pub fn fire_skipped(job: &str) {
    ::metrics::counter!(FIRES_SKIPPED, "job" => job.to_string()).increment(1);
}

/// An outbox entry reached `recorder` (`Ok`) or an attempt failed (`Err`).
pub fn outbox_attempt(recorder: &str, delivered: bool) {
    let name = if delivered { OUTBOX_DELIVERED } else { OUTBOX_FAILURES };
    ::metrics::counter!(name, "recorder" => recorder.to_string()).increment(1);
}

/// An owner task (`access`, `forwarder`) panicked and was started again.
pub fn owner_restarted(owner: &'static str) {
    ::metrics::counter!(OWNER_RESTARTS, "owner" => owner).increment(1);
}

/// A connection past `limits.http_connections` was answered 503 and closed.
pub fn http_connection_refused() {
    ::metrics::counter!(HTTP_CONNECTIONS_REFUSED).increment(1);
}

/// The current state, as read from the store at scrape time.
pub struct Snapshot {
    pub queued: usize,
    pub in_flight: usize,
    /// (host, state, count); hosts without a VM in some state are still listed.
    pub vms: Vec<(String, String, usize)>,
    pub hosts_up: Vec<(String, bool)>,
    /// (recorder, pending, oldest age in seconds).
    pub outbox: Vec<(String, usize, f64)>,
    pub log_follows: usize,
    /// (image, host, idle ready-pool clones); pooled images are listed on every host even at 0.
    pub ready_clones: Vec<(String, String, usize)>,
}

/// Label sets seen at earlier scrapes, so a VM state or recorder that drops to
/// zero reads 0 instead of keeping its last value.
static SEEN_VMS: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());
static SEEN_OUTBOX: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Sets the state gauges from `snap`.
pub fn set_snapshot(snap: &Snapshot) {
    ::metrics::gauge!(RUNS_QUEUED).set(snap.queued as f64);
    ::metrics::gauge!(RUNS_IN_FLIGHT).set(snap.in_flight as f64);
    ::metrics::gauge!(LOG_FOLLOWS).set(snap.log_follows as f64);
    {
        let mut seen = SEEN_VMS.lock().unwrap_or_else(|e| e.into_inner());
        for (host, state) in seen.iter() {
            if !snap.vms.iter().any(|(h, s, _)| h == host && s == state) {
                ::metrics::gauge!(VMS, "host" => host.clone(), "state" => state.clone()).set(0.0);
            }
        }
        for (host, state, n) in &snap.vms {
            ::metrics::gauge!(VMS, "host" => host.clone(), "state" => state.clone()).set(*n as f64);
            seen.insert((host.clone(), state.clone()));
        }
    }
    for (image, host, n) in &snap.ready_clones {
        ::metrics::gauge!(READY_CLONES, "image" => image.clone(), "host" => host.clone()).set(*n as f64);
    }
    for (host, up) in &snap.hosts_up {
        ::metrics::gauge!(HOST_UP, "host" => host.clone()).set(if *up { 1.0 } else { 0.0 });
    }
    let mut seen = SEEN_OUTBOX.lock().unwrap_or_else(|e| e.into_inner());
    for r in seen.iter() {
        if !snap.outbox.iter().any(|(x, _, _)| x == r) {
            ::metrics::gauge!(OUTBOX_PENDING, "recorder" => r.clone()).set(0.0);
            ::metrics::gauge!(OUTBOX_OLDEST_AGE, "recorder" => r.clone()).set(0.0);
        }
    }
    for (r, n, age) in &snap.outbox {
        ::metrics::gauge!(OUTBOX_PENDING, "recorder" => r.clone()).set(*n as f64);
        ::metrics::gauge!(OUTBOX_OLDEST_AGE, "recorder" => r.clone()).set(*age);
        seen.insert(r.clone());
    }
}
