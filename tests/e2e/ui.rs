//! The daemon's face against real runs on the bundled guest: `paddock run
//! --follow` for a passing and a failing job, and the dashboard in headless
//! Chromium following a run's live log.

use std::process::Command;
use std::time::Duration;

use paddock::runs::Trigger;

use super::*;
use crate::support::{artifacts, chromium};

const JOBS: &str = r#"
[[jobs]]
name = "passes"
images = ["tiny"]
maintainers = ["alice"]
[[jobs.steps]]
name = "greet"
type = "build"
command = "echo hello-from-the-guest"

[[jobs]]
name = "fails"
images = ["tiny"]
maintainers = ["alice"]
[[jobs.steps]]
name = "broken"
type = "test"
command = "echo about-to-fail; exit 7"

[[jobs]]
name = "chatty"
images = ["tiny"]
maintainers = ["alice"]
[[jobs.steps]]
name = "count"
type = "build"
command = "i=1; while [ $i -le 40 ]; do echo line-$i; i=$((i+1)); sleep 0.25; done"
"#;

fn follow(url: &str, token: &str, job: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(["run", job, "--follow"])
        .env("PADDOCK_URL", url)
        .env("PADDOCK_TOKEN", token)
        .output()
        .expect("run paddock run --follow")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_follow_exits_with_the_runs_success() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(fleet(dir.path(), "23300-23309", PER_VM, JOBS)).await;
    let _guard = DomainGuard::new(dir.path());
    let token = daemon.store.create_token("alice").await.unwrap().token;
    let url = format!("http://{}", daemon.addr);
    let (ok, bad) = tokio::join!(
        tokio::task::spawn_blocking({
            let (url, token) = (url.clone(), token.clone());
            move || follow(&url, &token, "passes")
        }),
        tokio::task::spawn_blocking({
            let (url, token) = (url.clone(), token.clone());
            move || follow(&url, &token, "fails")
        }),
    );
    let (ok, bad) = (ok.unwrap(), bad.unwrap());
    let out = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "stdout: {out}\nstderr: {}", String::from_utf8_lossy(&ok.stderr));
    assert!(out.contains("hello-from-the-guest"), "{out}");
    let err = String::from_utf8_lossy(&ok.stderr);
    assert!(err.contains(": provisioning") && err.contains(": done"), "states shown: {err}");
    let out = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "stdout: {out}\nstderr: {}", String::from_utf8_lossy(&bad.stderr));
    assert!(out.contains("about-to-fail"), "{out}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("step `broken` failed"));

    // `paddock results` reads the embedded recorder once the forwarder delivered.
    let results = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_paddock"))
            .arg("results")
            .args(args)
            .env("PADDOCK_URL", &url)
            .env("PADDOCK_TOKEN", &token)
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = results(&["fails"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("FAILED") {
            assert!(text.contains("x86_64"), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "results never showed the failure: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = results(&["--json"]);
    let packages: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = packages.as_array().unwrap().iter().map(|p| p["package"].as_str().unwrap()).collect();
    assert!(names.contains(&"passes") && names.contains(&"fails"), "{packages}");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_follows_a_real_run_live() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet(dir.path(), "23310-23319", PER_VM, JOBS);
    fleet.daemon.public_reads = true;
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let url = format!("http://{}", daemon.addr);
    let id = daemon.runs.trigger("chatty", None, Trigger::Manual { by: "alice".into() }).await.unwrap().remove(0);
    let log = dir.path().join("state/logs").join(&id).join("run.log");
    // Open the dashboard once the step is printing, well before it is done.
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("line-2\n") {
        assert!(std::time::Instant::now() < deadline, "the run never started printing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_open = std::fs::read_to_string(&log).unwrap();
    assert!(!at_open.contains("line-40\n"), "the step finished before the browser opened");
    let profile = dir.path().join("chromium");
    let dom = chromium::page(&profile.join("dash"), &format!("{url}/"), None, Duration::from_secs(30)).await;
    // The live pane received lines the log did not have when the page was opened.
    assert!(dom.contains("line-40"), "live log did not grow: {dom}");
    // Click through: the page links to the run.
    let href = format!("/runs/{id}");
    assert!(dom.contains(&format!("href=\"{href}\"")), "no link to the run: {dom}");
    let run_dom = chromium::page(&profile.join("run"), &format!("{url}{href}"), None, Duration::from_secs(30)).await;
    assert!(run_dom.contains("count") && run_dom.contains("line-40"), "{run_dom}");
    chromium::page(&profile.join("shot1"), &format!("{url}/"), Some(&artifacts().join("dashboard-real-run.png")), Duration::from_secs(30))
        .await;
    chromium::page(
        &profile.join("shot2"),
        &format!("{url}{href}"),
        Some(&artifacts().join("run-page-real-run.png")),
        Duration::from_secs(30),
    )
    .await;
    daemon.stop().await.unwrap();
}
