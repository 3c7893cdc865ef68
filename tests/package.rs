//! The Debian package as a lab admin meets it, on this machine (as root): built
//! by `scripts/build-deb.sh` from the binary the tests were built with, installed
//! with `dpkg -i`, its units checked by `systemd-analyze verify`, the installed
//! `paddock check` run on the shipped example and the installed `paddock serve`
//! started by hand as the package's user, answering `/healthz`; then `dpkg -r`
//! (state and configuration stay) and `dpkg --purge` (both go, and so does the user).
//!
//! Implementation note: the debug binary is packaged, not a release build: the test
//! then costs no second compile of the whole dependency tree on CI's two cores, and
//! what is checked here (files, scripts, units, the daemon starting) is the same.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;

const LISTEN: &str = "127.0.0.1:24700";

/// Runs `cmd` to its end, killed after `limit`.
fn run(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    // Read both pipes while waiting, so a chatty command cannot fill one and stall.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            r.read_to_end(&mut buf).ok();
            buf
        })
    };
    let (stdout, stderr) = (drain(Box::new(child.stdout.take().unwrap())), drain(Box::new(child.stderr.take().unwrap())));
    let Some(status) = support::wait_with_deadline(&mut child, limit) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not finish within {limit:?}");
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

fn ok(cmd: &mut Command, limit: Duration) -> String {
    let what = format!("{cmd:?}");
    let out = run(cmd, limit);
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dpkg refuses to run while another dpkg or apt holds its lock (other work on a
/// shared machine): retry that, and only that, until a deadline.
fn dpkg(args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = run(Command::new("dpkg").args(args), Duration::from_secs(120));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned() + &stderr;
        }
        let locked = stderr.contains("lock") && (stderr.contains("held by") || stderr.contains("locked"));
        assert!(locked && Instant::now() < deadline, "dpkg {args:?}: {}\n{stderr}", out.status);
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn package_status() -> Option<String> {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "paddock"]), Duration::from_secs(30));
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()).filter(|s| !s.contains("not-installed"))
}

fn user_exists(name: &str) -> bool {
    run(Command::new("getent").args(["passwd", name]), Duration::from_secs(10)).status.success()
}

fn group_members(group: &str) -> Option<String> {
    let out = run(Command::new("getent").args(["group", group]), Duration::from_secs(10));
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().rsplit(':').next().unwrap_or("").to_string())
}

/// Purges the package if this test (or an earlier run of it) left it installed.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if package_status().is_some() {
            let _ = run(Command::new("dpkg").args(["--purge", "paddock"]), Duration::from_secs(120));
        }
    }
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
}

