//! The SSH adapter and the step runner against a real OpenSSH server on 127.0.0.1.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use paddock::config::{Shell, Step, StepKind};
use paddock::ssh::{self, ClientKey, ExitStatus, HostKeyCheck, Session, SshConfig, SshError, Stream, Target, connect, connect_with_retry};
use paddock::steps::{self, OutputCaps, OutputChunk, StepIo, StepOutcome, StepsConfig, StepsReport, run_steps};
use support::sshd::{Prepared, Sshd, random_key};
use support::{free_port, wait_until};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

async fn session(sshd: &Sshd) -> Session {
    connect(&sshd.target(), &sshd.client.auth(), &sshd.host_key_check(), &SshConfig::default())
        .await
        .unwrap_or_else(|e| panic!("connect: {e:?}\n{}", sshd.log()))
}

fn step(name: &str, command: &str) -> Step {
    Step { name: name.into(), kind: StepKind::Build, command: command.into(), timeout: Duration::from_secs(60), ignore_failure: false }
}

struct Run {
    report: StepsReport,
    chunks: Vec<OutputChunk>,
    log_dir: tempfile::TempDir,
}

async fn run(session: &Session, steps: &[Step], config: &StepsConfig, cancel: watch::Receiver<bool>) -> Run {
    run_with_env(session, steps, &BTreeMap::new(), config, cancel, None).await
}

async fn run_with_env(
    session: &Session,
    steps: &[Step],
    env: &BTreeMap<String, String>,
    config: &StepsConfig,
    cancel: watch::Receiver<bool>,
    live: Option<broadcast::Sender<OutputChunk>>,
) -> Run {
    let log_dir = tempfile::tempdir().unwrap();
    let live = live.unwrap_or_else(|| broadcast::channel(4096).0);
    let mut follower = live.subscribe();
    let mut io = StepIo { log_dir: log_dir.path().to_owned(), live, cancel, progress: None };
    let report = run_steps(session, steps, env, config, &mut io).await;
    drop(io);
    let mut chunks = Vec::new();
    while let Ok(c) = follower.recv().await {
        chunks.push(c);
    }
    Run { report, chunks, log_dir }
}

fn no_cancel() -> watch::Receiver<bool> {
    // Keeping the sender alive would be the same; a dropped one must mean "never cancelled".
    watch::channel(false).1
}

/// Whether a process whose command line contains `needle` runs in the guest (checked over SSH).
async fn remote_process_running(session: &Session, needle: &str) -> bool {
    // procps needs -e to list everything; busybox ps lists everything and has no -e.
    let (out, _, status) = session.exec_collect("ps -eo args 2>/dev/null || ps -o args", Vec::new()).await.unwrap();
    assert!(status.success());
    String::from_utf8_lossy(&out).lines().any(|l| l.contains(needle) && !l.contains("ps -"))
}

#[tokio::test]
async fn client_key_is_created_once_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let a = ClientKey::load_or_create(dir.path()).unwrap();
    let path = dir.path().join("keys/client_ed25519");
    assert_eq!(a.path(), path);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(dir.path().join("keys")).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(a.public_line().starts_with("ssh-ed25519 AAAA"), "{}", a.public_line());
    assert_eq!(std::fs::read_to_string(path.with_extension("pub")).unwrap().trim(), a.public_line());
    let b = ClientKey::load_or_create(dir.path()).unwrap();
    assert_eq!(a.public_key(), b.public_key(), "a second start must reuse the key");
}

