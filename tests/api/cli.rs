//! The real `paddock` binary against a server on port 0 serving the router.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::common::{Lab, lab, serve};
use crate::router::paddock_finish;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cmd(url: &str, token: Option<&str>, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_paddock"));
    c.args(args).env("PADDOCK_URL", url).env_remove("PADDOCK_TOKEN").env("PADDOCK_LOG", "warn");
    if let Some(t) = token {
        c.env("PADDOCK_TOKEN", t);
    }
    c.kill_on_drop(true);
    c
}

async fn paddock(url: &str, token: Option<&str>, args: &[&str]) -> Out {
    let o = cmd(url, token, args).output().await.unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

async fn setup() -> (Lab, String) {
    let l = lab(false).await;
    let url = serve(l.state.clone()).await;
    (l, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_print_tables_and_json() {
    let (l, url) = setup().await;
    let t = Some(l.bob.as_str());
    let o = paddock(&url, t, &["hosts"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(lines[0].starts_with("HOST "), "{}", o.stdout);
    assert!(lines[1].starts_with("local ") && lines[1].contains(" 2/4 ") && lines[1].contains("1536/4096"), "{}", o.stdout);

    let o = paddock(&url, t, &["runs", "--json", "--job", "nightly", "--image", "deb-aarch64"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let ids: Vec<&str> = v.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["r-held", "r-nightly-arm"]);

    let o = paddock(&url, t, &["runs", "--state", "running"]).await;
    assert!(o.stdout.lines().nth(1).unwrap().starts_with("r-running "), "{}", o.stdout);
    assert!(o.stdout.contains("running step 2"), "{}", o.stdout);

    let o = paddock(&url, t, &["status"]).await;
    assert!(o.stdout.contains("runs    1 running, 1 queued, 1 held"), "{}", o.stdout);
    let o = paddock(&url, t, &["jobs"]).await;
    assert!(o.stdout.contains("tiny-x86_64:success deb-aarch64:build-failure deb-s390x:infrastructure"), "{}", o.stdout);
    let o = paddock(&url, t, &["vms", "--json"]).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&o.stdout).unwrap().as_array().unwrap().len(), 2);
    let o = paddock(&url, t, &["outbox"]).await;
    assert_eq!(o.stdout.lines().count(), 7, "a header and six entries:\n{}", o.stdout);
    let o = paddock(&url, t, &["logs", "r-running", "--tail", "1"]).await;
    assert_eq!(o.stdout, "compiling...\n");

    // Errors carry the API's reason and a failing exit status.
    let o = paddock(&url, t, &["runs", "--state", "bogus"]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("filter state=`bogus`") && o.stderr.contains("400"), "{}", o.stderr);
    let o = paddock(&url, None, &["hosts"]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("reading needs a token") && o.stderr.contains("401"), "{}", o.stderr);
    // Flags beat the environment.
    let o = paddock("http://127.0.0.1:9", None, &["status", "--url", &url, "--token", &l.admin]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
}

/// A run an infrastructure failure re-ran: `paddock runs` says which attempt each is and what
/// replaced what, as `GET /api/v1/runs/{id}` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_show_which_attempt_a_retry_is_and_what_re_ran_a_run() {
    use paddock::store::{RetryRow, RunEnd};
    let (l, url) = setup().await;
    let t = Some(l.bob.as_str());
    // First attempt ends as an infrastructure failure; its retry fails the same way and is re-run too.
    l.store.insert_run(&crate::common::row("r-try-1", "demo", "deb-s390x", "queued", 30)).await.unwrap();
    let end = |id: &str| RunEnd {
        run_id: id.into(),
        from: "queued".into(),
        state: "failed".into(),
        outcome: "infrastructure".into(),
        reason: Some("host went away".into()),
        result_json: "{}".into(),
        finished_at: chrono::Utc::now(),
        recorders: Vec::new(),
    };
    for (id, of, attempt) in [("r-try-2", "r-try-1", 2), ("r-try-3", "r-try-2", 3)] {
        let link = RetryRow {
            run_id: id.into(),
            retry_of: of.into(),
            attempt,
            attempts: 3,
            note: format!("retry {} of 2 after infrastructure failure on host local", attempt - 1),
        };
        let mins = 30 - 10 * i64::from(attempt - 1);
        assert!(
            l.store.finish_run_and_retry(end(of), Some((crate::common::row(id, "demo", "deb-s390x", "queued", mins), link))).await.unwrap()
        );
    }

    let o = paddock(&url, t, &["runs", "--image", "deb-s390x", "--job", "demo"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert!(lines[0].ends_with(" RETRY"), "{}", o.stdout);
    assert_eq!(lines.len(), 4, "{}", o.stdout);
    assert!(lines[1].starts_with("r-try-3 ") && lines[1].ends_with(" attempt 3 of 3 (of r-try-2)"), "{}", o.stdout);
    assert!(lines[2].starts_with("r-try-2 ") && lines[2].ends_with(" attempt 2 of 3 (of r-try-1), retried as r-try-3"), "{}", o.stdout);
    assert!(lines[3].starts_with("r-try-1 ") && lines[3].ends_with(" retried as r-try-2"), "{}", o.stdout);
    // A run that was never retried says so with a dash.
    let o = paddock(&url, t, &["runs", "--job", "docs"]).await;
    assert!(o.stdout.lines().nth(1).unwrap().ends_with(" -"), "{}", o.stdout);

    // The JSON carries the same links as the run's detail.
    let o = paddock(&url, t, &["runs", "--json", "--image", "deb-s390x", "--job", "demo"]).await;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v[1]["id"], "r-try-2");
    assert_eq!(v[1]["retry"]["retry_of"], "r-try-1");
    assert_eq!(v[1]["retry"]["attempt"], 2);
    assert_eq!(v[1]["retried_by"], "r-try-3");
    assert!(v[0]["retried_by"].is_null() && v[2]["retry"].is_null(), "{v}");
}

/// `paddock runs show`: one run in full, by its id or a unique prefix of it; a prefix several ids
/// start with and an id nobody has are refused; what a guest wrote is shown escaped, not obeyed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_show_prints_one_run_by_its_id_or_a_unique_prefix() {
    use crate::support::cli_output::{field, row};
    let (l, url) = setup().await;
    let t = Some(l.bob.as_str());
    let o = paddock(&url, t, &["runs", "show", "r-demo-1"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let s = &o.stdout;
    assert_eq!(field(s, "run"), "r-demo-1");
    assert_eq!((field(s, "job"), field(s, "image"), field(s, "state")), ("demo", "tiny-x86_64", "failed"));
    assert_eq!((field(s, "outcome"), field(s, "reason")), ("build-failure", "step `check` exited with 2"));
    assert_eq!((field(s, "trigger"), field(s, "host"), field(s, "vm")), ("schedule", "local", "-"));
    assert!(field(s, "finished").ends_with(" ago, took 1m 40s)"), "{s}");
    assert_eq!(field(s, "log"), "-", "no log file was kept");
    assert_eq!(row(s, &["1", "setup"])[2..], ["setup", "ok", "1.5s"], "{s}");
    assert_eq!(row(s, &["2", "check"])[2..], ["test", "exit", "2", "42.0s"], "{s}");
    // No forwarder runs in this lab: the result waits for its recorder.
    assert_eq!(row(s, &["embedded"])[1..3], ["pending,", "due"], "{s}");

    // A prefix only one id starts with is that run; one that two start with names both.
    let o = paddock(&url, t, &["runs", "show", "r-do"]).await;
    assert_eq!((o.code, field(&o.stdout, "run")), (0, "r-docs-1"), "{}", o.stderr);
    let o = paddock(&url, t, &["runs", "show", "r-demo"]).await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stderr.contains("`r-demo` is the start of 2 run ids (r-demo-2, r-demo-1): give more of the id"), "{}", o.stderr);
    let o = paddock(&url, t, &["runs", "show", "r-nope"]).await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stderr.contains("no run `r-nope`, and no run's id starts with it"), "{}", o.stderr);
    // Reading needs a token, as for the listing; filters do not go with `show`.
    let o = paddock(&url, None, &["runs", "show", "r-demo-1"]).await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stderr.contains("reading needs a token") && o.stderr.contains("401"), "{}", o.stderr);
    let o = paddock(&url, t, &["runs", "--job", "demo", "show", "r-demo-1"]).await;
    assert_eq!(o.code, 1, "{}", o.stdout);
    assert!(o.stderr.contains("`paddock runs show` takes no filters"), "{}", o.stderr);
    // The common flags go before or after `show`.
    let o = paddock(&url, t, &["runs", "--json", "show", "r-demo-1"]).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&o.stdout).unwrap()["id"], "r-demo-1", "{}", o.stderr);

    // A run a guest's console ended: the tail is printed with its escape sequences defused.
    l.store.insert_run(&crate::common::row("r-console", "demo", "tiny-x86_64", "queued", 5)).await.unwrap();
    let doc = serde_json::json!({"results": [], "extras": {"console_tail": "[    2.1] Kernel panic\n\u{1b}[2Jwiped\n"}});
    let end = paddock::store::RunEnd {
        run_id: "r-console".into(),
        from: "queued".into(),
        state: "failed".into(),
        outcome: "infrastructure".into(),
        reason: Some("launching image tiny-x86_64 failed: no SSH banner\u{1b}]0;owned\u{7}".into()),
        result_json: doc.to_string(),
        finished_at: chrono::Utc::now(),
        recorders: Vec::new(),
    };
    l.store.finish_run(end).await.unwrap();
    let o = paddock(&url, t, &["runs", "show", "r-console"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let s = &o.stdout;
    assert!(!s.contains('\u{1b}') && !s.contains('\u{7}'), "{s:?}");
    assert_eq!(field(s, "reason"), "launching image tiny-x86_64 failed: no SSH banner\\u{1b}]0;owned\\u{7}");
    assert!(s.contains("console, last lines:\n  [    2.1] Kernel panic\n  \\u{1b}[2Jwiped\n"), "{s}");
    assert!(s.contains("\nsteps: none ran\n") && s.contains("\nrecorders: sent to no recorder\n"), "{s}");

    // `--json` is the API's detail, with the log path and console tail it adds.
    let o = paddock(&url, t, &["runs", "show", "r-cons", "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["id"], "r-console");
    assert!(v["console_tail"].as_str().unwrap().starts_with("[    2.1] Kernel panic"), "{v}");
    assert!(v["log_path"].is_null() && v["steps"].as_array().unwrap().is_empty(), "{v}");
}

/// `paddock runs show` says how the run's VM started — cold, warm, from the ready pool, or cold
/// after a failed warm start (and why) — and its start timings from the result's
/// `extras.timings`, in the same `key  value` style; `--json` carries them as `timings`; a run
/// whose result has none shows neither line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_show_says_how_the_run_started_and_its_start_timings() {
    use crate::support::cli_output::field;
    let (l, url) = setup().await;
    let t = Some(l.bob.as_str());
    let runs = [
        (
            "r-pool",
            serde_json::json!({"start": "ready-pool", "warm_fallback": null, "boot_s": 2.504, "banner_to_first_byte_s": 0.043, "one_handshake": true}),
        ),
        (
            "r-warm",
            serde_json::json!({"start": "warm", "warm_fallback": null, "boot_s": 1.87, "banner_to_first_byte_s": 0.312, "one_handshake": true}),
        ),
        (
            "r-fell",
            serde_json::json!({"start": "cold-after-warm-failed", "warm_fallback": "restoring the clone: no guest agent\u{1b}[2J", "boot_s": 14.2, "banner_to_first_byte_s": null, "one_handshake": false}),
        ),
        (
            "r-cold",
            serde_json::json!({"start": "cold", "warm_fallback": null, "boot_s": 75.0, "banner_to_first_byte_s": 0.5, "one_handshake": true}),
        ),
    ];
    for (id, timings) in &runs {
        l.store.insert_run(&crate::common::row(id, "demo", "tiny-x86_64", "queued", 5)).await.unwrap();
        let doc = serde_json::json!({"results": [], "extras": {"timings": timings}});
        let end = paddock::store::RunEnd {
            run_id: (*id).into(),
            from: "queued".into(),
            state: "done".into(),
            outcome: "success".into(),
            reason: None,
            result_json: doc.to_string(),
            finished_at: chrono::Utc::now(),
            recorders: Vec::new(),
        };
        l.store.finish_run(end).await.unwrap();
    }
    let show = async |id: &str| {
        let o = paddock(&url, t, &["runs", "show", id]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        o.stdout
    };
    let s = show("r-pool").await;
    assert_eq!(field(&s, "start"), "ready pool: an idle clone taken, no restore on the run's path", "{s}");
    assert_eq!(field(&s, "timings"), "boot 2.50s (at refill), first byte 0.04s after the take, one handshake", "{s}");
    // The fields sit with the VM's, before the times.
    let keys: Vec<&str> = s.lines().take_while(|l| !l.is_empty()).filter_map(|l| l.split_whitespace().next()).collect();
    let at = |k: &str| keys.iter().position(|x| *x == k).unwrap_or_else(|| panic!("no {k} in {keys:?}"));
    assert!(at("vm") < at("start") && at("start") < at("timings") && at("timings") < at("created"), "{s}");
    let s = show("r-warm").await;
    assert_eq!(field(&s, "start"), "warm: restored from the image's template", "{s}");
    assert_eq!(field(&s, "timings"), "boot 1.87s, first byte 0.31s after the SSH banner, one handshake", "{s}");
    let s = show("r-fell").await;
    assert!(!s.contains('\u{1b}'), "{s:?}");
    assert_eq!(field(&s, "start"), "cold, after a failed warm start: restoring the clone: no guest agent\\u{1b}[2J", "{s}");
    assert_eq!(field(&s, "timings"), "boot 14.20s, first byte -, a second handshake for the steps", "{s}");
    let s = show("r-cold").await;
    assert_eq!(
        (field(&s, "start"), field(&s, "timings")),
        ("cold boot", "boot 1m 15s, first byte 0.50s after the SSH banner, one handshake"),
        "{s}"
    );
    // A run whose result holds no timings (the lab's) shows neither line.
    let s = show("r-demo-1").await;
    assert!(!s.lines().any(|l| l.starts_with("start ") || l.starts_with("timings ")), "{s}");

    let o = paddock(&url, t, &["runs", "show", "r-pool", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["timings"], runs[0].1, "{v}");
    let o = paddock(&url, t, &["runs", "show", "r-demo-1", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert!(v["timings"].is_null(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_follow_shows_states_and_exits_with_the_runs_failure() {
    let (l, url) = setup().await;
    let o = paddock(&url, Some(&l.bob), &["run", "demo", "--follow"]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("`bob` is a viewer"), "{}", o.stderr);
    // Without a VM manager the coordinator fails the run as infrastructure.
    let o = paddock(&url, Some(&l.alice), &["run", "demo", "--follow"]).await;
    assert_eq!(o.code, 1, "stdout:\n{}\nstderr:\n{}", o.stdout, o.stderr);
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert!(lines[0].starts_with("started "), "{}", o.stderr);
    let id = lines[0].trim_start_matches("started ");
    assert_eq!(lines.last().unwrap(), &format!("{id}: finished, infrastructure: this daemon has no VM manager"), "{}", o.stderr);
    assert!(lines.iter().any(|l| *l == format!("{id}: failed")), "plain state lines when not a TTY:\n{}", o.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_live_output_until_the_run_ends() {
    let (l, url) = setup().await;
    let mut child = cmd(&url, Some(&l.bob), &["logs", &l.running, "-f"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let deadline = std::time::Duration::from_secs(20);
    // What was written before the follow started arrives first...
    while seen.last().map(String::as_str) != Some("compiling...") {
        let line = tokio::time::timeout(deadline, out.next_line()).await.expect("output in time").unwrap().expect("a line");
        seen.push(line);
    }
    // ... then what the step runner writes while we follow.
    std::fs::write(&l.log, "== step 1: setup\nLinux paddock 6.1\n== step 2: build\ncompiling...\nlinked\n").unwrap();
    l.store.pulses().log_written(&l.running);
    let line = tokio::time::timeout(deadline, out.next_line()).await.expect("live output in time").unwrap();
    assert_eq!(line.as_deref(), Some("linked"));
    paddock_finish(&l.store, &l.running).await;
    let status = tokio::time::timeout(deadline, child.wait()).await.expect("exit after the run ends").unwrap();
    assert!(status.success());
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut err).await.unwrap();
    assert!(err.contains("r-running: running step 2"), "{err}");
    assert!(err.trim_end().ends_with("r-running: finished, success"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_tokens_from_the_command_line() {
    let (l, url) = setup().await;
    let o = paddock(&url, Some(&l.admin), &["cancel", "r-held"]).await;
    assert_eq!((o.code, o.stdout.as_str()), (0, "cancel requested for r-held\n"), "{}", o.stderr);
    let o = paddock(&url, Some(&l.admin), &["cancel", "r-held"]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("cannot be cancelled") && o.stderr.contains("409"), "{}", o.stderr);

    let cfg = l.fleet_path.to_str().unwrap();
    let o = paddock(&url, None, &["token", "create", "carol", "--config", cfg]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let token = o.stdout.trim().to_string();
    assert!(token.starts_with("pdk_"), "{}", o.stdout);
    let id = token.split('_').nth(1).unwrap().to_string();
    // The daemon (here: the test's server) accepts the new token at once.
    assert_eq!(paddock(&url, Some(&token), &["status"]).await.code, 0);
    let o = paddock(&url, None, &["token", "list", "--config", cfg]).await;
    assert!(o.stdout.lines().any(|line| line.starts_with(&id) && line.contains(" carol ") && line.ends_with("live")), "{}", o.stdout);
    assert!(!o.stdout.contains(&token), "secrets are never listed");
    let o = paddock(&url, None, &["token", "revoke", &id, "--config", cfg]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = paddock(&url, Some(&token), &["status"]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("unknown or revoked"), "{}", o.stderr);
    let o = paddock(&url, None, &["token", "create", "mallory", "--config", cfg]).await;
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("no user `mallory`") && o.stderr.contains("alice, carol, bob, root"), "{}", o.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_the_command_quietly() {
    let (l, url) = setup().await;
    // `paddock runs | head -1` after head has exited: every write meets a closed pipe.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = cmd(&url, Some(&l.bob), &["runs"]).stdout(Stdio::from(writer)).stderr(Stdio::piped()).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(o.status.code(), Some(0), "{stderr}");
}

/// `paddock templates`: one line per template folder with its image, host, key, state, size
/// and clones, and the same as `--json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_print_image_host_key_state_size_and_clones() {
    let t = crate::templates::template_lab(false).await;
    let url = serve(t.lab.state.clone()).await;
    let o = paddock(&url, Some(&t.lab.bob), &["templates"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three templates:\n{}", o.stdout);
    let cols = |l: &str| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect::<Vec<_>>();
    assert_eq!(cols(lines[0]), ["IMAGE", "HOST", "KEY", "STATE", "MADE", "SIZE", "CLONES", "LISTED"]);
    let ready = lines.iter().map(|l| cols(l)).find(|c| c[3] == "ready").unwrap_or_else(|| panic!("{}", o.stdout));
    assert_eq!(ready[..4], ["warm-deb", "local", &t.key[..16], "ready"]);
    assert!(ready[4].ends_with(" ago") && ready[5].ends_with(" MiB") && ready[6] == "2", "{ready:?}");
    // The state directory is read at the request.
    assert!(ready[7].ends_with("s ago"), "{ready:?}");
    let stale = lines.iter().map(|l| cols(l)).find(|c| c[3] == "stale").unwrap();
    assert_eq!(stale[..4], ["warm-deb", "rack-2", "0000000000000000", "stale"]);
    let building = lines.iter().map(|l| cols(l)).find(|c| c[3] == "building").unwrap();
    assert_eq!((building[2].as_str(), building[4].as_str()), ("bbbbbbbbbbbbbbbb", "-"));

    let o = paddock(&url, Some(&t.lab.bob), &["templates", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3, "{v}");
    let o = paddock(&url, None, &["templates"]).await;
    assert_eq!(o.code, 1, "reading needs a token: {}", o.stdout);
}
