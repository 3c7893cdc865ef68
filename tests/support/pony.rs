//! A pony-build-shaped XML-RPC server (`tests/recorder/pony_server.py`, Python's own
//! `xmlrpc.server`) that records every `add_results` call and file upload it receives.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct PonyServer {
    child: Child,
    /// `http://127.0.0.1:PORT`; pony-build clients talk to `{url}/xmlrpc`.
    pub url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PonyServer {
    pub fn start() -> PonyServer {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("received.jsonl");
        let mut child = Command::new("python3")
            .arg(super::repo().join("tests/recorder/pony_server.py"))
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting python3");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!("pony_server.py did not print its address");
        };
        PonyServer { child, url: format!("http://{addr}"), log, _dir: dir }
    }

    /// Everything received so far, oldest first (one JSON object per call).
    pub fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Only the calls named `call` (`add_results` or `upload`).
    pub fn calls(&self, call: &str) -> Vec<serde_json::Value> {
        self.received().into_iter().filter(|v| v["call"] == call).collect()
    }
}

impl Drop for PonyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