#[tokio::test]
async fn host_key_mismatch_is_refused_with_both_fingerprints() {
    let sshd = Sshd::start();
    let wrong = random_key().public_key().clone();
    let err = connect(&sshd.target(), &sshd.client.auth(), &HostKeyCheck::exact(wrong.clone()), &SshConfig::default())
        .await
        .err()
        .expect("a wrong host key must be refused");
    let msg = err.to_string();
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err:?}");
    assert!(msg.contains(&ssh::fingerprint(&wrong)), "{msg}");
    assert!(msg.contains(&ssh::fingerprint(&sshd.host_key)), "{msg}");
    assert!(msg.contains("SHA256:"), "{msg}");
    // Not retried: waiting cannot make the key right.
    let started = Instant::now();
    let err = connect_with_retry(
        &sshd.target(),
        &sshd.client.auth(),
        &HostKeyCheck::exact(wrong),
        &SshConfig::default(),
        Instant::now() + Duration::from_secs(30),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn connect_with_retry_times_out_with_the_last_error_then_succeeds_once_sshd_listens() {
    let port = free_port();
    let target = Target { addr: ([127, 0, 0, 1], port).into(), user: "root".into() };
    let key = ClientKey::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
    let started = Instant::now();
    let err = connect_with_retry(
        &target,
        &key.auth(),
        &HostKeyCheck::exact(random_key().public_key().clone()),
        &SshConfig::default(),
        Instant::now() + Duration::from_millis(400),
    )
    .await
    .err()
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    match err {
        SshError::Timeout { last, .. } => assert!(matches!(*last, SshError::Connect { .. }), "{last:?}"),
        other => panic!("expected a timeout, got {other:?}"),
    }

    // Now a server that comes up while paddock is already trying: its keys are made first,
    // it starts listening only after the first attempts have been refused.
    let prepared = Prepared::new();
    let (client, host_key) = (prepared.client.clone(), prepared.host.public_key().clone());
    let attempt = tokio::spawn(async move {
        connect_with_retry(
            &target,
            &client.auth(),
            &HostKeyCheck::exact(host_key),
            &SshConfig::default(),
            Instant::now() + Duration::from_secs(10),
        )
        .await
    });
    let started = std::time::Instant::now();
    let sshd = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(300));
        prepared.spawn(port).expect("sshd on the chosen port")
    })
    .await
    .unwrap();
    let session = attempt.await.unwrap().unwrap_or_else(|e| panic!("{e:?}\n{}", sshd.log()));
    assert!(started.elapsed() >= Duration::from_millis(300));
    let (out, _, _) = session.exec_collect("echo up", Vec::new()).await.unwrap();
    assert_eq!(out, b"up\n");
}

#[tokio::test]
async fn exec_streams_stdout_and_stderr_separately_with_exit_status_and_stdin() {
    let sshd = Sshd::start();
    let s = session(&sshd).await;
    let (out, err, status) = s.exec_collect("printf out1; printf err1 >&2; printf out2; exit 3", Vec::new()).await.unwrap();
    assert_eq!(out, b"out1out2");
    assert_eq!(err, b"err1");
    assert_eq!(status, ExitStatus::Code(3));

    let (out, err, status) = s.exec_collect("cat; echo done >&2", b"from stdin\n".to_vec()).await.unwrap();
    assert_eq!(out, b"from stdin\n");
    assert_eq!(err, b"done\n");
    assert!(status.success());

    let (_, _, status) = s.exec_collect("kill -s TERM $$", Vec::new()).await.unwrap();
    assert_eq!(status, ExitStatus::Signal { name: "TERM".into(), core_dumped: false });

    // Chunks arrive as they are written, each tagged with its stream.
    let mut p = s.exec("echo a; sleep 0.2; echo b >&2; sleep 0.2; echo c", Vec::new()).await.unwrap();
    let mut events = Vec::new();
    while let Some(e) = p.next().await {
        events.push(e);
    }
    use paddock::ssh::ExecEvent::*;
    assert_eq!(
        events,
        vec![
            Output(Stream::Stdout, "a\n".into()),
            Output(Stream::Stderr, "b\n".into()),
            Output(Stream::Stdout, "c\n".into()),
            Exited(ExitStatus::Code(0)),
        ]
    );
}

