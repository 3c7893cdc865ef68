//! Hostile-by-default checks on the bundled guest: a secret env value never leaves the guest
//! unmasked, and a guest cannot reach the host's loopback.

use std::time::Duration;

use paddock::runs::Trigger;

use super::*;

const SECRET: &str = "pdkt-secret-42xyz";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_from_a_file_never_appears_in_logs_reasons_results_or_the_api() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token.secret"), format!("{SECRET}\n")).unwrap();
    let fleet = fleet(
        dir.path(),
        "24430-24434",
        PER_VM,
        r#"
[[jobs]]
name = "secretive"
images = ["tiny"]
maintainers = ["alice"]
env = { TOKEN = { from_file = "token.secret" }, PLAIN = "visible-value" }
[[jobs.steps]]
name = "leaks"
type = "build"
command = "echo \"token=$TOKEN plain=$PLAIN\"; echo \"$TOKEN\" >&2; printf 'pdkt-sec'; sleep 1; printf 'ret-42xyz split\\n'; printf '%s' \"$TOKEN\" | wc -c"
[[jobs.steps]]
name = "fails"
type = "test"
command = "echo \"$TOKEN\"; exit 3"
"#,
    );
    assert!(fleet.jobs[0].secret_env.contains("TOKEN"));
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let ids = daemon.runs.trigger("secretive", None, Trigger::Manual { by: "alice".into() }).await.unwrap();
    let row = wait_for_run(&daemon, &ids[0], Duration::from_secs(300), finished).await;
    assert_eq!(row.outcome.as_deref(), Some("build-failure"), "{row:?}");

    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    let out0 = doc["results"][0]["output"].as_str().unwrap();
    // The guest really had the value (its length is right) and printed it, masked on the way out.
    assert!(out0.contains("token=*** plain=visible-value\n"), "{out0:?}");
    assert!(out0.contains("*** split\n"), "a secret split across two reads is masked too: {out0:?}");
    assert!(out0.contains(&format!("{}\n", SECRET.len())), "{out0:?}");
    assert_eq!(doc["results"][0]["errout"], "***\n");

    let mut seen = vec![("reason", row.reason.clone().unwrap_or_default()), ("result", row.result_json.clone().unwrap())];
    let run_dir = dir.path().join("state/logs").join(&row.id);
    for entry in std::fs::read_dir(&run_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            seen.push(("log file", String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned()));
        }
    }
    let token = daemon.store.create_token("alice").await.unwrap().token;
    let http = reqwest::Client::new();
    let base = format!("http://{}", daemon.addr);
    for path in [
        format!("/api/v1/runs/{}", row.id),
        format!("/api/v1/runs/{}/log", row.id),
        format!("/api/v1/runs/{}/log?tail=100", row.id),
        "/api/v1/runs".to_owned(),
        "/api/v1/jobs/secretive".to_owned(),
        format!("/runs/{}", row.id),
        "/recorder/api/v1/results/1".to_owned(),
        "/recorder/results/1".to_owned(),
    ] {
        let r = http.get(format!("{base}{path}")).bearer_auth(&token).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        seen.push(("API", r.text().await.unwrap()));
    }
    // The recorder got the masked document.
    let wait = std::time::Instant::now() + Duration::from_secs(30);
    while daemon.store.outbox_for_run(&row.id).await.unwrap().iter().any(|e| e.delivered_at.is_none()) {
        assert!(std::time::Instant::now() < wait, "result not delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = daemon.recorder.get(paddock::recorder::ResultKey(1)).await.unwrap().expect("delivered");
    seen.push(("recorder", format!("{:?}", stored)));
    for (what, text) in &seen {
        assert!(!text.contains(SECRET), "the secret appears in the {what}: {text}");
        assert!(!text.contains("pdkt-secret"), "part of the secret appears in the {what}");
    }
    assert!(seen.iter().any(|(_, t)| t.contains("visible-value")), "plain env values are not masked");
    daemon.stop().await.unwrap();
}

/// How much the flood step prints: `PADDOCK_FLOOD_BYTES`, 64 MiB by default. Under TCG on this
/// 2-core machine a guest's output arrives at about 1.3 MB/s (256 MiB took 207 s), so the issue's
/// 2 GiB would take about 27 minutes, most of `make test`'s budget; the default floods 8 times
/// the run-log cap, and the code path is the same at any size past the caps
/// (`PADDOCK_FLOOD_BYTES=2147483648` runs the full size).
fn flood_bytes() -> u64 {
    std::env::var("PADDOCK_FLOOD_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(64 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_flooding_its_output_leaves_a_capped_marked_log_and_bounded_disk() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let flood = flood_bytes();
    let fleet = fleet(
        dir.path(),
        "24435-24439",
        PER_VM,
        &format!(
            r#"
[[jobs]]
name = "flood"
images = ["tiny"]
[[jobs.steps]]
name = "print-a-lot"
type = "build"
command = "head -c {flood} /dev/zero; echo done >&2"
timeout = "60m"

[limits]
run_log = "8MiB"
step_log = "4MiB"
step_output = "256KiB"
"#
        ),
    );
    assert_eq!(fleet.limits.run_log_bytes, 8 << 20);
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let ids = daemon.runs.trigger("flood", None, Trigger::Manual { by: "alice".into() }).await.unwrap();
    let row = wait_for_run(&daemon, &ids[0], Duration::from_secs(3600), finished).await;
    assert_eq!(row.outcome.as_deref(), Some("success"), "{row:?}");

    let run_dir = dir.path().join("state/logs").join(&row.id);
    let log = std::fs::read(run_dir.join("run.log")).unwrap();
    assert!(log.len() < (8 << 20) + 4096, "run.log is {} bytes", log.len());
    let text = String::from_utf8_lossy(&log[log.len().saturating_sub(4096)..]).into_owned();
    assert!(text.contains("run log cut here, at the limit of 8388608 bytes (limits.run_log) during step 1"), "{text}");
    let dropped: u64 = text
        .split("[paddock: ")
        .last()
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of the bytes left out: {text}"));
    assert!(dropped >= flood - (8 << 20), "{dropped} of {flood} bytes");
    let stdout = std::fs::metadata(run_dir.join("step-01.stdout")).unwrap().len();
    assert!(stdout <= (4 << 20) + 200, "step-01.stdout is {stdout} bytes");
    let total: u64 = walk_size(&dir.path().join("state"));
    assert!(total < 24 << 20, "the state directory holds {total} bytes after {flood} bytes of output");
    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    let out = doc["results"][0]["output"].as_str().unwrap();
    assert!(out.len() < (256 << 10) + 200, "the result keeps {} bytes", out.len());
    assert!(out.contains("bytes cut]"), "the result says it was cut");
    assert_eq!(doc["results"][0]["errout"], "done\n");
    daemon.stop().await.unwrap();
}

fn walk_size(p: &std::path::Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else { return 0 };
    if md.is_dir() { std::fs::read_dir(p).unwrap().map(|e| walk_size(&e.unwrap().path())).sum() } else { md.len() }
}

/// The passt processes serving `vm`, with their command lines. libvirt names passt's socket
/// after the domain's short name: its id and the first 20 characters of its name.
fn passt_of(vm: &str) -> Vec<String> {
    let short = &vm[..vm.len().min(20)];
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("passt") && cmd.contains(&format!("-{short}")) {
            out.push(cmd);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_reaches_neither_the_daemon_nor_another_guests_forward_through_the_gateway() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    // Stands in for another guest's SSH forward: passt binds those on the host's 127.0.0.1 too.
    let other = std::net::TcpListener::bind("127.0.0.1:24445").unwrap();
    other.set_nonblocking(true).unwrap();
    // The probe goes to the gateway address, which passt maps to the host's loopback unless the
    // fence turns that off. `network = "none"` keeps the refused attempt on this machine: the
    // kernel refuses a loopback-bound socket's connection to any other address, so no packet
    // leaves, whatever the outcome.
    let probe = r#"GW=$(ip route | awk '/default/ {print $3}'); echo "gateway $GW"; for p in DAEMON OTHER; do if echo x | timeout 5 nc $GW $p > /tmp/reply 2>&1; then echo "REACHED $p: $(head -c 200 /tmp/reply)"; else echo "no connection to $p"; fi; done"#;
    let mut fleet = fleet(
        dir.path(),
        "24440-24444",
        PER_VM,
        r#"
[[jobs]]
name = "probe"
images = ["tiny"]
[[jobs.steps]]
name = "probe-the-host"
type = "test"
command = "PROBE"
"#,
    );
    fleet.images[0].network = paddock::config::GuestNetwork::None;
    // The daemon listens on a port of this test's range, so the step can name it.
    const DAEMON_PORT: u16 = 24446;
    fleet.jobs[0].steps[0].command = probe.replace("DAEMON", &DAEMON_PORT.to_string()).replace("OTHER", "24445");
    let listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], DAEMON_PORT)));
    let daemon = paddock::daemon::Daemon::start(fleet, paddock::daemon::ServeOptions { listen, demo: false }).await.unwrap();
    let _guard = DomainGuard::new(dir.path());
    let ids = daemon.runs.trigger("probe", None, Trigger::Manual { by: "alice".into() }).await.unwrap();
    let prefix = format!("paddock-{}-", instance_id(dir.path()));
    let mut passt_lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let row = loop {
        let row = daemon.store.run(&ids[0]).await.unwrap().unwrap();
        if finished(&row) {
            break row;
        }
        for vm in domains_named(&prefix) {
            passt_lines.extend(passt_of(&vm));
        }
        assert!(std::time::Instant::now() < deadline, "run stuck in {}", row.state);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    let out = doc["results"][0]["output"].as_str().unwrap().to_owned();
    assert!(out.contains("gateway "), "{out}");
    let port = daemon.addr.port();
    assert!(out.contains(&format!("no connection to {port}")), "the guest reached the daemon: {out}");
    assert!(out.contains("no connection to 24445"), "the guest reached another forward: {out}");
    assert!(!out.contains("REACHED"), "{out}");
    assert!(matches!(other.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "a connection arrived");
    assert!(
        passt_lines.iter().any(|l| l.contains("--no-map-gw") && l.contains("--outbound 127.0.0.1")),
        "passt did not run fenced: {passt_lines:?}"
    );
    daemon.stop().await.unwrap();
}

/// `/proc/kmsg` is a regular file whose read blocks once the kernel's messages are drained: an
/// artifact that never ends. Its download is cut at `limits.artifact_timeout`, the run still
/// ends (with the build's own outcome) and its reason names the file and the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_that_never_ends_is_cut_at_the_artifact_timeout_and_the_run_says_so() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(
        dir.path(),
        "26410-26414",
        PER_VM,
        r#"
[[jobs]]
name = "endless-artifact"
images = ["tiny"]
artifacts = ["/proc/kmsg"]
[[jobs.steps]]
name = "build"
type = "build"
command = "echo built"

[limits]
artifact_timeout = "5s"
"#,
    );
    assert_eq!(fleet.limits.artifact_timeout, Duration::from_secs(5));
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let ids = daemon.runs.trigger("endless-artifact", None, Trigger::Manual { by: "alice".into() }).await.unwrap();
    let row = wait_for_run(&daemon, &ids[0], Duration::from_secs(600), finished).await;
    assert_eq!(row.outcome.as_deref(), Some("success"), "{row:?}");
    let reason = row.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("artifacts not all fetched: downloading /proc/kmsg did not finish within 5s (limits.artifact_timeout)"),
        "{row:?}"
    );
    daemon.stop().await.unwrap();
}
