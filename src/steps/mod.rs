//! The step runner: runs a job's steps in order on a connected guest, streams their stdout and
//! stderr live (to log files and to followers), enforces timeouts by killing the step's process
//! tree in the guest, and records one result per step.
//!
//! Log format on disk: for step N (1-based), `step-NN.stdout` and `step-NN.stderr` in the run's
//! log directory hold the raw bytes of each stream, in arrival order, exactly as the guest sent
//! them. A stream longer than [`OutputCaps::log_bytes`] keeps its first and last halves with
//! one line `[paddock: K bytes cut]` between them. The result keeps the same shape with the
//! smaller [`OutputCaps::result_bytes`].

pub mod capture;
pub mod inputs;
pub mod mask;
pub mod posix;
pub mod windows;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::config::{Shell, Step, StepKind};
use crate::ssh::{ExecEvent, ExitStatus, Session, SshError, Stream};
use capture::{Capture, LogFile};
use windows::WindowsStepError;

/// One chunk of live output, for followers of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    /// 1-based step index.
    pub step: usize,
    pub stream: Stream,
    pub data: Bytes,
}

/// How much output is kept per step and stream.
#[derive(Debug, Clone, Copy)]
pub struct OutputCaps {
    /// In the step result (and so in the result document).
    pub result_bytes: usize,
    /// In the log file on disk.
    pub log_bytes: u64,
}

impl Default for OutputCaps {
    fn default() -> Self {
        OutputCaps { result_bytes: 1 << 20, log_bytes: 64 << 20 }
    }
}

/// How a job's steps are run.
#[derive(Debug, Clone)]
pub struct StepsConfig {
    pub shell: Shell,
    pub stop_if_failure: bool,
    pub caps: OutputCaps,
    /// After a kill, how long to wait for the guest to report the step's end before giving up
    /// on its channel.
    pub kill_wait: Duration,
    /// Values masked as `***` in every byte of output before it is logged, kept or streamed.
    pub secrets: mask::Secrets,
    /// A step whose stdout and stderr together pass this many bytes is killed and fails
    /// (`limits.step_kill_after`): a runaway step does not burn the host's CPU for hours.
    pub kill_after: Option<u64>,
}

impl StepsConfig {
    pub fn new(shell: Shell, stop_if_failure: bool) -> StepsConfig {
        StepsConfig {
            shell,
            stop_if_failure,
            caps: OutputCaps::default(),
            kill_wait: Duration::from_secs(10),
            secrets: mask::Secrets::default(),
            kill_after: None,
        }
    }
}

/// Where a run's output goes, and how it is cancelled.
pub struct StepIo {
    pub log_dir: PathBuf,
    pub live: broadcast::Sender<OutputChunk>,
    /// Becomes `true` to cancel: the current step is killed in the guest, the rest skipped.
    pub cancel: watch::Receiver<bool>,
    /// Told the 1-based index of each step just before it starts (the run's
    /// state follows it), when given.
    pub progress: Option<watch::Sender<usize>>,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    Exited(u32),
    /// Killed by a signal it did not get from paddock.
    Signalled(String),
    TimedOut,
    Cancelled,
    /// Killed by paddock once its output passed `limits.step_kill_after`.
    OutputLimit,
    /// Not run: an earlier step failed with `stop_if_failure`, or the run was cancelled.
    Skipped,
    /// The connection broke or the guest never said how the step ended.
    Lost,
}

/// The record of one step.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// 1-based.
    pub index: usize,
    pub name: String,
    pub kind: StepKind,
    /// The step's command as the job wrote it (not the wrapper sent over the wire).
    pub command: String,
    pub outcome: StepOutcome,
    /// The exit code, when the step exited by itself.
    pub status: Option<u32>,
    /// Why there is no exit code (timeout, signal, cancel, skip, lost connection).
    pub reason: Option<String>,
    /// Head and tail, capped at [`OutputCaps::result_bytes`]; raw bytes.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes the step wrote, before any cut.
    pub stdout_total: u64,
    pub stderr_total: u64,
    pub started_at: Option<DateTime<Utc>>,
    pub duration: Duration,
    /// From sending the command to the first byte of the step's own output.
    pub first_output: Option<Duration>,
    pub timed_out: bool,
    pub skipped: bool,
    pub ignore_failure: bool,
}

