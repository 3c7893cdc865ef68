//! Domain values tests build again and again.

use std::time::Duration;

use paddock::config::{Arch, Boot, HostKeyPolicy, Image, Os, Shell};

/// A one-vCPU Linux image logging in as root, its host key learnt from the console, 10 s to boot.
pub fn image(name: &str, arch: Arch, memory_mib: u64, boot: Boot) -> Image {
    Image {
        name: name.into(),
        os: Os::Linux,
        arch,
        boot,
        memory_mib,
        vcpus: 1,
        user: "root".into(),
        shell: Shell::Sh,
        host_key: HostKeyPolicy::Console,
        trusts_fleet_ca: false,
        boot_timeout: Duration::from_secs(10),
        nic_model: None,
        tpm: false,
        smc_key: None,
        firmware: None,
        network: paddock::config::GuestNetwork::Outbound,
        platform: name.into(),
        start: paddock::config::Start::Cold,
        min_ready: 0,
        guest_agent: false,
    }
}
