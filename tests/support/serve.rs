//! The real `paddock serve` binary on port 0 with a fleet of the test's own (a `test:///default`
//! host, so no VM boots): started, its address read from stdout, stopped by SIGTERM on drop.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Serve {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub addr: std::net::SocketAddr,
}

impl Drop for Serve {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary under test, logging warnings only.
pub fn paddock() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_paddock"));
    c.env("PADDOCK_LOG", "warn");
    c
}

/// A new API token for `user` of the fleet at `fleet`.
pub fn token(fleet: &Path, user: &str) -> String {
    let out = paddock().args(["token", "-c"]).arg(fleet).args(["create", user]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Starts `paddock serve -c FLEET --listen 127.0.0.1:0` and waits for its address.
pub fn serve(fleet: &Path) -> Serve {
    let mut child = paddock().args(["serve", "-c"]).arg(fleet).args(["--listen", "127.0.0.1:0"]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("paddock listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(60)).expect("paddock serve did not print its address");
    let addr = url.trim_start_matches("http://").parse().expect("an address");
    Serve { child, url, addr }
}
