//! Clean-up shared by the benches that start a paddock daemon on `qemu:///system`.

use std::path::Path;
use std::process::{Command, Stdio};

/// Removes every domain of one paddock instance when dropped, however the bench ends:
/// `Daemon::stop` leaves VMs (idle pool clones too) for the next start to reap, and a bench's
/// state dir is a temporary one no later start will see.
pub struct Cleanup(pub String);

impl Cleanup {
    /// For the instance whose state dir is `state` (its `instance-id` file).
    pub fn for_state(state: &Path) -> Cleanup {
        Cleanup(format!("paddock-{}-", std::fs::read_to_string(state.join("instance-id")).unwrap_or_default().trim()))
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(out) = Command::new("virsh").args(["-c", "qemu:///system", "list", "--all", "--name"]).output() else { return };
        for name in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with(&self.0)) {
            for verb in ["destroy", "undefine"] {
                let _ =
                    Command::new("virsh").args(["-c", "qemu:///system", verb, name]).stderr(Stdio::null()).stdout(Stdio::null()).status();
            }
        }
    }
}