#[tokio::test]
async fn three_step_job_with_failing_second_step() {
    let sshd = Sshd::start();
    let s = session(&sshd).await;
    let steps = [
        step("configure", "echo one; echo one-err >&2; echo \"$GREETING\""),
        step("build", "sleep 0.1; echo two; exit 4"),
        step("test", "echo three"),
    ];
    let env = BTreeMap::from([("GREETING".to_owned(), "it's $HOME `x`".to_owned())]);
    let run = run_with_env(&s, &steps, &env, &StepsConfig::new(Shell::Sh, true), no_cancel(), None).await;
    let r = &run.report;
    assert!(r.infrastructure.is_none(), "{:?}", r.infrastructure);
    assert!(!r.success());
    assert_eq!(
        r.steps.iter().map(|s| s.outcome.clone()).collect::<Vec<_>>(),
        vec![StepOutcome::Exited(0), StepOutcome::Exited(4), StepOutcome::Skipped]
    );
    assert_eq!(r.steps.iter().map(|s| s.status).collect::<Vec<_>>(), vec![Some(0), Some(4), None]);
    assert_eq!(r.steps[0].stdout, b"one\nit's $HOME `x`\n");
    assert_eq!(r.steps[0].stderr, b"one-err\n");
    assert_eq!(r.steps[1].stdout, b"two\n");
    assert_eq!(r.steps[1].command, "sleep 0.1; echo two; exit 4");
    assert_eq!(r.steps[1].name, "build");
    assert!(r.steps[2].skipped && r.steps[2].stdout.is_empty());
    for st in &r.steps[..2] {
        assert!(st.duration > Duration::ZERO);
        assert!(st.started_at.is_some());
        assert!(st.first_output.is_some_and(|f| f <= st.duration));
    }
    assert!(r.steps[1].duration >= Duration::from_millis(100));
    // The log on disk holds what the result holds, stream by stream.
    for st in &r.steps[..2] {
        let out = std::fs::read(steps::log_path(run.log_dir.path(), st.index, Stream::Stdout)).unwrap();
        let err = std::fs::read(steps::log_path(run.log_dir.path(), st.index, Stream::Stderr)).unwrap();
        assert_eq!(out, st.stdout);
        assert_eq!(err, st.stderr);
    }
    assert!(!steps::log_path(run.log_dir.path(), 3, Stream::Stdout).exists());
    // Followers saw the same bytes, tagged with step and stream.
    let followed: Vec<u8> = run.chunks.iter().filter(|c| c.step == 1 && c.stream == Stream::Stdout).flat_map(|c| c.data.to_vec()).collect();
    assert_eq!(followed, r.steps[0].stdout);
    assert!(run.chunks.iter().any(|c| c.step == 1 && c.stream == Stream::Stderr && &c.data[..] == b"one-err\n"));

    // The same job with an ignored failure goes on and passes.
    let mut lenient = steps.clone();
    lenient[1].ignore_failure = true;
    let run1 = self::run(&s, &lenient, &StepsConfig::new(Shell::Sh, true), no_cancel()).await;
    assert_eq!(run1.report.steps[2].outcome, StepOutcome::Exited(0));
    assert_eq!(run1.report.steps[2].stdout, b"three\n");
    assert!(run1.report.success());

    // And without stop_if_failure the third step runs but the run fails.
    let run2 = self::run(&s, &steps, &StepsConfig::new(Shell::Sh, false), no_cancel()).await;
    assert_eq!(run2.report.steps[2].outcome, StepOutcome::Exited(0));
    assert!(!run2.report.success());
}

#[tokio::test]
async fn step_timeout_kills_the_remote_process_group() {
    let sshd = Sshd::start();
    let s = session(&sshd).await;
    let observer = session(&sshd).await;
    let mut slow = step("hang", "echo started; sleep 3171 & sleep 3172; echo never");
    slow.timeout = Duration::from_secs(2);
    let steps = [slow, step("after", "echo after")];
    let config = StepsConfig::new(Shell::Sh, true);
    let (run, ()) = tokio::join!(run(&s, &steps, &config, no_cancel()), async {
        // Both sleeps run in the guest while the step runs…
        wait_until("the step's sleeps", Duration::from_secs(10), || async {
            remote_process_running(&observer, "sleep 3171").await && remote_process_running(&observer, "sleep 3172").await
        })
        .await;
    });
    let r = &run.report;
    assert_eq!(r.steps[0].outcome, StepOutcome::TimedOut);
    assert!(r.steps[0].timed_out);
    assert_eq!(r.steps[0].status, None);
    assert!(r.steps[0].reason.as_deref().unwrap().contains("timed out"));
    assert_eq!(r.steps[0].stdout, b"started\n");
    assert!(r.steps[0].duration >= Duration::from_secs(2) && r.steps[0].duration < Duration::from_secs(10));
    assert_eq!(r.steps[1].outcome, StepOutcome::Skipped);
    assert!(r.infrastructure.is_none(), "{:?}", r.infrastructure);
    // …and neither the foreground nor the background one survives the kill.
    wait_until("the sleeps to be gone", Duration::from_secs(5), || async {
        !remote_process_running(&observer, "sleep 3171").await && !remote_process_running(&observer, "sleep 3172").await
    })
    .await;
}

