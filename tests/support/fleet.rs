//! The text of a test's `fleet.toml`: the `[daemon]` section and the one local TCG host
//! (`qemu:///system`) every VM test starts from, then the images, machines, users and jobs it
//! adds. One builder instead of a preamble copied into each test file.
//!
//! The rendered text keeps one key per line in a fixed order (`name`, `uri`, … `max_vms`), so a
//! test may still edit it with `replacen` (as `tests/e2e/reload.rs` does to change `max_vms`).

use std::path::{Path, PathBuf};

/// A test fleet's TOML, built up by sections.
#[derive(Debug, Clone)]
pub struct TestFleet {
    state_dir: PathBuf,
    ssh_ports: String,
    daemon: Vec<String>,
    host_name: String,
    host_uri: String,
    host_extra: Vec<String>,
    capacity: (u32, u64, u32),
    sections: Vec<String>,
}

impl TestFleet {
    /// Daemon on `127.0.0.1:0` with its state in `dir/state`, guests' SSH on `ssh_ports`
    /// (`"24010-24019"`), a 5 s reconcile interval, and host `local`: `qemu:///system`, TCG,
    /// address 127.0.0.1, room for 4 VMs, 4096 MiB and 4 vCPUs.
    pub fn local(dir: &Path, ssh_ports: &str) -> TestFleet {
        TestFleet {
            state_dir: dir.join("state"),
            ssh_ports: ssh_ports.into(),
            daemon: Vec::new(),
            host_name: "local".into(),
            host_uri: "qemu:///system".into(),
            host_extra: Vec::new(),
            capacity: (4, 4096, 4),
            sections: Vec::new(),
        }
    }

    /// Another `[daemon]` line (`public_reads = true`).
    pub fn daemon(mut self, line: &str) -> TestFleet {
        self.daemon.push(line.trim().into());
        self
    }

    /// The host's room: VMs at once, memory and vCPUs.
    pub fn capacity(mut self, max_vms: u32, memory_mib: u64, vcpus: u32) -> TestFleet {
        self.capacity = (max_vms, memory_mib, vcpus);
        self
    }

    /// The one host is `name` at `uri` instead (a donor's `qemu+ssh://` session daemon).
    pub fn host(mut self, name: &str, uri: &str) -> TestFleet {
        self.host_name = name.into();
        self.host_uri = uri.into();
        self
    }

    /// Another line of the host's table (`image_pool = "paddock"`).
    pub fn host_line(mut self, line: &str) -> TestFleet {
        self.host_extra.push(line.trim().into());
        self
    }

    /// TOML appended after the host: `[[images]]`, `[[machines]]`, `[[jobs]]` tables.
    pub fn section(mut self, toml: &str) -> TestFleet {
        self.sections.push(toml.trim_matches('\n').into());
        self
    }

    /// A `[[users]]` table: `name` with `role` and these SSH public keys.
    pub fn user(self, name: &str, role: &str, ssh_keys: &[String]) -> TestFleet {
        let keys = ssh_keys.iter().map(|k| format!("{:?}", k.trim())).collect::<Vec<_>>().join(", ");
        self.section(&format!("[[users]]\nname = \"{name}\"\nrole = \"{role}\"\nssh_keys = [{keys}]"))
    }

    /// The fleet.toml text.
    pub fn toml(&self) -> String {
        let daemon: String = self.daemon.iter().map(|l| format!("{l}\n")).collect();
        let extra: String = self.host_extra.iter().map(|l| format!("{l}\n")).collect();
        let (max_vms, memory_mib, vcpus) = self.capacity;
        let mut out = format!(
            r#"
version = 1
[daemon]
{daemon}listen = "127.0.0.1:0"
state_dir = "{state}"
ssh_ports = "{ports}"
reconcile_interval = "5s"

[[hosts]]
name = "{name}"
uri = "{uri}"
{extra}accelerator = "tcg"
address = "127.0.0.1"
max_vms = {max_vms}
memory_mib = {memory_mib}
vcpus = {vcpus}
"#,
            state = self.state_dir.display(),
            ports = self.ssh_ports,
            name = self.host_name,
            uri = self.host_uri,
        );
        for s in &self.sections {
            out.push('\n');
            out.push_str(s);
            out.push('\n');
        }
        out
    }
}
