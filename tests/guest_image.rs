//! End-to-end checks of the bundled guest image and the hand-made baseline: builds the
//! image with `images/build-guest.sh`, boots it on `qemu:///system` through
//! `bench/baseline.sh`, and logs in with the real OpenSSH client by key and by certificate.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::virsh::domains_named;
use support::{free_port, repo, run, value};

/// Generous for TCG on a shared 2-core machine; a boot normally takes 3 to 7 s.
const BOOT_DEADLINE_S: u32 = 120;

fn image_dir() -> PathBuf {
    repo().join("images/out/x86_64")
}

/// Builds the image (a no-op when it is current; the script serialises parallel callers).
fn build_guest() -> Output {
    run(Command::new(repo().join("images/build-guest.sh")).arg("x86_64"))
}

/// Runs baseline.sh on a fresh port and checks what every boot must satisfy: login within
/// the deadline, a clean exit of the command, the host key and readiness on the console,
/// and no domain left behind.
fn boot_and_run(extra_args: &[&str], command: &str, console: &Path) -> String {
    build_guest();
    let port = free_port();
    let mut cmd = Command::new(repo().join("bench/baseline.sh"));
    cmd.args(["--timeout", &BOOT_DEADLINE_S.to_string()])
        .arg("--console-out")
        .arg(console)
        .args(extra_args)
        .arg(port.to_string())
        .arg(command);
    let out = run(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}");

    assert_eq!(value(&stdout, "exit_status"), "0");
    let boot: f64 = value(&stdout, "boot_to_ssh_s").parse().expect("boot_to_ssh_s is a number");
    assert!(boot > 0.0 && boot < f64::from(BOOT_DEADLINE_S), "boot_to_ssh_s={boot}");

    let console = fs::read_to_string(console).expect("console log copied out");
    // The key baseline.sh made for this guest and passed on its command line.
    let host_pub = value(&stdout, "host_key");
    let announced: Vec<&str> = console
        .lines()
        .skip_while(|l| l.trim() != "PADDOCK-HOSTKEY-BEGIN")
        .skip(1)
        .take_while(|l| l.trim() != "PADDOCK-HOSTKEY-END")
        .collect();
    assert_eq!(announced, vec![host_pub.trim()], "host key on the console:\n{console}");
    assert!(console.lines().any(|l| l.trim() == "PADDOCK-READY"), "no PADDOCK-READY:\n{console}");

    let leftover = domains_named(&format!("baseline-{port}-"));
    assert!(leftover.is_empty(), "domains left behind: {leftover:?}");
    stdout
}

#[test]
fn build_guest_is_idempotent() {
    build_guest();
    let dir = image_dir();
    for f in ["vmlinuz", "initrd.img", "stamp"] {
        let len = fs::metadata(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")).len();
        assert!(len > 0, "{f} is empty");
    }
    let initrd = fs::metadata(dir.join("initrd.img")).unwrap();
    assert!(initrd.len() < 8 << 20, "initrd is {} bytes; keep it small for TCG boots", initrd.len());
    let initrd_mtime = initrd.modified().unwrap();

    let again = build_guest();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("up to date"), "second run rebuilt:\n{stderr}");
    assert_eq!(fs::metadata(dir.join("initrd.img")).unwrap().modified().unwrap(), initrd_mtime);
}

/// No guest shares a host key: the bundled initramfs carries none (each VM gets its own on
/// the kernel command line), for every architecture built here and the warm-capable variant.
#[test]
fn no_initramfs_holds_a_private_host_key() {
    for arch in ["x86_64", "x86_64-warm", "aarch64", "s390x"] {
        run(Command::new(repo().join("images/build-guest.sh")).arg(arch));
        let dir = repo().join("images/out").join(arch);
        let initrd = fs::read(dir.join("initrd.img")).unwrap();
        for f in ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"] {
            assert!(!dir.join(f).exists(), "{arch}: the build left a host key file {f}");
        }
        let mut unzstd = Command::new("zstd")
            .args(["-dc", "-q"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = unzstd.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &initrd));
        let cpio = unzstd.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(cpio.status.success() && cpio.stdout.len() > 1 << 20, "{arch}: initrd.img does not unpack");
        // "openssh-key-v1\0" in base64: the start of every OpenSSH private key's body.
        let magic = b"b3BlbnNzaC1rZXktdjE";
        assert!(!cpio.stdout.windows(magic.len()).any(|w| w == magic), "{arch}: an OpenSSH private key is in initrd.img");
        let mut list = Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = list.stdin.take().unwrap();
        let data = cpio.stdout;
        let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
        let names = list.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        let names = String::from_utf8_lossy(&names.stdout);
        assert!(names.lines().any(|l| l == "init"), "{arch}: no /init in the listing:\n{names}");
        let keys: Vec<&str> = names.lines().filter(|l| l.contains("ssh_host_")).collect();
        assert!(keys.is_empty(), "{arch}: host key files in initrd.img: {keys:?}");
    }
}

#[test]
fn baseline_boots_guest_and_runs_command() {
    let tmp = tempfile::tempdir().unwrap();
    let stdout = boot_and_run(&[], "uname -m; cat /proc/cmdline", &tmp.path().join("console.log"));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first().copied(), Some("x86_64"), "uname -m:\n{stdout}");
    assert!(lines.get(1).is_some_and(|l| l.contains("paddock.authkey=")), "cmdline:\n{stdout}");
}

#[test]
fn guest_sshd_trusts_ca_from_cmdline() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "paddock-test-ca", "-f"]).arg(&ca));
    let ca_pub = fs::read_to_string(tmp.path().join("ca.pub")).unwrap();
    let ca_body: Vec<&str> = ca_pub.split_whitespace().take(2).collect();

    // baseline.sh --ca passes only the CA (no authorized key) and logs in with a user
    // certificate for the guest's own principal, so a login at all proves the CA is trusted.
    let stdout = boot_and_run(
        &["--ca", ca.to_str().unwrap()],
        "cat /etc/ssh/trusted_user_ca_keys; echo keys=$(wc -l < /root/.ssh/authorized_keys)",
        &tmp.path().join("console.log"),
    );
    let trusted = stdout.lines().next().unwrap_or_default();
    assert_eq!(trusted.split_whitespace().take(2).collect::<Vec<_>>(), ca_body, "{stdout}");
    assert_eq!(value(&stdout, "keys"), "0", "no authorized key may be installed:\n{stdout}");
}

#[test]
fn guest_sshd_refuses_certificate_from_other_ca() {
    build_guest();
    let tmp = tempfile::tempdir().unwrap();
    for name in ["ca", "rogue"] {
        run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(tmp.path().join(name)));
    }
    let port = free_port();
    let out = Command::new(repo().join("bench/baseline.sh"))
        .args(["--timeout", &BOOT_DEADLINE_S.to_string(), "--ca"])
        .arg(tmp.path().join("ca"))
        .arg("--sign-with")
        .arg(tmp.path().join("rogue"))
        .arg(port.to_string())
        .arg("true")
        .output()
        .expect("run baseline.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Status 3 is baseline.sh's "login refused", as opposed to a boot that never answered.
    assert_eq!(out.status.code(), Some(3), "stderr:\n{stderr}");
    assert!(stderr.contains("Permission denied"), "stderr:\n{stderr}");
    let leftover = domains_named(&format!("baseline-{port}-"));
    assert!(leftover.is_empty(), "domains left behind after a failure: {leftover:?}");
}