#[tokio::test]
async fn cancel_mid_step_kills_it_and_skips_the_rest() {
    let sshd = Sshd::start();
    let s = session(&sshd).await;
    let observer = session(&sshd).await;
    let steps = [step("long", "echo started; sleep 3181"), step("next", "echo next")];
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let live: broadcast::Sender<OutputChunk> = broadcast::channel(64).0;
    let mut follower = live.subscribe();
    let canceller = async {
        // Cancel as soon as the step has visibly started.
        while let Ok(chunk) = follower.recv().await {
            if &chunk.data[..] == b"started\n" {
                assert!(remote_process_running(&observer, "sleep 3181").await);
                cancel_tx.send(true).unwrap();
                break;
            }
        }
    };
    let started = Instant::now();
    let (env, config) = (BTreeMap::new(), StepsConfig::new(Shell::Sh, true));
    let (run, ()) = tokio::join!(run_with_env(&s, &steps, &env, &config, cancel_rx, Some(live)), canceller);
    assert!(started.elapsed() < Duration::from_secs(20));
    let r = &run.report;
    assert!(r.cancelled);
    assert!(!r.success());
    assert_eq!(r.steps[0].outcome, StepOutcome::Cancelled);
    assert_eq!(r.steps[1].outcome, StepOutcome::Skipped);
    wait_until("the sleep to be gone", Duration::from_secs(5), || async { !remote_process_running(&observer, "sleep 3181").await }).await;
}

#[tokio::test]
async fn output_over_the_cap_keeps_head_and_tail() {
    let sshd = Sshd::start();
    let s = session(&sshd).await;
    let mut config = StepsConfig::new(Shell::Sh, true);
    config.caps = OutputCaps { result_bytes: 1000, log_bytes: 4000 };
    let steps = [step("big", "printf HEAD; head -c 100000 /dev/zero | tr '\\000' x; printf TAIL; printf small >&2")];
    let run = run(&s, &steps, &config, no_cancel()).await;
    let st = &run.report.steps[0];
    assert_eq!(st.outcome, StepOutcome::Exited(0));
    assert_eq!(st.stdout_total, 100_008);
    let marker = |n: u64| format!("\n[paddock: {n} bytes cut]\n");
    let mut expected = b"HEAD".to_vec();
    expected.extend(std::iter::repeat_n(b'x', 496));
    expected.extend_from_slice(marker(99_008).as_bytes());
    expected.extend(std::iter::repeat_n(b'x', 496));
    expected.extend_from_slice(b"TAIL");
    assert_eq!(String::from_utf8(st.stdout.clone()).unwrap(), String::from_utf8(expected).unwrap());
    assert_eq!(st.stderr, b"small");
    let on_disk = std::fs::read(steps::log_path(run.log_dir.path(), 1, Stream::Stdout)).unwrap();
    assert_eq!(on_disk.len(), 4000 + marker(96_008).len());
    assert!(on_disk.starts_with(b"HEADxxx") && on_disk.ends_with(b"xxxTAIL"));
    assert!(String::from_utf8_lossy(&on_disk).contains(&marker(96_008)));
}

#[tokio::test]
async fn a_step_printing_past_kill_after_is_killed_and_fails_naming_the_limit() {
    let sshd = Sshd::start();
    let s = session(&sshd).await;
    let observer = session(&sshd).await;
    let mut config = StepsConfig::new(Shell::Sh, true);
    config.caps = OutputCaps { result_bytes: 1000, log_bytes: 4000 };
    config.kill_after = Some(1 << 20);
    // Endless output: only the limit ends it (the marker names this step's process).
    let steps = [step("endless", "yes pdkt3-kill-after-4417"), step("later", "echo not-run")];
    let started = Instant::now();
    let run = run(&s, &steps, &config, no_cancel()).await;
    assert!(started.elapsed() < Duration::from_secs(60));
    let st = &run.report.steps[0];
    assert_eq!(st.outcome, StepOutcome::OutputLimit);
    assert_eq!(st.reason.as_deref(), Some("killed after printing more than 1048576 bytes (limits.step_kill_after)"));
    assert!(st.stdout_total > 1 << 20);
    assert!(!run.report.success());
    assert_eq!(run.report.steps[1].outcome, StepOutcome::Skipped);
    wait_until("the endless step to be gone", Duration::from_secs(5), || async {
        !remote_process_running(&observer, "pdkt3-kill-after-4417").await
    })
    .await;
}

