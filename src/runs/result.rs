//! The result document of a run, in pony-build's shape: `client_info`, the
//! ordered list of step dicts, and paddock's own fields under `extras`.
//!
//! This is a wire type (it is stored in the outbox and sent to recorders), so it
//! is built as JSON here and nowhere else.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::state::Outcome;

/// One step as the recorder sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub name: String,
    pub kind: String,
    pub command: String,
    /// Exit status; `None` when the step timed out, was killed or skipped (sent as -1).
    pub status: Option<i32>,
    pub output: String,
    pub errout: String,
    pub duration_s: f64,
    pub timed_out: bool,
    pub skipped: bool,
}

/// Everything a result document is made of.
pub struct ResultInput<'a> {
    pub run_id: &'a str,
    pub job: &'a str,
    pub job_tags: &'a [String],
    pub image: &'a str,
    /// The platform's stable name (the image's `platform`, else its name): the result's `host`.
    pub platform: &'a str,
    pub os: &'a str,
    pub arch: &'a str,
    pub vm_name: Option<&'a str>,
    pub host: Option<&'a str>,
    pub trigger: &'a str,
    pub outcome: Outcome,
    pub reason: Option<&'a str>,
    pub steps: &'a [StepRecord],
    pub scheduled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    pub console_tail: Option<&'a str>,
    /// The run this one re-runs after an infrastructure failure.
    pub retry: Option<&'a crate::store::RetryRow>,
    /// The run queued to re-run this one (its result then goes to no recorder).
    pub retried_by: Option<&'a str>,
    /// The run's fetched artifacts (`<run>/artifacts/`), delivered as files with the result.
    pub artifacts: &'a [Artifact],
    /// How fast the run got its VM, when it got one.
    pub timings: Option<Timings>,
}

/// One fetched artifact: its file name under `<run>/artifacts/` and its size.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub name: String,
    pub size: u64,
}

/// Where a run's time went before its first step's output (issue 18).
#[derive(Debug, Clone, PartialEq)]
pub struct Timings {
    /// `cold`, `warm` (restored from the image's template) or `cold-after-warm-failed`.
    pub start: &'static str,
    /// Why a warm start fell back to a cold boot.
    pub warm_fallback: Option<String>,
    /// From the VM's start (or restore) to readiness.
    pub boot_s: f64,
    /// From the guest's SSH banner to the first byte of the first step's output.
    pub banner_to_first_byte_s: Option<f64>,
    /// Whether the session that proved the VM ready ran the steps (one handshake).
    pub one_handshake: bool,
}

pub fn document(r: &ResultInput<'_>) -> Value {
    let started = r.started_at.unwrap_or(r.created_at);
    let duration = (r.finished_at - started).num_milliseconds().max(0) as f64 / 1000.0;
    // The tags name the platform only: the VM and the hypervisor it ran on change from run to
    // run and go in `extras`, so every run of a job on one image lands in one tagset.
    let mut tags: Vec<String> = vec![r.os.to_string(), r.arch.to_string(), r.image.to_string()];
    tags.extend(r.job_tags.iter().cloned());
    let failure_kind = match r.outcome {
        Outcome::Success => Value::Null,
        Outcome::BuildFailure => json!("build"),
        Outcome::Infrastructure | Outcome::Interrupted => json!("infrastructure"),
        Outcome::Cancelled => json!("cancelled"),
    };
    let steps: Vec<Value> = r
        .steps
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "type": s.kind,
                "command": s.command,
                // pony-build's status is an exit code; a step that never exited
                // (timed out, killed, skipped) reports -1 and says why below.
                "status": s.status.unwrap_or(-1),
                "output": s.output,
                "errout": s.errout,
                "duration": s.duration_s,
                "timed_out": s.timed_out,
                "skipped": s.skipped,
            })
        })
        .collect();
    json!({
        "client_info": {
            "package": r.job,
            "arch": r.arch,
            "host": r.platform,
            "tags": tags,
            "success": r.outcome == Outcome::Success,
            "duration": duration,
            "paddock_run_id": r.run_id,
        },
        "results": steps,
        "extras": {
            "run_id": r.run_id,
            "image": r.image,
            "platform": r.platform,
            "vm_name": r.vm_name,
            "os": r.os,
            "hypervisor_host": r.host,
            "trigger": r.trigger,
            "outcome": r.outcome.as_str(),
            "failure_kind": failure_kind,
            "reason": r.reason,
            "scheduled_at": r.scheduled_at.map(|t| t.to_rfc3339()),
            "created_at": r.created_at.to_rfc3339(),
            "started_at": r.started_at.map(|t| t.to_rfc3339()),
            "finished_at": r.finished_at.to_rfc3339(),
            "console_tail": r.console_tail,
            "attempt": r.retry.map_or(1, |l| l.attempt),
            "retry": r.retry.map(|l| json!({
                "retry_of": l.retry_of,
                "attempt": l.attempt,
                "attempts": l.attempts,
                "note": l.note,
            })),
            "retried_by": r.retried_by,
            "artifacts": r.artifacts.iter().map(|a| json!({"name": a.name, "size": a.size})).collect::<Vec<_>>(),
            "timings": r.timings.as_ref().map(|t| json!({
                "start": t.start,
                "warm_fallback": t.warm_fallback,
                "boot_s": t.boot_s,
                "banner_to_first_byte_s": t.banner_to_first_byte_s,
                "one_handshake": t.one_handshake,
            })),
        },
        "idempotency_key": r.run_id,
    })
}
