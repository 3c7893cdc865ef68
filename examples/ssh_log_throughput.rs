//! Measures log throughput: a step printing 200 MB through paddock's exec + logging, against
//! the OpenSSH client doing the same into /dev/null, both to a throwaway sshd on 127.0.0.1.
//!
//! Run as root: `cargo run --release --example ssh_log_throughput`. Measured here (2 cores,
//! release, 3 runs): paddock 192–272 MB/s, `ssh > /dev/null` 229–269 MB/s; debug build 120 MB/s.

#[path = "../tests/support/sshd.rs"]
mod sshd;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paddock::config::{Shell, Step, StepKind};
use paddock::ssh::{SshConfig, connect};
use paddock::steps::{StepIo, StepOutcome, StepsConfig, run_steps};

const BYTES: u64 = 200_000_000;

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let server = sshd::Sshd::start();
    let session = connect(&server.target(), &server.client.auth(), &server.host_key_check(), &SshConfig::default()).await.expect("connect");
    let log_dir = tempfile::tempdir().unwrap();
    let (live, mut follower) = tokio::sync::broadcast::channel::<paddock::steps::OutputChunk>(1024);
    // A follower that reads everything, as a live log viewer would.
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            match follower.recv().await {
                Ok(c) => n += c.data.len() as u64,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return n,
            }
        }
    });
    let mut io = StepIo { log_dir: log_dir.path().to_owned(), live, cancel: tokio::sync::watch::channel(false).1, progress: None };
    let step = Step {
        name: "flood".into(),
        kind: StepKind::Test,
        command: format!("head -c {BYTES} /dev/zero"),
        timeout: Duration::from_secs(600),
        ignore_failure: false,
    };
    let config = StepsConfig::new(Shell::Sh, true);
    let t = Instant::now();
    let report = run_steps(&session, std::slice::from_ref(&step), &BTreeMap::new(), &config, &mut io).await;
    let paddock = t.elapsed();
    drop(io);
    let followed = reader.await.unwrap();
    let st = &report.steps[0];
    assert_eq!(st.outcome, StepOutcome::Exited(0));
    assert_eq!(st.stdout_total, BYTES);

    let t = Instant::now();
    let status = Command::new("ssh")
        .args(["-p", &server.port.to_string(), "-i"])
        .arg(server.client_key_path())
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
        .arg("root@127.0.0.1")
        .arg(format!("head -c {BYTES} /dev/zero"))
        .stdout(Stdio::null())
        .status()
        .expect("run ssh");
    let openssh = t.elapsed();
    assert!(status.success());

    println!(
        "paddock exec+logging: {:.1} MB/s ({BYTES} bytes in {paddock:.2?}; first byte after {:?}; follower got {followed} bytes)",
        mb_per_s(BYTES, paddock),
        st.first_output.unwrap()
    );
    println!("ssh > /dev/null:      {:.1} MB/s ({BYTES} bytes in {openssh:.2?})", mb_per_s(BYTES, openssh));
}