fn healthz() -> Option<String> {
    let mut s = std::net::TcpStream::connect(LISTEN).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

fn id(flag: &str, name: &str) -> u32 {
    ok(Command::new("id").args([flag, name]), Duration::from_secs(10)).trim().parse().unwrap()
}

#[tokio::test]
async fn the_deb_installs_runs_as_its_user_and_removes_as_debian_policy_says() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "dpkg -i needs root (make test runs as root)");
    if package_status().is_none() {
        assert!(!user_exists("paddock"), "a user `paddock` exists that no paddock package made; not touching it");
    }
    let _cleanup = Installed;
    if package_status().is_some() {
        dpkg(&["--purge", "paddock"]);
    }

    // Build.
    let out = tempfile::tempdir().unwrap();
    let repo = support::repo();
    let deb = ok(
        Command::new("bash").arg(repo.join("scripts/build-deb.sh")).arg(env!("CARGO_BIN_EXE_paddock")).arg(out.path()),
        Duration::from_secs(300),
    );
    let deb = PathBuf::from(deb.trim());
    let fields = ok(Command::new("dpkg-deb").args(["-f"]).arg(&deb).args(["Depends", "Recommends"]), Duration::from_secs(30));
    assert!(fields.contains("libvirt0 (>=") && fields.contains("passt") && fields.contains("adduser"), "{fields}");
    assert!(fields.contains("libvirt-daemon-system") && fields.contains("qemu-system-x86"), "{fields}");

    // Install.
    dpkg(&["-i", deb.to_str().unwrap()]);
    assert_eq!(package_status().as_deref(), Some("install ok installed"));
    let conffiles = ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "paddock"]), Duration::from_secs(30));
    assert!(conffiles.contains("/etc/paddock/fleet.toml") && conffiles.contains("/etc/paddock/recorder-tokens"), "{conffiles}");
    let (uid, gid) = (id("-u", "paddock"), id("-g", "paddock"));
    assert!(uid < 1000, "not a system user: uid {uid}");
    if let Some(members) = group_members("libvirt") {
        assert!(members.split(',').any(|m| m == "paddock"), "paddock is not in the libvirt group: {members}");
    }
    assert_eq!(mode(Path::new("/var/lib/paddock")), (0o750, uid, gid));
    assert_eq!(mode(Path::new("/etc/paddock/fleet.toml")), (0o640, 0, gid));
    assert_eq!(mode(Path::new("/etc/paddock/recorder-tokens")).0, 0o600);
    let version = ok(Command::new("/usr/bin/paddock").arg("--version"), Duration::from_secs(10));
    assert_eq!(version.trim(), format!("paddock {}", env!("CARGO_PKG_VERSION")));
    // Completions load in bash, and the man pages are there.
    let complete = ok(
        Command::new("bash").args(["-c", "source /usr/share/bash-completion/completions/paddock && complete -p paddock"]),
        Duration::from_secs(10),
    );
    assert!(complete.contains("paddock"), "{complete}");
    assert!(Path::new("/usr/share/zsh/vendor-completions/_paddock").is_file());
    assert!(Path::new("/usr/share/fish/vendor_completions.d/paddock.fish").is_file());
    let page = ok(Command::new("zcat").arg("/usr/share/man/man1/paddock-serve.1.gz"), Duration::from_secs(10));
    assert!(page.contains(".TH paddock-serve 1"), "{page}");
    assert!(Path::new("/usr/share/man/man1/paddock.1.gz").is_file());
    assert!(Path::new("/usr/share/doc/paddock/fleet.toml.md").is_file());

    // The units, as systemd reads them (no systemd needs to run).
    let verify = run(
        Command::new("systemd-analyze").args([
            "verify",
            "--man=no",
            "/usr/lib/systemd/system/paddock.service",
            "/usr/lib/systemd/system/paddock-recorder.service",
        ]),
        Duration::from_secs(60),
    );
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {}\n{said}", verify.status);

    // The installed binary, as the package's user, on the shipped example.
    let as_paddock = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=paddock", "--regid=paddock", "--init-groups", "--"]).arg("/usr/bin/paddock").args(args);
        c.current_dir("/var/lib/paddock").env("HOME", "/var/lib/paddock").env("PADDOCK_LOG", "warn");
        c
    };
    let check = ok(&mut as_paddock(&["check", "--config", "/etc/paddock/fleet.toml"]), Duration::from_secs(30));
    assert!(check.starts_with("/etc/paddock/fleet.toml: ok"), "{check}");
    let mut serve = as_paddock(&["serve", "--config", "/etc/paddock/fleet.toml", "--listen", LISTEN]);
    let mut child = serve.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let serve = Serve(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("paddock listening on http://{LISTEN}"));
    let answer = support::wait_for("an answer on /healthz", Duration::from_secs(30), async || healthz()).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"), "{answer}");
    drop(serve);
    let db = Path::new("/var/lib/paddock/paddock.db");
    assert_eq!(mode(db).1, uid, "the store belongs to the package's user");

    // Remove: the binary goes; configuration, state and the user stay.
    dpkg(&["-r", "paddock"]);
    assert_eq!(package_status().as_deref(), Some("deinstall ok config-files"));
    assert!(!Path::new("/usr/bin/paddock").exists());
    assert!(!Path::new("/usr/lib/systemd/system/paddock.service").exists());
    assert!(db.is_file(), "dpkg -r removed the state");
    assert!(Path::new("/etc/paddock/fleet.toml").is_file(), "dpkg -r removed a conffile");
    assert!(user_exists("paddock"));

    // Purge: configuration, state, user and group go.
    dpkg(&["--purge", "paddock"]);
    assert_eq!(package_status(), None);
    assert!(!Path::new("/var/lib/paddock").exists());
    assert!(!Path::new("/etc/paddock").exists());
    assert!(!user_exists("paddock"));
    assert!(group_members("paddock").is_none(), "the group `paddock` outlived the purge");
    if let Some(members) = group_members("libvirt") {
        assert!(!members.split(',').any(|m| m == "paddock"), "{members}");
    }
}