#[tokio::test]
async fn non_utf8_output_is_kept_as_bytes() {
    let sshd = Sshd::start();
    let s = session(&sshd).await;
    let steps = [step("binary", "printf '\\377\\376abc\\n'; printf '\\300' >&2")];
    let run = run(&s, &steps, &StepsConfig::new(Shell::Sh, true), no_cancel()).await;
    let st = &run.report.steps[0];
    assert_eq!(st.outcome, StepOutcome::Exited(0));
    assert_eq!(st.stdout, b"\xff\xfeabc\n");
    assert_eq!(st.stderr, b"\xc0");
    assert_eq!(st.stdout_text(), "\u{fffd}\u{fffd}abc\n");
    assert_eq!(st.stderr_text(), "\u{fffd}");
    assert_eq!(std::fs::read(steps::log_path(run.log_dir.path(), 1, Stream::Stdout)).unwrap(), b"\xff\xfeabc\n");
}

#[tokio::test]
async fn upload_then_download_round_trip() {
    let sshd = Sshd::start();
    let s = session(&sshd).await;
    let remote_dir = sshd.dir.path().join("guest-files");
    let path = format!("{}/blob.bin", remote_dir.display());
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    s.upload(&path, &data).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data, "the guest holds exactly the uploaded bytes");
    assert_eq!(s.download(&path, 1 << 20).await.unwrap(), data);
    // Replacing a file truncates it.
    s.upload(&path, b"short").await.unwrap();
    assert_eq!(s.download(&path, 5).await.unwrap(), b"short");
    match s.download(&path, 4).await {
        Err(SshError::TooLarge { size: 5, cap: 4, .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    match s.download(&format!("{}/missing", remote_dir.display()), 10).await {
        Err(SshError::Sftp { op: "stat", .. }) => {}
        other => panic!("expected an SFTP error, got {other:?}"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn user_cert(ca: &ssh_key::PrivateKey, key: &ssh_key::PublicKey, valid_after: u64, valid_before: u64) -> ssh_key::Certificate {
    let mut rng = ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng);
    let mut b = ssh_key::certificate::Builder::new_with_random_nonce(&mut rng, key.key_data().clone(), valid_after, valid_before).unwrap();
    b.serial(1).unwrap();
    b.key_id("paddock-test").unwrap();
    b.cert_type(ssh_key::certificate::CertType::User).unwrap();
    b.valid_principal("root").unwrap();
    b.sign(ca).unwrap()
}

#[tokio::test]
async fn login_with_a_user_certificate_and_refusal_of_an_expired_one() {
    let sshd = Sshd::start();
    // A key that is NOT in authorized_keys: only the certificate can let it in.
    let dir = tempfile::tempdir().unwrap();
    let key = ClientKey::load_or_create(dir.path()).unwrap();
    let denied = connect(&sshd.target(), &key.auth(), &sshd.host_key_check(), &SshConfig::default()).await;
    assert!(matches!(denied, Err(SshError::AuthRejected { .. })), "{:?}", denied.err());

    let now = unix_now();
    let cert = user_cert(&sshd.ca, key.public_key(), now - 60, now + 3600);
    let s = connect(&sshd.target(), &key.auth_with_certificate(cert), &sshd.host_key_check(), &SshConfig::default())
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", sshd.log()));
    let (out, _, status) = s.exec_collect("id -un", Vec::new()).await.unwrap();
    assert!(status.success());
    assert_eq!(out, b"root\n");

    let expired = user_cert(&sshd.ca, key.public_key(), now - 7200, now - 3600);
    let err = connect(&sshd.target(), &key.auth_with_certificate(expired), &sshd.host_key_check(), &SshConfig::default())
        .await
        .err()
        .expect("an expired certificate must be refused");
    assert!(matches!(err, SshError::AuthRejected { method: "certificate", .. }), "{err:?}");
}

#[tokio::test]
async fn keepalives_notice_a_frozen_server() {
    let sshd = Sshd::start();
    let config = SshConfig { keepalive_interval: Duration::from_millis(300), keepalive_max: 2, ..SshConfig::default() };
    let s = connect(&sshd.target(), &sshd.client.auth(), &sshd.host_key_check(), &config).await.unwrap();
    assert!(s.exec_collect("true", Vec::new()).await.unwrap().2.success());
    let pids = sshd.connection_pids();
    assert!(!pids.is_empty());
    // Freeze the connection's sshd processes: the TCP connection stays open but nothing answers,
    // as with a guest that hangs.
    for pid in &pids {
        unsafe { libc::kill(*pid, libc::SIGSTOP) };
    }
    wait_until("the session to notice the dead peer", Duration::from_secs(10), || async { s.is_closed() }).await;
    for pid in &pids {
        unsafe { libc::kill(*pid, libc::SIGCONT) };
    }
}
