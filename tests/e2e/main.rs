//! End-to-end runs: the daemon library boots the bundled guest on
//! `qemu:///system` (TCG) and runs jobs in it over SSH. Each test has its own
//! state directory and its own port range, so nextest runs them concurrently.

#[path = "../support/mod.rs"]
mod support;

mod access;
mod arch;
mod console;
mod crash;
mod debian;
mod faults;
mod flood;
mod identity;
mod machines;
mod pool_shutdown;
mod reload;
mod remote;
mod runs;
mod runs_show;
mod supervisors;
mod trust;
mod ui;
mod warm;
mod warm_donor;
mod warm_guest;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use paddock::config::Fleet;
use paddock::daemon::{Daemon, ServeOptions};
use paddock::store::RunRow;
pub use support::fleet::TestFleet;
pub use support::guest::ensure_guest_image;
pub use support::virsh::domains_named;
pub use support::{repo, wait_for, wait_until};

/// The bundled image's identity setting: every VM gets a host key (and principal) made and
/// pinned by paddock, on its kernel command line. The image has no key of its own.
pub const PER_VM: &str = "identity = \"cmdline\"";

/// A fleet for one test: one local TCG host, the bundled image (with `key_line` as its
/// host-key setting: [`PER_VM`], or `host_key = ...`), and `jobs` (TOML).
pub fn fleet(dir: &Path, ports: &str, key_line: &str, jobs: &str) -> Fleet {
    fleet_with_keys(dir, ports, key_line, &[], jobs)
}

/// As [`fleet`], with SSH public keys for the user `alice`.
pub fn fleet_with_keys(dir: &Path, ports: &str, key_line: &str, alice_keys: &[String], jobs: &str) -> Fleet {
    load_fleet(dir, &fleet_src(dir, ports, key_line, alice_keys, "", jobs))
}

/// The text of [`fleet_with_keys`]'s fleet, with `extra_cmdline` appended to the image's
/// kernel command line (e.g. a test's own host key, [`support::guest::test_host_key`]).
pub fn fleet_src(dir: &Path, ports: &str, key_line: &str, alice_keys: &[String], extra_cmdline: &str, jobs: &str) -> String {
    let out = repo().join("images/out/x86_64");
    let cmdline = format!("console=ttyS0 quiet no_timer_check panic=1 {extra_cmdline}");
    let cmdline = cmdline.trim_end();
    let tiny = format!(
        r#"
[[images]]
name = "tiny"
os = "linux"
arch = "x86_64"
kernel = "{out}/vmlinuz"
initrd = "{out}/initrd.img"
cmdline = "{cmdline}"
memory_mib = 256
vcpus = 1
user = "root"
trusts_fleet_ca = true
boot_timeout = "3m"
{key_line}
"#,
        out = out.display(),
    );
    TestFleet::local(dir, ports).section(&tiny).user("alice", "maintainer", alice_keys).section(jobs).toml()
}

/// Writes `src` as `dir/fleet.toml` and loads it; a test fleet that does not validate fails the test.
pub fn load_fleet(dir: &Path, src: &str) -> Fleet {
    let path = dir.join("fleet.toml");
    std::fs::write(&path, src).unwrap();
    paddock::config::load(&path).unwrap_or_else(|e| panic!("test fleet invalid:\n{e}"))
}

pub async fn start(fleet: Fleet) -> Daemon {
    Daemon::start(fleet, ServeOptions { listen: Some("127.0.0.1:0".parse().unwrap()), demo: false }).await.expect("daemon starts")
}

/// Polls the store until the run reaches a state satisfying `done`.
pub async fn wait_for_run(daemon: &Daemon, id: &str, limit: Duration, done: impl Fn(&RunRow) -> bool) -> RunRow {
    let deadline = Instant::now() + limit;
    loop {
        let row = daemon.store.run(id).await.unwrap().expect("run exists");
        if done(&row) {
            return row;
        }
        assert!(Instant::now() < deadline, "run {id} stuck in state {} after {limit:?}", row.state);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn finished(row: &RunRow) -> bool {
    matches!(row.state.as_str(), "done" | "failed" | "cancelled" | "held")
}

pub fn instance_id(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("state/instance-id")).unwrap().trim().to_string()
}

pub fn overlays(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("state/overlays")).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default()
}

/// Removes every domain of one test's daemon instance when dropped, so that a
/// failing test leaves no VM (and no bound port) behind for the next one.
pub struct DomainGuard {
    prefix: String,
}

impl DomainGuard {
    pub fn new(dir: &Path) -> DomainGuard {
        DomainGuard { prefix: format!("paddock-{}-", instance_id(dir)) }
    }
}

impl Drop for DomainGuard {
    fn drop(&mut self) {
        for name in domains_named(&self.prefix) {
            for verb in ["destroy", "undefine"] {
                let _ = std::process::Command::new("virsh")
                    .args(["-c", "qemu:///system", verb, &name])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}
