//! A maintainer's access grant end to end: a fresh VM of the image, an OpenSSH
//! user certificate that the guest's sshd accepts (through the fleet CA on its
//! kernel command line), then revoke: the VM goes and the login stops working.

use std::process::Command;
use std::time::Duration;

use super::*;

fn ssh_login(port: u16, key: &Path, cert: &Path) -> std::process::Output {
    Command::new("ssh")
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
        .arg("-o")
        .arg(format!("CertificateFile={}", cert.display()))
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string(), "root@127.0.0.1", "echo logged-in-as-$(id -un)"])
        .output()
        .expect("run ssh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_certificate_logs_in_until_the_grant_is_revoked() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("alice");
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f"]).arg(&key).status().unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(dir.path().join("alice.pub")).unwrap();
    let fleet = fleet_with_keys(
        dir.path(),
        "23180-23189",
        &baked_host_key(),
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
    let audit: serde_json::Value = http
        .get(format!("{base}/api/v1/audit"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = audit.to_string();
    assert!(text.contains(&id), "{text}");
    assert!(text.contains("revoke"), "{text}");
    daemon.stop().await.unwrap();
}
