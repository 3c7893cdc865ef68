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
        &baked_host_key(),
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
