//! A second real libvirt host on this machine, started by the test that needs it: a user of
//! its own (`pdkdonorN`, `pdkpN`, `pdkg2N` or `pdkc-N`, one per test), an `sshd` of the test's
//! own on a free loopback port (its own config, host key and pid file, never the system one),
//! that user's session libvirt daemon (started from a copy of the system daemon's QEMU
//! capability cache, so it does not probe every QEMU again) reached as
//! `qemu+ssh://USER@127.0.0.1:PORT/session?keyfile=...&no_verify=1`, and a directory storage
//! pool in the user's home. Everything is torn down on drop: domains, pool, the sshd (by the PID
//! in its pid file), every process of the user (by PID), the user and its home.
//! See `../shared/HOST.md` ("A second real hypervisor host").
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ssh_key::LineEnding;

use super::sshd::random_key;

/// The storage pool every donor gets.
pub const POOL: &str = "paddock";

pub struct Donor {
    pub user: String,
    pub uid: u32,
    pub home: PathBuf,
    /// The port its sshd listens on (127.0.0.1).
    pub port: u16,
    /// The libvirt URI paddock is configured with.
    pub uri: String,
    pub pool: String,
    pub pool_dir: PathBuf,
    /// sshd config, host key, pid file, log and the client key (root-owned, 0700).
    dir: tempfile::TempDir,
    /// `false` once the sshd was stopped on purpose.
    sshd_running: bool,
    /// The capability cache entries copied from the system daemon, with their modification
    /// times right after the copy (the session daemon rewrites an entry it finds stale).
    capability_copies: Vec<(PathBuf, std::time::SystemTime)>,
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

fn uid_of(user: &str) -> Option<u32> {
    let out = run("id", &["-u", user]);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok()).flatten()
}

/// PIDs of every process whose real uid is `uid`.
pub fn pids_of_uid(uid: u32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let real = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok());
        if real == Some(uid) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `pid` exists and is not a zombie.
