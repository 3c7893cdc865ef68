//! `paddock runs show` against a real daemon and real runs of the bundled guest: one whose
//! second step fails (reason, each step's result, VM, host, log, delivery to the embedded
//! recorder) and one whose guest never answers SSH (the reason and the console tail it kept),
//! found by a unique prefix of the id; an ambiguous prefix and an unknown id are refused.

use std::time::Duration;

use paddock::runs::Trigger;

use super::*;
use crate::support::cli_output::{field, row};

const JOBS: &str = r#"
[[jobs]]
name = "fails"
images = ["tiny"]
[[jobs.steps]]
name = "greet"
type = "build"
command = "echo pdkl5-hello"
[[jobs.steps]]
name = "broken"
type = "test"
command = "echo about-to-fail; exit 7"
[[jobs.steps]]
name = "after"
type = "test"
command = "echo never"

[[jobs]]
name = "mute"
images = ["mute"]
[[jobs.steps]]
name = "x"
type = "build"
command = "echo must-not-run"
"#;

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn show(url: &str, token: &str, run: &str) -> Out {
    let (url, token, run) = (url.to_string(), token.to_string(), run.to_string());
    let o = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_paddock"))
            .args(["runs", "show", &run])
            .env("PADDOCK_URL", url)
            .env("PADDOCK_TOKEN", token)
            .env("PADDOCK_LOG", "warn")
            .output()
            .expect("run paddock runs show")
    })
    .await
    .unwrap();
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_show_tells_why_a_run_failed_with_its_steps_vm_console_and_delivery() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    // The kernel finds no init and no root device, panics and halts, so SSH never answers. Its
    // console shows the boot from its first half second (`earlyprintk`), so a short deadline
    // still keeps lines to show on a loaded machine (with the bundled initramfs and no
    // `earlyprintk`, 25 s was not always enough for any output at a load of 16 on 2 cores).
    let mute = crate::support::guest::mute_image(dir.path(), "mute", &format!("boot_timeout = \"15s\"\n{PER_VM}"));
    let src = fleet_src(dir.path(), "25800-25809", PER_VM, &[], "", &format!("{mute}{JOBS}")).replacen(
        "reconcile_interval = \"5s\"",
        "reconcile_interval = \"5s\"\nlaunch_retries = 1",
        1,
    );
    let daemon = start(load_fleet(dir.path(), &src)).await;
    let _guard = DomainGuard::new(dir.path());
    let by = || Trigger::Manual { by: "alice".into() };
    let failing = daemon.runs.trigger("fails", None, by()).await.unwrap().remove(0);
    let silent = daemon.runs.trigger("mute", None, by()).await.unwrap().remove(0);
    for id in [&failing, &silent] {
        wait_for_run(&daemon, id, Duration::from_secs(300), finished).await;
        wait_until("the result to reach the embedded recorder", Duration::from_secs(60), async || {
            let entries = daemon.store.outbox_for_run(id).await.unwrap();
            !entries.is_empty() && entries.iter().all(|e| e.delivered_at.is_some())
        })
        .await;
    }
    let token = daemon.store.create_token("alice").await.unwrap().token;
    let url = format!("http://{}", daemon.addr);

    // The failing run, by the shortest prefix of its id that the other run's id lacks.
    let unique = (1..=failing.len()).map(|n| &failing[..n]).find(|p| !silent.starts_with(p)).unwrap();
    let o = show(&url, &token, unique).await;
    assert_eq!(o.code, Some(0), "stdout:\n{}\nstderr:\n{}", o.stdout, o.stderr);
    let s = &o.stdout;
    let stored = daemon.store.run(&failing).await.unwrap().unwrap();
    assert_eq!(field(s, "run"), failing);
    assert_eq!(field(s, "job"), "fails");
    assert_eq!(field(s, "image"), "tiny");
    assert_eq!(field(s, "state"), "failed");
    assert_eq!(field(s, "outcome"), "build-failure");
    assert_eq!(field(s, "reason"), "step `broken` failed");
    assert_eq!(field(s, "trigger"), "manual by alice");
    assert_eq!(field(s, "host"), "local");
    assert_eq!(field(s, "vm"), stored.vm_name.unwrap());
    let log = dir.path().join("state/logs").join(&failing).join("run.log");
    assert!(field(s, "log").starts_with(&format!("{} ", log.display())), "{s}");
    assert!(field(s, "finished").contains(" ago, took "), "{s}");
    assert_eq!(row(s, &["1", "greet"])[2..4], ["build", "ok"], "{s}");
    assert_eq!(row(s, &["2", "broken"])[2..5], ["test", "exit", "7"], "{s}");
    assert_eq!(row(s, &["3", "after"])[2..4], ["test", "skipped"], "{s}");
    assert_eq!(row(s, &["embedded"])[1], "delivered", "{s}");
    assert!(!s.contains("console, last lines"), "a run that failed in a step keeps no console tail:\n{s}");

    // The run whose guest never answered: its reason and the console's last lines say why.
    let o = show(&url, &token, &silent).await;
    assert_eq!(o.code, Some(0), "stdout:\n{}\nstderr:\n{}", o.stdout, o.stderr);
    let s = &o.stdout;
    assert_eq!(field(s, "outcome"), "infrastructure");
    assert!(field(s, "reason").contains("no SSH banner"), "{s}");
    // What the guest printed (kept in its result, never empty for a guest that booted a kernel)
    // is printed line by line under the fields.
    let doc: serde_json::Value = serde_json::from_str(&daemon.store.run(&silent).await.unwrap().unwrap().result_json.unwrap()).unwrap();
    let kept = doc["extras"]["console_tail"].as_str().unwrap().to_string();
    assert!(!kept.trim().is_empty(), "the guest printed nothing in its boot deadline: {doc}");
    let console = s.split("console, last lines:\n").nth(1).unwrap_or_else(|| panic!("no console tail:\n{s}"));
    for line in kept.lines().filter(|l| !l.chars().any(char::is_control)) {
        assert!(console.contains(&format!("  {line}\n")), "`{line}` is not shown:\n{s}");
    }
    assert!(s.contains("\nsteps: none ran\n"), "{s}");
    assert_eq!(row(s, &["embedded"])[1], "delivered", "{s}");

    // A prefix both ids start with names neither; an id nobody has is refused.
    let common: String = failing.chars().zip(silent.chars()).take_while(|(a, b)| a == b).map(|(a, _)| a).collect();
    assert!(!common.is_empty(), "{failing} {silent}");
    let o = show(&url, &token, &common).await;
    assert_eq!(o.code, Some(1), "{}", o.stdout);
    assert!(o.stderr.contains(&format!("`{common}` is the start of 2 run ids")), "{}", o.stderr);
    assert!(o.stderr.contains(&failing) && o.stderr.contains(&silent), "{}", o.stderr);
    let o = show(&url, &token, "pdkl5-none").await;
    assert_eq!(o.code, Some(1), "{}", o.stdout);
    assert!(o.stderr.contains("no run `pdkl5-none`"), "{}", o.stderr);

    let prefix = format!("paddock-{}-", instance_id(dir.path()));
    wait_until("every VM to be gone", Duration::from_secs(120), async || domains_named(&prefix).is_empty()).await;
    daemon.stop().await.unwrap();
}
