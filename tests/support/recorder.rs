//! The real `paddock recorder` binary for tests: started on a free port, its address learnt
//! from stdout, stopped with SIGTERM; and a plain-socket JSON POST to seed it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::wait_with_deadline;

pub struct RecorderProcess {
    pub child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
}

impl RecorderProcess {
    pub fn start(extra_args: &[&str]) -> RecorderProcess {
        Self::start_on("127.0.0.1:0", extra_args)
    }

    /// Starts on a given address (a fault test brings a recorder up on a port
    /// clients were already failing to reach).
    pub fn start_on(listen: &str, extra_args: &[&str]) -> RecorderProcess {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("recorder.db");
        let mut child = Command::new(env!("CARGO_BIN_EXE_paddock"))
            .args(["recorder", "--listen", listen, "--db"])
            .arg(&db)
            .args(extra_args)
            .env("PADDOCK_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting paddock recorder");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("paddock recorder did not print its address within 30 s");
            }
            // stdout closed: the process exited (its stderr, inherited, says why). With a
            // CARGO_TARGET_DIR shared between worktrees, another branch's `paddock` may have
            // replaced this one: rebuild it (`touch src/main.rs`).
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = wait_with_deadline(&mut child, Duration::from_secs(5));
                panic!("paddock recorder exited before listening: {status:?}");
            }
        };
        RecorderProcess { child, addr, dir }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("recorder.db")
    }

    /// SIGTERM, then wait (polling, with a deadline) for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_with_deadline(&mut self.child, Duration::from_secs(20)).expect("recorder did not exit after SIGTERM")
    }
}

impl Drop for RecorderProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal HTTP/1.1 POST over a plain socket, so tests seed the recorder without a client
/// crate; `token` goes in `Authorization: Bearer`.
pub fn http_post_json(addr: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let status = reply.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A plain-socket HTTP/1.1 GET; the status and the body's bytes (the recorder sends a
/// Content-Length, never chunks, for these bodies).
pub fn http_get_bytes(addr: &str, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let head_end = reply.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4).unwrap_or(reply.len());
    let head = String::from_utf8_lossy(&reply[..head_end]);
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, reply[head_end..].to_vec())
}

/// `http_get_bytes` with the body as text.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let (status, body) = http_get_bytes(addr, path);
    (status, String::from_utf8_lossy(&body).into_owned())
}
