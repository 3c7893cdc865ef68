//! A maintainer's access grant end to end: a fresh VM of the image, an OpenSSH
//! user certificate that the guest's sshd accepts (through the fleet CA on its
//! kernel command line), then revoke: the VM goes and the login stops working.

use std::process::Command;
use std::time::Duration;

use super::*;

/// The system `ssh` client logging in as root with alice's key and certificate.
fn ssh(port: u16, key: &Path, cert: &Path, command: &str) -> Command {
    let mut c = Command::new("ssh");
    c.args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
        .arg("-o")
        .arg(format!("CertificateFile={}", cert.display()))
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string(), "root@127.0.0.1", command]);
    c
}

fn ssh_login(port: u16, key: &Path, cert: &Path) -> std::process::Output {
    ssh(port, key, cert, "echo logged-in-as-$(id -un)").output().expect("run ssh")
}

/// A fresh ed25519 key for alice in `dir`: its path and its public line.
fn alice_key(dir: &Path) -> (std::path::PathBuf, String) {
    let key = dir.join("alice");
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f"]).arg(&key).status().unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(dir.join("alice.pub")).unwrap();
    (key, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_certificate_logs_in_until_the_grant_is_revoked() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = alice_key(dir.path());
    let fleet = fleet_with_keys(
        dir.path(),
        "23180-23189",
        PER_VM,
        &[public],
        r#"
[[jobs]]
name = "mine"
images = ["tiny"]
maintainers = ["alice"]
[[jobs.steps]]
name = "x"
type = "build"
command = "true"
"#,
    );
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let token = daemon.store.create_token("alice").await.unwrap().token;
    rustls::crypto::ring::default_provider().install_default().ok();
    let http = reqwest::Client::new();
    let base = format!("http://{}", daemon.addr);

    let resp = http
        .post(format!("{base}/api/v1/access"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"image": "tiny", "duration": "30m", "reason": "test fails only here"}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "active", "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let port = body["ssh"]["port"].as_u64().unwrap() as u16;
    let cert_line = body["certificates"][0]["certificate"].as_str().unwrap();
    let cert = dir.path().join("alice-cert.pub");
    std::fs::write(&cert, format!("{cert_line}\n")).unwrap();
    let ssh_command = body["ssh_command"].as_str().unwrap();
    assert!(ssh_command.starts_with(&format!("ssh -p {port} -i KEY -o CertificateFile=CERT root@")), "{ssh_command}");

    // The real OpenSSH client logs in with the certificate (alice's key itself is
    // in no authorized_keys file: only the CA makes this work).
    let out = ssh_login(port, &key, &cert);
    assert!(out.status.success(), "login failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "logged-in-as-root\n");
    let vm = body["vm_name"].as_str().unwrap().to_string();
    assert_eq!(domains_named(&vm), vec![vm.clone()]);

    let resp = http.post(format!("{base}/api/v1/access/{id}/revoke")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The VM booted for the grant goes, and with it any way in.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !domains_named(&vm).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the grant's VM {vm} outlived the revoke");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = ssh_login(port, &key, &cert);
    assert!(!out.status.success(), "login still works after revoke");
    // Every step is in the audit trail.
    let audit: serde_json::Value = http.get(format!("{base}/api/v1/audit")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let text = audit.to_string();
    assert!(text.contains(&id), "{text}");
    assert!(text.contains("revoke"), "{text}");
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_to_a_held_run_ends_open_sessions_when_the_grant_expires() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = alice_key(dir.path());
    let fleet = fleet_with_keys(
        dir.path(),
        "23190-23199",
        PER_VM,
        &[public],
        r#"
[[jobs]]
name = "flaky"
images = ["tiny"]
maintainers = ["alice"]
hold_on_failure = "10m"
[[jobs.steps]]
name = "fails"
type = "test"
command = "echo only-here > /tmp/evidence; exit 1"
"#,
    );
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let run = daemon.runs.trigger("flaky", None, paddock::runs::Trigger::Manual { by: "alice".into() }).await.unwrap().remove(0);
    let row = wait_for_run(&daemon, &run, Duration::from_secs(240), finished).await;
    assert_eq!(row.state, "held");
    let vm = row.vm_name.unwrap();

    let token = daemon.store.create_token("alice").await.unwrap().token;
    rustls::crypto::ring::default_provider().install_default().ok();
    let http = reqwest::Client::new();
    let base = format!("http://{}", daemon.addr);
    let resp = http
        .post(format!("{base}/api/v1/access"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"run": run, "duration": "20s", "reason": "look at the failure"}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["vm_name"].as_str(), Some(vm.as_str()));
    let port = body["ssh"]["port"].as_u64().unwrap() as u16;
    let cert = dir.path().join("alice-cert.pub");
    std::fs::write(&cert, format!("{}\n", body["certificates"][0]["certificate"].as_str().unwrap())).unwrap();

    // The maintainer logs in to the very VM where the build failed and looks.
    let out = ssh(port, &key, &cert, "cat /tmp/evidence").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "only-here\n", "{}", String::from_utf8_lossy(&out.stderr));

    // A session left open ...
    let mut session = ssh(port, &key, &cert, "echo open; sleep 600").stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(session.stdout.as_mut().unwrap()), &mut first).unwrap();
    assert_eq!(first, "open\n");
    // ... is ended when the grant expires (20 s), while the run's own hold keeps the VM.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if session.try_wait().unwrap().is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the session outlived the grant");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let g: serde_json::Value = http
        .get(format!("{base}/api/v1/access/{}", body["id"].as_str().unwrap()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(g["state"], "expired", "{g}");
    assert_eq!(domains_named(&vm), vec![vm.clone()], "the held run's VM stays for its own hold");
    // Logging in afterwards is refused: the certificate has expired.
    let out = ssh_login(port, &key, &cert);
    assert!(!out.status.success());
    let audit: serde_json::Value = http.get(format!("{base}/api/v1/audit")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let text = audit.to_string();
    for action in ["request", "expire"] {
        assert!(text.contains(action), "audit lacks `{action}`: {text}");
    }
    daemon.stop().await.unwrap();
}

/// One owner for a VM's end: the VM manager keeps a held run's VM until the
/// latest of the run's own hold and every live grant on it, then the run ends.
/// The same run shows up in the documented `/metrics` series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_that_outlives_its_runs_hold_keeps_the_vm() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = alice_key(dir.path());
    let fleet = fleet_with_keys(
        dir.path(),
        "24850-24859",
        PER_VM,
        &[public],
        r#"
[[jobs]]
name = "flaky"
images = ["tiny"]
maintainers = ["alice"]
hold_on_failure = "10s"
[[jobs.steps]]
name = "fails"
type = "test"
command = "echo only-here > /tmp/evidence; exit 1"
"#,
    );
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let run = daemon.runs.trigger("flaky", None, paddock::runs::Trigger::Manual { by: "alice".into() }).await.unwrap().remove(0);
    let row = wait_for_run(&daemon, &run, Duration::from_secs(240), finished).await;
    assert_eq!(row.state, "held");
    let vm = row.vm_name.unwrap();
    // The run's own hold: long enough for the grant below (an HTTP call) to come before its end.
    let hold_end = row.finished_at.unwrap() + chrono::Duration::seconds(10);

    let token = daemon.store.create_token("alice").await.unwrap().token;
    rustls::crypto::ring::default_provider().install_default().ok();
    let http = reqwest::Client::new();
    let base = format!("http://{}", daemon.addr);
    let resp = http
        .post(format!("{base}/api/v1/access"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"run": run, "duration": "10m", "reason": "needs longer than the hold"}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert!(chrono::Utc::now() < hold_end, "the grant was made only after the run's hold ended");
    let id = body["id"].as_str().unwrap().to_string();
    let port = body["ssh"]["port"].as_u64().unwrap() as u16;
    let cert = dir.path().join("alice-cert.pub");
    std::fs::write(&cert, format!("{}\n", body["certificates"][0]["certificate"].as_str().unwrap())).unwrap();

    // Past the run's own hold (and a few of the manager's 0.5 s ticks) ...
    wait_until("the run's own hold to pass", Duration::from_secs(120), async || {
        chrono::Utc::now() > hold_end + chrono::Duration::seconds(3)
    })
    .await;
    // ... the VM is still there, still answers, and the run is still held.
    assert_eq!(domains_named(&vm), vec![vm.clone()], "the grant's VM went at the run's hold end");
    let out = ssh(port, &key, &cert, "cat /tmp/evidence").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "only-here\n", "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(daemon.store.run(&run).await.unwrap().unwrap().state, "held");

    // Revoking the grant ends the last reason to keep it: the VM manager removes
    // the VM and the coordinator ends the run.
    let resp = http.post(format!("{base}/api/v1/access/{id}/revoke")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    wait_until("the VM to go after the revoke", Duration::from_secs(90), async || domains_named(&vm).is_empty()).await;
    let row = wait_for_run(&daemon, &run, Duration::from_secs(30), |r| r.state != "held").await;
    assert_eq!((row.state.as_str(), row.outcome.as_deref()), ("failed", Some("build-failure")));

    // The real run is in every documented series.
    let m = http.get(format!("{base}/metrics")).bearer_auth(&token).send().await.unwrap().text().await.unwrap();
    for series in [
        "paddock_runs_finished_total{outcome=\"build-failure\"} 1",
        "paddock_boot_to_ready_seconds_count{image=\"tiny\"} 1",
        "paddock_run_queue_wait_seconds_count 1",
        "paddock_step_duration_seconds_count{job=\"flaky\",kind=\"test\"} 1",
    ] {
        assert!(m.lines().any(|l| l == series), "missing `{series}` in\n{m}");
    }
    daemon.stop().await.unwrap();
}
