//! SIGKILL of the daemon binary while a VM is up: after a restart nothing
//! leaks, the run is recorded as interrupted, and its result is forwarded once.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use paddock::store::Store;

use super::*;

pub(super) struct Serve(Child);

impl Serve {
    pub(super) fn start(config: &Path, demo: bool) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_paddock"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(config);
        if demo {
            cmd.arg("--demo");
        }
        let mut child = cmd.env("PADDOCK_LOG", "warn").stdout(Stdio::piped()).spawn().expect("start paddock serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("paddock listening on "), "{line:?}");
        Serve(child)
    }

    pub(super) fn sigkill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
}

/// Starts a daemon with a one-job demo, SIGKILLs it once the run's state
/// satisfies `kill_when`, restarts it, and checks the aftermath.
async fn kill_and_restart(ports: &str, kill_when: fn(&str) -> bool) {
    kill_and_restart_job(
        ports,
        kill_when,
        r#"
[[jobs]]
name = "long"
images = ["tiny"]
[[jobs.steps]]
name = "wait"
type = "build"
command = "echo up; sleep 600"
"#,
    )
    .await
}

async fn kill_and_restart_job(ports: &str, kill_when: fn(&str) -> bool, job: &str) {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path(), ports, PER_VM, job);
    let config = dir.path().join("fleet.toml");
    let first = Serve::start(&config, true);
    let _guard = DomainGuard::new(dir.path());
    let store = Store::open(&dir.path().join("state/paddock.db")).await.unwrap();
    let run = wait_for("the demo run to reach the kill point", Duration::from_secs(240), async || {
        let runs = store.runs(Default::default()).await.ok()?;
        runs.into_iter().find(|r| kill_when(&r.state))
    })
    .await;
    let prefix = format!("paddock-{}-", instance_id(dir.path()));
    let vm = wait_for("the run's domain", Duration::from_secs(60), async || domains_named(&prefix).into_iter().next()).await;
    first.sigkill();
    assert_eq!(domains_named(&vm), vec![vm.clone()], "the VM outlives a SIGKILLed daemon");

    let _second = Serve::start(&config, false);
    // Within one reconciliation period (5 s here) the VM is gone.
    wait_for("the orphaned VM to be reaped", Duration::from_secs(30), async || domains_named(&prefix).is_empty().then_some(())).await;
    assert_eq!(overlays(dir.path()), Vec::<std::path::PathBuf>::new());
    let row = store.run(&run.id).await.unwrap().unwrap();
    assert_eq!(row.state, "failed");
    assert_eq!(row.outcome.as_deref(), Some("interrupted"));
    // Forwarded once to the embedded recorder.
    wait_for("delivery of the interrupted run", Duration::from_secs(30), async || {
        let e = store.outbox_for_run(&run.id).await.ok()?;
        (e.len() == 1 && e[0].delivered_at.is_some()).then_some(())
    })
    .await;
    let rec = rusqlite::Connection::open(dir.path().join("state/recorder.db")).unwrap();
    let n: i64 = rec.query_row("SELECT count(*) FROM submission_keys WHERE key = ?1", [&run.id], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
    // The reaping was recorded.
    assert!(!store.events(None, 50).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_step_leaks_nothing() {
    kill_and_restart("23150-23159", |s| s.starts_with("running:")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_boot_leaks_nothing() {
    kill_and_restart("23160-23169", |s| s == "provisioning").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_collecting_the_result_leaks_nothing() {
    // A 60 MB artifact keeps the run in its collecting phase long enough to be caught there.
    kill_and_restart_job(
        "23350-23359",
        |s| s == "collecting",
        r#"
[[jobs]]
name = "long"
images = ["tiny"]
artifacts = ["/tmp/big.bin"]
[[jobs.steps]]
name = "make-artifact"
type = "build"
command = "head -c 60000000 /dev/urandom > /tmp/big.bin && echo made"
"#,
    )
    .await;
}