fn is_alive(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    !status.lines().find_map(|l| l.strip_prefix("State:")).is_some_and(|s| s.trim_start().starts_with('Z'))
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

/// Removes what an earlier, killed run of a test may have left of `user`: its processes
/// (by PID, SIGKILL) and the user with its home. Only for the users tests make (`pdkdonorN`, `pdkpN`, `pdkg2N`, `pdkc-N`, `pdkm4-N`).
fn remove_user(user: &str) {
    let ours = |prefix: &str| user.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    assert!(
        ours("pdkdonor") || ours("pdkp") || ours("pdkg2") || ours("pdkc-") || ours("pdkm4-"),
        "only test donors are removed, not {user}"
    );
    let Some(uid) = uid_of(user) else { return };
    for _ in 0..50 {
        let pids = pids_of_uid(uid);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // These processes run as the test's own user (session libvirtd, QEMU, passt).
            unsafe { libc::kill(pid, libc::SIGCONT) };
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    remove_chardev_locks(uid);
    sweep_stale_chardev_locks();
    let out = run("userdel", &["-r", "-f", user]);
    if !out.status.success() {
        eprintln!("userdel {user}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// libvirt locks a pty it hands out as a console in `/run/lock/LCK.._pts_N` (mode 0600, holding
/// the daemon's PID). Session daemons of different users share that sticky directory, so a lock
/// left by a daemon that died (killed with its user's processes, or the system daemon
/// restarted) cannot be removed by the daemon that gets the same pty next: its console fails
/// with "Couldn't create lock file for device '/dev/pts/N' ...: File exists". The test harness
/// runs as root and removes such locks itself: those of `uid` once its processes are dead, and
/// (below) every lock whose PID is no live libvirt daemon.
fn remove_chardev_locks(uid: u32) {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir) = std::fs::read_dir(CHARDEV_LOCKS) else { return };
    for entry in dir.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with("LCK..") && entry.metadata().map(|m| m.uid() == uid).unwrap_or(false);
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Where libvirt puts its pty locks (`/var/lock` is a link to it).
const CHARDEV_LOCKS: &str = "/run/lock";

/// Whether `pid` is a running (not zombie) libvirt daemon, the only holder of a pty lock.
fn is_live_libvirt_daemon(pid: i32) -> bool {
    is_alive(pid) && matches!(comm(pid).as_str(), "libvirtd" | "virtqemud")
}

/// Removes every pty lock whose PID is not a live libvirt daemon (the daemon died, or its PID
/// went to another process); returns the paths removed. A lock too new to hold its PID yet is
/// left alone. Before each donor starts and after a donor's processes are killed.
pub fn sweep_stale_chardev_locks() -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(CHARDEV_LOCKS) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in dir.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("LCK..") {
            continue;
        }
        let path = entry.path();
        // libvirt writes the PID right after creating the file (O_EXCL); an empty or
        // unreadable one younger than a few seconds is being made.
        let pid = std::fs::read_to_string(&path).ok().and_then(|s| s.trim().parse::<i32>().ok());
        let young =
            entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_none_or(|age| age < Duration::from_secs(5));
        let stale = match pid {
            Some(pid) => !is_live_libvirt_daemon(pid),
            None => !young,
        };
        if stale && std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

impl Donor {
    /// Makes user `user` (`pdkdonorN`) with an sshd on a free port of `ports` and a pool.
    pub fn start(user: &str, ports: std::ops::RangeInclusive<u16>) -> Donor {
        remove_user(user);
        // A dead daemon's pty lock (another donor's, or the system daemon's from before a
        // restart) would fail this donor's console on the same pty.
        sweep_stale_chardev_locks();
        // In group kvm like the system daemon's QEMU, so the capability cache below stays valid.
        let out = run("useradd", &["-m", "-s", "/bin/sh", "-G", "kvm", user]);
        assert!(out.status.success(), "useradd {user}: {}", String::from_utf8_lossy(&out.stderr));
        // A locked `!` password makes sshd refuse the user with UsePAM no; `*` allows keys.
        let out = run("usermod", &["-p", "*", user]);
        assert!(out.status.success(), "usermod {user}: {}", String::from_utf8_lossy(&out.stderr));
        let uid = uid_of(user).expect("the user just made");
        let home = PathBuf::from(format!("/home/{user}"));

        let dir = tempfile::Builder::new().prefix("pdkr-donor-").tempdir().unwrap();
        let d = dir.path();
        let host = random_key();
        write_private(&d.join("host_ed25519"), host.to_openssh(LineEnding::LF).unwrap().as_bytes());
        let client = random_key();
        write_private(&d.join("client_ed25519"), client.to_openssh(LineEnding::LF).unwrap().as_bytes());
        let ssh_dir = home.join(".ssh");
        std::fs::create_dir_all(&ssh_dir).unwrap();
        std::fs::write(ssh_dir.join("authorized_keys"), format!("{}\n", client.public_key().to_openssh().unwrap())).unwrap();
        std::fs::set_permissions(&ssh_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(ssh_dir.join("authorized_keys"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let owner = format!("{user}:{user}");
        // A new user's session daemon probes every installed QEMU (30-odd binaries) before it
        // answers a capabilities question (~40 s on two busy cores). The system daemon's cache
        // of the same binaries is valid for it too (same libvirtd binary, same QEMU ctimes,
        // /dev/kvm usable through group kvm), so the donor starts from a copy of it; a stale or
        // missing copy only costs the probe. The session daemon keeps its cache in
        // `~/.cache/libvirt/qemu/cache/capabilities` (not `.../qemu/capabilities`).
        let capability_copies = copy_system_capabilities(&home.join(".cache/libvirt/qemu/cache/capabilities"));
        assert!(run("chown", &["-R", &owner, home.join(".cache").to_str().unwrap()]).status.success());
        assert!(run("chown", &["-R", &owner, ssh_dir.to_str().unwrap()]).status.success());

        let mut donor = Donor {
            user: user.to_string(),
            uid,
            home: home.clone(),
            port: 0,
            uri: String::new(),
            pool: POOL.to_string(),
            pool_dir: home.join("pool"),
            dir,
            sshd_running: false,
            capability_copies,
        };
        let ports: Vec<u16> = ports.collect();
        let start = (std::process::id() as usize) % ports.len();
        let mut started = false;
        for i in 0..ports.len().min(20) {
            let port = ports[(start + i) % ports.len()];
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            if donor.start_sshd(port) {
                started = true;
                break;
            }
        }
        assert!(started, "no sshd for {user} started on any port of the range");
        // libvirt's ssh transport runs `ssh`, which would record the donor's key in root's
        // ~/.ssh/known_hosts: a wrapper (the URI's `command`) keeps it in the test's own dir.
        let wrapper = donor.dir.path().join("ssh");
        std::fs::write(&wrapper, format!("#!/bin/sh\nexec ssh -o UserKnownHostsFile={}/known_hosts \"$@\"\n", donor.dir.path().display()))
            .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o700)).unwrap();
        donor.uri = format!(
            "qemu+ssh://{user}@127.0.0.1:{}/session?keyfile={}&no_verify=1&command={}",
            donor.port,
            donor.key_path().display(),
            wrapper.display()
        );
        donor.make_pool();
        donor
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("client_ed25519")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("sshd.pid")
    }

    pub fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Starts this donor's sshd on `port`; false when it did not come up (port taken).
    fn start_sshd(&mut self, port: u16) -> bool {
        let d = self.dir.path();
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {pid}\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\n\
             AllowUsers {user}\nAuthorizedKeysFile .ssh/authorized_keys\nLogLevel VERBOSE\n\
             MaxStartups 50\nMaxSessions 50\nClientAliveInterval 0\n",
            d = d.display(),
            pid = self.pid_file().display(),
            user = self.user,
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let _ = std::fs::remove_file(self.pid_file());
        // Without -D sshd daemonises and writes its pid file: it is stopped by that PID.
        let out = Command::new("/usr/sbin/sshd")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .arg("-E")
            .arg(d.join("sshd.log"))
            .stdin(Stdio::null())
            .output()
            .expect("spawn /usr/sbin/sshd (apt-get install openssh-server)");
        if !out.status.success() {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.sshd_pid().is_some() && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                self.port = port;
                self.sshd_running = true;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("sshd on {port} did not listen: {}", self.sshd_log());
        self.stop_sshd();
        false
    }

    pub fn sshd_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok()
    }

    pub fn sshd_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Stops the listening sshd (by its pid file's PID); connections it forked live on.
    pub fn stop_sshd(&mut self) {
        if let Some(pid) = self.sshd_pid() {
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && Path::new(&format!("/proc/{pid}")).exists() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.sshd_running = false;
    }

    /// Starts the sshd again on the same port.
    pub fn restart_sshd(&mut self) {
        let port = self.port;
        assert!(self.start_sshd(port), "sshd did not come back on {port}");
    }

    /// `virsh -c URI ARGS` as root, over the donor's sshd like paddock.
    pub fn virsh(&self, args: &[&str]) -> Output {
        Command::new("virsh").arg("-c").arg(&self.uri).args(args).stdin(Stdio::null()).output().unwrap()
    }

    fn virsh_ok(&self, args: &[&str]) -> String {
        let out = self.virsh(args);
        assert!(out.status.success(), "virsh {args:?} on {}: {}", self.user, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn make_pool(&self) {
        // Persistent and autostarted: the session daemon exits when idle and must find it again.
        let target = self.pool_dir.to_str().unwrap();
        self.virsh_ok(&["pool-define-as", &self.pool, "dir", "--target", target]);
        self.virsh_ok(&["pool-build", &self.pool]);
        self.virsh_ok(&["pool-start", &self.pool]);
        self.virsh_ok(&["pool-autostart", &self.pool]);
    }

    /// Names of every domain on the donor (running or defined).
    pub fn domains(&self) -> Vec<String> {
        let out = self.virsh_ok(&["list", "--all", "--name"]);
        out.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
    }

    /// Names of the volumes in the donor's pool.
    pub fn volumes(&self) -> Vec<String> {
        let _ = self.virsh(&["pool-refresh", &self.pool]);
        let out = self.virsh_ok(&["vol-list", &self.pool]);
        let mut v: Vec<String> = out.lines().skip(2).filter_map(|l| l.split_whitespace().next()).map(String::from).collect();
        v.sort();
        v
    }

    /// Files in the pool's directory, as the donor's own disk sees them.
    pub fn pool_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.pool_dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// PIDs of the donor's session libvirt daemon (`libvirtd` or `virtqemud`, running as the user).
    pub fn libvirtd_pids(&self) -> Vec<i32> {
        pids_of_uid(self.uid).into_iter().filter(|p| matches!(comm(*p).as_str(), "libvirtd" | "virtqemud")).collect()
    }

    /// PIDs of the donor's QEMU processes.
    pub fn qemu_pids(&self) -> Vec<i32> {
        pids_of_uid(self.uid).into_iter().filter(|p| comm(*p).starts_with("qemu-system")).collect()
    }

    /// The host is lost: SIGKILL to every process of the donor's user (its session daemon,
    /// QEMU, passt; the listening sshd is root's), waited for (at most 10 s), then the pty
    /// locks its daemon held are removed, so another donor's console is not refused meanwhile.
    /// Returns the PIDs killed.
    pub fn kill_every_process(&self) -> Vec<i32> {
        let pids = pids_of_uid(self.uid);
        for pid in &pids {
            // These processes run as the test's own user.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && pids.iter().any(|p| is_alive(*p)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        remove_chardev_locks(self.uid);
        pids
    }

    /// Sends `signal` to the donor's session libvirt daemon (never the system one: it runs as
    /// the donor's uid); returns the PIDs signalled.
    pub fn signal_libvirtd(&self, signal: i32) -> Vec<i32> {
        let pids = self.libvirtd_pids();
        for pid in &pids {
            unsafe { libc::kill(*pid, signal) };
        }
        pids
    }
}

/// Where the system daemon keeps its QEMU capability cache.
const SYSTEM_CAPS: &str = "/var/cache/libvirt/qemu/capabilities";

/// Copies the system daemon's QEMU capability cache into `dest` (a donor's session cache),
/// after asking the system daemon for its capabilities so that its cache is written and
/// current (a no-op when it is; bounded by `timeout`). Returns each copy with its mtime.
fn copy_system_capabilities(dest: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let asked = run("timeout", &["120", "virsh", "-c", "qemu:///system", "capabilities"]);
    if !asked.status.success() {
        eprintln!("virsh capabilities on qemu:///system: {}", String::from_utf8_lossy(&asked.stderr));
    }
    std::fs::create_dir_all(dest).unwrap();
    let mut copies = Vec::new();
    for e in std::fs::read_dir(SYSTEM_CAPS).into_iter().flatten().flatten() {
        let to = dest.join(e.file_name());
        if std::fs::copy(e.path(), &to).is_ok() {
            copies.push((to.clone(), std::fs::metadata(&to).and_then(|m| m.modified()).unwrap()));
        }
    }
    copies
}

impl Donor {
    /// How many capability cache entries were copied from the system daemon.
    pub fn capability_copies(&self) -> usize {
        self.capability_copies.len()
    }

    /// The copied capability cache entries the session daemon has since rewritten (it found
    /// them stale and probed that QEMU again) or removed.
    pub fn capability_copies_rewritten(&self) -> Vec<PathBuf> {
        self.capability_copies
            .iter()
            .filter(|(path, copied)| std::fs::metadata(path).and_then(|m| m.modified()).ok() != Some(*copied))
            .map(|(path, _)| path.clone())
            .collect()
    }
}

fn write_private(path: &Path, contents: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
    f.write_all(contents).unwrap();
}

impl Drop for Donor {
    fn drop(&mut self) {
        // A frozen daemon would make every virsh below hang.
        self.signal_libvirtd(libc::SIGCONT);
        if !self.sshd_running {
            let port = self.port;
            self.sshd_running = self.start_sshd(port);
        }
        if self.sshd_running {
            for name in self.domains_quiet() {
                let _ = self.virsh(&["destroy", &name]);
                let _ = self.virsh(&["undefine", &name, "--nvram"]);
            }
            let _ = self.virsh(&["pool-destroy", &self.pool]);
            let _ = self.virsh(&["pool-undefine", &self.pool]);
        }
        self.stop_sshd();
        remove_user(&self.user);
    }
}

impl Donor {
    fn domains_quiet(&self) -> Vec<String> {
        let out = self.virsh(&["list", "--all", "--name"]);
        String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
    }
}
