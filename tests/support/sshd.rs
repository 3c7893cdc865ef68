//! A real OpenSSH server for tests: `/usr/sbin/sshd -D` on 127.0.0.1 with a throwaway host key,
//! authorized key and user CA, all in a temporary directory; killed by PID when dropped.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paddock::ssh::{ClientKey, HostKeyCheck, Target};
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

pub struct Sshd {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub host_key: PublicKey,
    /// Listed in authorized_keys.
    pub client: ClientKey,
    /// Trusted through TrustedUserCAKeys.
    pub ca: PrivateKey,
}

pub fn random_key() -> PrivateKey {
    let mut rng = ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng);
    PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap()
}

fn write_private(path: &Path, contents: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).unwrap();
    f.write_all(contents).unwrap();
}

/// A port that was free on 127.0.0.1 a moment ago (someone else may take it before it is
/// used). Defined here, not in `support/mod.rs`, because `examples/ssh_log_throughput.rs`
/// includes this file alone; `support::free_port` is this function.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local_addr").port()
}

impl Sshd {
    pub fn start() -> Sshd {
        // A port picked this way can be taken by someone else before sshd binds it: try again.
        for _ in 0..5 {
            if let Some(s) = Sshd::start_on(free_port()) {
                return s;
            }
        }
        panic!("sshd did not start on any of 5 ports");
    }

    /// Starts sshd on `port`; `None` if it exits at once (port taken).
    pub fn start_on(port: u16) -> Option<Sshd> {
        Prepared::new().spawn(port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn target(&self) -> Target {
        Target { addr: self.addr(), user: "root".into() }
    }

    pub fn host_key_check(&self) -> HostKeyCheck {
        HostKeyCheck::exact(self.host_key.clone())
    }

    pub fn client_key_path(&self) -> PathBuf {
        self.client.path().to_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// PIDs of the per-connection sshd processes (children of the listener).
    pub fn connection_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            // Fields after the `(comm)`: state, ppid, …
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
            let ppid: Option<u32> = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            if ppid == Some(self.child.id()) {
                pids.push(pid);
            }
        }
        pids
    }
}

/// The server's files, made before it runs (so a client can know its keys in advance).
pub struct Prepared {
    pub dir: tempfile::TempDir,
    pub host: PrivateKey,
    pub client: ClientKey,
    pub ca: PrivateKey,
}

impl Prepared {
    pub fn new() -> Prepared {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let host = random_key();
        write_private(&d.join("host_ed25519"), host.to_openssh(LineEnding::LF).unwrap().as_bytes());
        let client = ClientKey::load_or_create(&d.join("state")).unwrap();
        std::fs::write(d.join("authorized_keys"), format!("{}\n", client.public_line())).unwrap();
        let ca = random_key();
        std::fs::write(d.join("ca.pub"), format!("{}\n", ca.public_key().to_openssh().unwrap())).unwrap();
        Prepared { dir, host, client, ca }
    }

    /// Starts sshd on `port`; `None` if it exits at once (port taken).
    pub fn spawn(self, port: u16) -> Option<Sshd> {
        let Prepared { dir, host, client, ca } = self;
        let d = dir.path();
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile none\nUsePAM no\n\
             StrictModes no\nAuthorizedKeysFile {d}/authorized_keys\nTrustedUserCAKeys {d}/ca.pub\n\
             PermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             Subsystem sftp internal-sftp\nLogLevel VERBOSE\nMaxStartups 50\nMaxSessions 50\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let mut child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .arg("-E")
            .arg(d.join("sshd.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn /usr/sbin/sshd (apt-get install openssh-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().unwrap().is_some() {
                eprintln!("sshd exited: {}", std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default());
                return None;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "sshd did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Sshd { child, port, dir, host_key: host.public_key().clone(), client, ca })
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // SIGTERM lets sshd close its listener; this PID is ours, spawned above.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
