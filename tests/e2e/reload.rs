//! SIGHUP to the real `paddock serve` while a run's step is running in a real VM:
//! a broken `fleet.toml` is refused with its located error and the old jobs stay;
//! a change to a restart-only section is refused naming the section; a good file
//! adds a job that `paddock jobs` shows at once, and the running run ends in success.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use paddock::store::Store;

use super::*;

/// `paddock serve` with its log (stderr, `info`) going to a file the test reads.
struct LoggedServe {
    child: Child,
    url: String,
}

impl LoggedServe {
    fn start(config: &Path, log: &Path) -> LoggedServe {
        let mut child = Command::new(env!("CARGO_BIN_EXE_paddock"))
            .args(["serve", "--listen", "127.0.0.1:0", "--demo", "--config"])
            .arg(config)
            .env("PADDOCK_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start paddock serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("paddock listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string();
        LoggedServe { child, url }
    }

    fn hup(&self) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) }, 0);
    }

    /// The names `paddock jobs --json` lists.
    fn jobs(&self) -> Vec<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_paddock")).args(["jobs", "--json", "--url", &self.url]).output().unwrap();
        assert!(out.status.success(), "paddock jobs: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().unwrap().iter().map(|j| j["name"].as_str().unwrap().to_string()).collect()
    }
}

impl Drop for LoggedServe {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

/// Waits until the log holds `count` lines containing `needle`; returns the log.
async fn wait_for_log(log: &Path, needle: &str, count: usize) -> String {
    wait_for(&format!("{count}× {needle:?} in the daemon log"), Duration::from_secs(20), async || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        (text.matches(needle).count() >= count).then_some(text)
    })
    .await
}

/// The first run in the store that `want` accepts, once there is one.
async fn run_where(what: &str, limit: Duration, store: &Store, want: impl Fn(&RunRow) -> bool) -> RunRow {
    wait_for(what, limit, async || store.runs(Default::default()).await.ok()?.into_iter().find(|r| want(r))).await
}

const LONG_JOB: &str = r#"
[[jobs]]
name = "long"
images = ["tiny"]
[[jobs.steps]]
name = "wait"
type = "build"
command = "echo up; sleep 30; echo finished"
"#;

const NEW_JOB: &str = r#"
[[jobs]]
name = "nightly"
images = ["tiny"]
schedule = "0 3 * * *"
[[jobs.steps]]
name = "hello"
type = "test"
command = "echo hello"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_good_fleet_and_keeps_the_old_one_on_error_while_a_run_goes_on() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    fleet(dir.path(), "24600-24609", PER_VM, LONG_JOB);
    let config = dir.path().join("fleet.toml");
    // Reads without a token, so `paddock jobs` needs none.
    let good = std::fs::read_to_string(&config).unwrap().replacen("[daemon]\n", "[daemon]\npublic_reads = true\n", 1);
    std::fs::write(&config, &good).unwrap();
    let log = dir.path().join("serve.log");
    let serve = LoggedServe::start(&config, &log);
    let _guard = DomainGuard::new(dir.path());
    let store = Store::open(&dir.path().join("state/paddock.db")).await.unwrap();
    let run = run_where("the demo run's step to run", Duration::from_secs(240), &store, |r| r.state.starts_with("running:")).await;
    assert_eq!(serve.jobs(), vec!["long"]);

    // 1. A broken file: the located error is logged and the old jobs stay.
    let broken = format!("{good}{}", NEW_JOB.replace("images = [\"tiny\"]", "images = [\"win7\"]"));
    std::fs::write(&config, &broken).unwrap();
    serve.hup();
    let line = broken[..broken.find("[\"win7\"]").unwrap()].matches('\n').count() + 1;
    let located = format!("{}:{line}:11: jobs[1].images: no image named `win7`; known: `tiny`", config.display());
    let text = wait_for_log(&log, "fleet file not reloaded: keeping the running configuration", 1).await;
    assert!(text.contains(&located), "expected {located:?} in the log:\n{text}");
    assert_eq!(serve.jobs(), vec!["long"]);

    // 2. A valid file that changes a host: only a restart applies that, so nothing changes.
    std::fs::write(&config, format!("{good}{NEW_JOB}").replacen("max_vms = 4", "max_vms = 3", 1)).unwrap();
    serve.hup();
    let text = wait_for_log(&log, "fleet file not reloaded: keeping the running configuration", 2).await;
    assert!(text.contains("[[hosts]] changed in"), "{text}");
    assert_eq!(serve.jobs(), vec!["long"]);

    // 3. A good file: the new job is listed without a restart.
    std::fs::write(&config, format!("{good}{NEW_JOB}")).unwrap();
    serve.hup();
    wait_until("`nightly` in `paddock jobs`", Duration::from_secs(20), async || serve.jobs() == ["long", "nightly"]).await;
    let text = wait_for_log(&log, "fleet file reloaded", 1).await;
    assert!(text.contains(r#"added=["nightly"]"#), "{text}");
    assert!(text.contains(r#"scheduled=["nightly"]"#), "{text}");

    // The run was running through all three reloads, and ends as it would have.
    let now = store.run(&run.id).await.unwrap().unwrap();
    assert!(now.state.starts_with("running:"), "the run left its step during the reloads: {}", now.state);
    let end = run_where("the run to finish", Duration::from_secs(120), &store, |r| r.id == run.id && finished(r)).await;
    assert_eq!((end.state.as_str(), end.outcome.as_deref()), ("done", Some("success")), "{end:?}");
    let run_log = std::fs::read_to_string(dir.path().join("state/logs").join(&run.id).join("run.log")).unwrap();
    assert!(run_log.contains("finished"), "{run_log}");
}