impl StepResult {
    pub fn passed(&self) -> bool {
        self.outcome == StepOutcome::Exited(0)
    }

    /// Whether this step makes the run fail.
    pub fn fails_run(&self) -> bool {
        !self.passed() && !self.skipped && !self.ignore_failure
    }

    /// stdout for text documents: invalid UTF-8 becomes U+FFFD.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    fn skipped(index: usize, step: &Step, reason: &str) -> StepResult {
        StepResult {
            index,
            name: step.name.clone(),
            kind: step.kind,
            command: step.command.clone(),
            outcome: StepOutcome::Skipped,
            status: None,
            reason: Some(reason.to_owned()),
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_total: 0,
            stderr_total: 0,
            started_at: None,
            duration: Duration::ZERO,
            first_output: None,
            timed_out: false,
            skipped: true,
            ignore_failure: step.ignore_failure,
        }
    }
}

/// Failures of the machinery, not of the build: they make the run an infrastructure failure.
#[derive(Debug, thiserror::Error)]
pub enum StepsError {
    #[error("env name {name:?} cannot be exported by a shell")]
    BadEnvName { name: String },
    #[error("cannot build the script of step {step}")]
    WindowsScript { step: usize, source: WindowsStepError },
    #[error("cannot upload the script of step {step}")]
    Upload { step: usize, source: SshError },
    #[error("cannot start step {step}")]
    Start { step: usize, source: SshError },
    #[error("the guest did not run the kill of step {step} within {waited:?}")]
    KillTimedOut { step: usize, waited: std::time::Duration },
    #[error("cannot kill step {step} in the guest")]
    Kill { step: usize, source: SshError },
    #[error("the guest never said how step {step} (`{command}`) ended")]
    Lost { step: usize, command: String },
    #[error("cannot write the log {path}")]
    Log { path: PathBuf, source: std::io::Error },
}

/// Every step's result, in order, and what stopped the run early if anything did.
#[derive(Debug)]
pub struct StepsReport {
    pub steps: Vec<StepResult>,
    pub cancelled: bool,
    pub infrastructure: Option<StepsError>,
}

impl StepsReport {
    /// The build passed: no infrastructure failure, no cancel, no failing step that counts.
    pub fn success(&self) -> bool {
        self.infrastructure.is_none() && !self.cancelled && !self.steps.iter().any(StepResult::fails_run)
    }
}

/// The log file of step `index`'s `stream`.
pub fn log_path(log_dir: &Path, index: usize, stream: Stream) -> PathBuf {
    log_dir.join(format!("step-{index:02}.{}", stream.as_str()))
}

/// What goes over the wire for one step.
enum Wire {
    Posix(posix::PosixStep),
    Windows(windows::WindowsStep),
}

/// Runs `steps` in order on `session` with `env` exported.
pub async fn run_steps(
    session: &Session,
    steps: &[Step],
    env: &BTreeMap<String, String>,
    config: &StepsConfig,
    io: &mut StepIo,
) -> StepsReport {
    let mut report = StepsReport { steps: Vec::with_capacity(steps.len()), cancelled: false, infrastructure: None };
    if let Some(name) = env.keys().find(|n| !posix::valid_env_name(n)) {
        report.infrastructure = Some(StepsError::BadEnvName { name: name.clone() });
    }
    let mut stop: Option<&'static str> = None;
    for (i, step) in steps.iter().enumerate() {
        let index = i + 1;
        if *io.cancel.borrow() {
            report.cancelled = true;
        }
        let skip_reason = if report.infrastructure.is_some() {
            Some("an infrastructure failure stopped the run")
        } else if report.cancelled {
            Some("the run was cancelled")
        } else {
            stop
        };
        if let Some(reason) = skip_reason {
            report.steps.push(StepResult::skipped(index, step, reason));
            continue;
        }
        if let Some(p) = &io.progress {
            p.send_replace(index);
        }
        let (result, error) = run_one(session, index, step, env, config, io).await;
        if result.outcome == StepOutcome::Cancelled {
            report.cancelled = true;
        }
        if config.stop_if_failure && result.fails_run() {
            stop = Some("an earlier step failed and the job stops on failure");
        }
        report.steps.push(result);
        if report.infrastructure.is_none() {
            report.infrastructure = error;
        }
    }
    report
}

