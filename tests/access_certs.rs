//! Certificates from the fleet CA against real OpenSSH: `ssh-keygen -L` reads
//! them, a real sshd trusting the CA lets the system `ssh` client in, and
//! refuses the same certificate once its validity has passed.

mod support;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use paddock::access::{CertSpec, FleetCa, ca::cert_line};
use ssh_key::{LineEnding, PrivateKey};
use support::free_port;
use support::sshd::{Prepared, Sshd, random_key};

fn write_private(path: &Path, key: &PrivateKey) {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
    f.write_all(key.to_openssh(LineEnding::LF).unwrap().as_bytes()).unwrap();
}

/// An sshd whose only trusted user CA is `ca`, and no authorized keys.
fn sshd_trusting(ca: &FleetCa) -> Sshd {
    for _ in 0..5 {
        let p = Prepared::new();
        std::fs::write(p.dir.path().join("ca.pub"), format!("{}\n", ca.public_line())).unwrap();
        std::fs::write(p.dir.path().join("authorized_keys"), "").unwrap();
        if let Some(s) = p.spawn(free_port()) {
            return s;
        }
    }
    panic!("sshd did not start");
}

/// `ssh` with the key and certificate; returns (success, stdout, stderr).
fn login(sshd: &Sshd, key: &Path, cert: &Path) -> (bool, String, String) {
    let out = Command::new("ssh")
        .args(["-p", &sshd.port.to_string(), "-i"])
        .arg(key)
        .arg("-o")
        .arg(format!("CertificateFile={}", cert.display()))
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            "root@127.0.0.1",
            "echo paddock-login-ok",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

struct User {
    _dir: tempfile::TempDir,
    key: std::path::PathBuf,
    public: ssh_key::PublicKey,
}

fn user() -> User {
    let dir = tempfile::tempdir().unwrap();
    let k = random_key();
    let key = dir.path().join("id_ed25519");
    write_private(&key, &k);
    User { public: k.public_key().clone(), key, _dir: dir }
}

fn issue(
    ca: &FleetCa,
    u: &User,
    serial: u64,
    after: chrono::DateTime<Utc>,
    before: chrono::DateTime<Utc>,
    name: &str,
) -> std::path::PathBuf {
    let cert = ca
        .issue(&CertSpec {
            key: &u.public,
            principal: "root",
            forwarding: true,
            key_id: format!("paddock:mia:{name}"),
            serial,
            valid_after: after,
            valid_before: before,
        })
        .unwrap();
    let path = u.key.with_file_name(format!("{name}-cert.pub"));
    std::fs::write(&path, format!("{}\n", cert_line(&cert))).unwrap();
    path
}

#[test]
fn ssh_keygen_reads_the_certificate() {
    let state = tempfile::tempdir().unwrap();
    let ca = FleetCa::load_or_create(state.path()).unwrap();
    let u = user();
    let after = chrono::DateTime::parse_from_rfc3339("2026-05-04T09:00:00Z").unwrap().with_timezone(&Utc);
    let before = after + chrono::Duration::hours(2);
    let cert = issue(&ca, &u, 4242, after, before, "g0123456789");
    let out = Command::new("ssh-keygen").env("TZ", "UTC").arg("-L").arg("-f").arg(&cert).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let fp = ca.public_key().fingerprint(Default::default()).to_string();
    for want in [
        "Type: ssh-ed25519-cert-v01@openssh.com user certificate",
        "Key ID: \"paddock:mia:g0123456789\"",
        "Serial: 4242",
        "Valid: from 2026-05-04T09:00:00 to 2026-05-04T11:00:00",
        &format!("Signing CA: ED25519 {fp}"),
    ] {
        assert!(text.contains(want), "`{want}` not in:\n{text}");
    }
    let principals = text.split("Principals:").nth(1).unwrap().split("Critical Options:").next().unwrap();
    assert_eq!(principals.split_whitespace().collect::<Vec<_>>(), ["root"]);
}

#[test]
fn sshd_accepts_the_certificate_and_refuses_it_after_expiry() {
    let state = tempfile::tempdir().unwrap();
    let ca = FleetCa::load_or_create(state.path()).unwrap();
    let sshd = sshd_trusting(&ca);
    let u = user();
    let now = Utc::now();

    // An already expired certificate is refused outright.
    let old = issue(&ca, &u, 1, now - chrono::Duration::hours(2), now - chrono::Duration::hours(1), "old");
    let (ok, _, err) = login(&sshd, &u.key, &old);
    assert!(!ok, "an expired certificate logged in: {err}");

    // A certificate valid for a few seconds logs in now...
    let short = issue(&ca, &u, 2, now - chrono::Duration::seconds(60), now + chrono::Duration::seconds(6), "short");
    let (ok, out, err) = login(&sshd, &u.key, &short);
    assert!(ok, "login with a fresh certificate failed: {err}\nsshd log:\n{}", sshd.log());
    assert_eq!(out.trim(), "paddock-login-ok");
    let started = Instant::now();

    // ...and is refused once its validity has passed, with nothing else changed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, _) = login(&sshd, &u.key, &short);
        if !ok {
            break;
        }
        assert!(Instant::now() < deadline, "the certificate still logs in 30 s after it expired");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    let log = sshd.log();
    assert!(log.contains("expired"), "sshd did not say why:\n{log}");
    assert!(log.contains("paddock:mia:short"), "sshd logs the key id:\n{log}");

    // A certificate from another CA is refused too.
    let other_state = tempfile::tempdir().unwrap();
    let other = FleetCa::load_or_create(other_state.path()).unwrap();
    let foreign = issue(&other, &u, 3, now - chrono::Duration::seconds(60), now + chrono::Duration::hours(1), "foreign");
    assert!(!login(&sshd, &u.key, &foreign).0);
}
