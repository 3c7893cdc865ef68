//! `virsh` on `qemu:///system`, for checking what tests leave behind.

use std::process::{Command, Output, Stdio};

/// Runs `virsh -c qemu:///system ARGS`; the caller checks the status.
pub fn virsh(args: &[&str]) -> Output {
    Command::new("virsh").args(["-c", "qemu:///system"]).args(args).output().expect("run virsh")
}

/// Every domain's name, running or not. A failing `virsh` panics, unless the thread is already
/// panicking (a guard's clean-up while a test fails).
pub fn domains() -> Vec<String> {
    let out = virsh(&["list", "--all", "--name"]);
    if !out.status.success() && !std::thread::panicking() {
        panic!("virsh list failed with {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// The names of domains that start with `prefix`.
pub fn domains_named(prefix: &str) -> Vec<String> {
    domains().into_iter().filter(|n| n.starts_with(prefix)).collect()
}

/// Whether libvirtd answers (it does not while it restarts).
pub fn answers() -> bool {
    Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