/// Collects one step's output.
struct Sink<'a> {
    index: usize,
    logs: [LogFile; 2],
    captures: [Capture; 2],
    masks: [mask::StreamMask; 2],
    live: &'a broadcast::Sender<OutputChunk>,
    log_error: Option<StepsError>,
}

impl Sink<'_> {
    fn push(&mut self, stream: Stream, data: Bytes) {
        let i = match stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        };
        let data = Bytes::from(self.masks[i].push(&data));
        self.write(i, stream, data);
    }

    /// The end of both streams: what a mask held back is written now.
    fn flush(&mut self) {
        for (i, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            let rest = self.masks[i].finish();
            if !rest.is_empty() {
                self.write(i, stream, Bytes::from(rest));
            }
        }
    }

    fn write(&mut self, i: usize, stream: Stream, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if self.log_error.is_none()
            && let Err(source) = self.logs[i].write(&data)
        {
            self.log_error = Some(StepsError::Log { path: self.logs[i].path().to_owned(), source });
        }
        self.captures[i].push(&data);
        // No follower is fine; a slow one lags and is told so by the broadcast channel.
        let _ = self.live.send(OutputChunk { step: self.index, stream, data });
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stopped {
    TimedOut,
    Cancelled,
    OutputLimit,
}

async fn run_one(
    session: &Session,
    index: usize,
    step: &Step,
    env: &BTreeMap<String, String>,
    config: &StepsConfig,
    io: &mut StepIo,
) -> (StepResult, Option<StepsError>) {
    let mut result = StepResult::skipped(index, step, "");
    result.skipped = false;
    result.reason = None;
    result.started_at = Some(Utc::now());
    let t0 = Instant::now();
    let fail = |mut result: StepResult, reason: String, err: StepsError| {
        result.outcome = StepOutcome::Lost;
        result.reason = Some(reason);
        result.duration = t0.elapsed();
        (result, Some(err))
    };

    let wire = match config.shell {
        Shell::Sh => Wire::Posix(posix::step_command(&step.command, env)),
        shell => match windows::windows_step(shell, index, &step.command, env) {
            Ok(w) => Wire::Windows(w),
            Err(source) => {
                let err = StepsError::WindowsScript { step: index, source };
                return fail(result, err.to_string(), err);
            }
        },
    };
    let (command, stdin) = match &wire {
        Wire::Posix(p) => (p.command.clone(), p.stdin.clone()),
        Wire::Windows(w) => {
            for upload in &w.uploads {
                if let Err(source) = session.upload(&upload.path, &upload.bytes).await {
                    let err = StepsError::Upload { step: index, source };
                    return fail(result, err.to_string(), err);
                }
            }
            (w.command.clone(), Vec::new())
        }
    };

    let mut logs = Vec::with_capacity(2);
    for stream in [Stream::Stdout, Stream::Stderr] {
        let path = log_path(&io.log_dir, index, stream);
        match LogFile::create(&path, config.caps.log_bytes) {
            Ok(f) => logs.push(f),
            Err(source) => {
                let err = StepsError::Log { path, source };
                return fail(result, err.to_string(), err);
            }
        }
    }
    let logs: [LogFile; 2] = logs.try_into().expect("two log files");
    let mut sink = Sink {
        index,
        logs,
        captures: [Capture::new(config.caps.result_bytes), Capture::new(config.caps.result_bytes)],
        masks: [mask::StreamMask::new(config.secrets.clone()), mask::StreamMask::new(config.secrets.clone())],
        live: &io.live,
        log_error: None,
    };

    let mut process = match session.exec(&command, stdin).await {
        Ok(p) => p,
        Err(source) => {
            let err = StepsError::Start { step: index, source };
            return fail(result, err.to_string(), err);
        }
    };

    // POSIX steps print their process group id as the first stdout line; it is not output.
    let mut pgid_line: Option<Vec<u8>> = matches!(wire, Wire::Posix(_)).then(Vec::new);
    let mut pgid: Option<u32> = None;
    let step_deadline = t0 + step.timeout;
    let mut stopped: Option<Stopped> = None;
    let mut give_up_at = step_deadline;
    let mut error: Option<StepsError> = None;
    let mut cancel = io.cancel.clone();

    let status = loop {
        let cancelled = async {
            // A dropped sender means nobody can cancel any more.
            if cancel.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let why = tokio::select! {
            event = process.next() => match event {
                Some(ExecEvent::Output(stream, mut data)) => {
                    if stream == Stream::Stdout && let Some(line) = pgid_line.as_mut() {
                        match data.iter().position(|b| *b == b'\n') {
                            Some(nl) => {
                                line.extend_from_slice(&data[..nl]);
                                pgid = std::str::from_utf8(line).ok().and_then(|s| s.trim().parse().ok());
                                pgid_line = None;
                                data = data.slice(nl + 1..);
                            }
                            None => {
                                line.extend_from_slice(&data);
                                data = Bytes::new();
                            }
                        }
                        if data.is_empty() {
                            continue;
                        }
                    }
                    if result.first_output.is_none() {
                        result.first_output = Some(t0.elapsed());
                    }
                    sink.push(stream, data);
                    let printed = sink.captures[0].total() + sink.captures[1].total();
                    match config.kill_after {
                        Some(max) if stopped.is_none() && printed > max => Stopped::OutputLimit,
                        _ => continue,
                    }
                }
                Some(ExecEvent::Exited(status)) => break status,
                None => break ExitStatus::Unknown,
            },
            () = tokio::time::sleep_until(step_deadline), if stopped.is_none() => Stopped::TimedOut,
            () = cancelled, if stopped.is_none() => Stopped::Cancelled,
            () = tokio::time::sleep_until(give_up_at), if stopped.is_some() => {
                process.close().await;
                break ExitStatus::Unknown;
            }
        };
        stopped = Some(why);
        give_up_at = Instant::now() + config.kill_wait;
        let kill = match (&wire, pgid) {
            (Wire::Posix(_), Some(pgid)) => Some(posix::kill_command(pgid)),
            // The shell has not even printed its PID: closing the channel makes sshd hang up
            // on it, which is all that can be done.
            (Wire::Posix(_), None) => None,
            (Wire::Windows(w), _) => Some(w.kill_command.clone()),
        };
        match kill {
            // The kill runs within the step's own give-up timer: a guest that never answers
            // it cannot keep the step (and the run) waiting.
            Some(kill) => match tokio::time::timeout_at(give_up_at, session.exec_collect(&kill, Vec::new())).await {
                Ok(Ok(_)) => {}
                Ok(Err(source)) => {
                    error.get_or_insert(StepsError::Kill { step: index, source });
                }
                Err(_) => {
                    error.get_or_insert(StepsError::KillTimedOut { step: index, waited: config.kill_wait });
                    process.close().await;
                }
            },
            None => process.close().await,
        }
    };

    result.duration = t0.elapsed();
    sink.flush();
    let Sink { logs, captures, log_error, .. } = sink;
    let [out_log, err_log] = logs;
    for log in [out_log, err_log] {
        let path = log.path().to_owned();
        if let Err(source) = log.finish() {
            error.get_or_insert(StepsError::Log { path, source });
        }
    }
    if let Some(e) = log_error {
        error.get_or_insert(e);
    }
    let [out, err] = captures;
    result.stdout_total = out.total();
    result.stderr_total = err.total();
    result.stdout = out.finish();
    result.stderr = err.finish();

    match (stopped, status) {
        (Some(Stopped::TimedOut), _) => {
            result.outcome = StepOutcome::TimedOut;
            result.timed_out = true;
            result.reason = Some(format!("timed out after {:?}", step.timeout));
        }
        (Some(Stopped::Cancelled), _) => {
            result.outcome = StepOutcome::Cancelled;
            result.reason = Some("cancelled".into());
        }
        (Some(Stopped::OutputLimit), _) => {
            result.outcome = StepOutcome::OutputLimit;
            result.reason =
                Some(format!("killed after printing more than {} bytes (limits.step_kill_after)", config.kill_after.unwrap_or_default()));
        }
        (None, ExitStatus::Code(code)) => {
            result.outcome = StepOutcome::Exited(code);
            result.status = Some(code);
        }
        (None, ExitStatus::Signal { name, core_dumped }) => {
            result.reason = Some(format!("killed by SIG{name}{}", if core_dumped { " (core dumped)" } else { "" }));
            result.outcome = StepOutcome::Signalled(name);
        }
        (None, ExitStatus::Unknown) => {
            result.outcome = StepOutcome::Lost;
            result.reason = Some("the guest did not report an exit status".into());
            error.get_or_insert(StepsError::Lost { step: index, command: step.command.clone() });
        }
    }
    (result, error)
}
