//! `paddock check`: validate a fleet file and summarise it.

use std::path::Path;
use std::process::ExitCode;

use chrono::Utc;
use paddock::config::{self, Boot, HostKeyPolicy, LoadError, duration};
use paddock::libvirt::{HostHandle, HostOptions, HostStatus};
use paddock::machines::{self, MachineError};

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let fleet = match config::load(path) {
        Ok(f) => f,
        Err(LoadError::Invalid(errors)) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{}: {} error(s)", path.display(), errors.len());
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    outln!("{}: ok", path.display());
    outln!("\nhosts:");
    for h in &fleet.hosts {
        outln!(
            "  {:<16} {:<28} {:<4} max {} VMs, {} MiB, {} vCPUs, forwards on {}",
            h.name,
            h.uri,
            h.accelerator.domain_type(),
            h.capacity.max_vms,
            h.capacity.memory_mib,
            h.capacity.vcpus,
            h.address
        );
    }
    outln!("\nimages:");
    for i in &fleet.images {
        let boot = match &i.boot {
            Boot::Disk { base } => format!("disk {}", base.display()),
            Boot::Kernel { kernel, .. } => format!("kernel {}", kernel.display()),
        };
        outln!(
            "  {:<16} {:<7} {:<8} {} MiB, {} vCPU, user {}, {}",
            i.name,
            i.os.as_str(),
            i.arch.as_str(),
            i.memory_mib,
            i.vcpus,
            i.user,
            boot
        );
        for missing in missing_files(i) {
            outln!("    warning: {} does not exist yet (run `make image`)", missing.display());
        }
    }
    outln!("\njobs:");
    let now = Utc::now();
    for j in &fleet.jobs {
        outln!("  {:<16} on {} ({} steps)", j.name, j.images.join(", "), j.steps.len());
        for input in &j.inputs {
            let state = if input.path.exists() { "" } else { "  warning: missing" };
            outln!("    input {} -> {}{state}", input.path.display(), input.dest);
        }
        match &j.schedule {
            Some(s) => {
                outln!("    schedule `{}` in {}; next:", s.expr, s.tz);
                for t in s.upcoming(now, 3) {
                    outln!("      {}", t.with_timezone(&s.tz).format("%Y-%m-%d %H:%M %Z"));
                }
            }
            None => outln!("    on request only"),
        }
        if let Some(h) = j.hold_on_failure {
            outln!("    holds failed VMs for {}", duration::format(h));
        }
    }
    let machines_ok = check_machines(&fleet);
    outln!("\nusers: {}", fleet.users.iter().map(|u| format!("{} ({})", u.name, u.role.as_str())).collect::<Vec<_>>().join(", "));
    outln!("recorders: {}", fleet.recorders.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "));
    Ok(if machines_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Asks each machine's host whether its domain and snapshot exist. A missing domain or
/// snapshot is an error (false); a host that cannot be reached now is only a warning.
fn check_machines(fleet: &config::Fleet) -> bool {
    if fleet.machines.is_empty() {
        return true;
    }
    outln!("\nmachines:");
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            outln!("  warning: cannot ask the hosts about machines: {e}");
            return true;
        }
    };
    let options = HostOptions { call_timeout: fleet.daemon.libvirt_timeout, connect_timeout: fleet.daemon.libvirt_connect_timeout };
    rt.block_on(async {
        let mut ok = true;
        for m in &fleet.machines {
            let snapshot = m.snapshot.as_deref().map(|s| format!(", snapshot {s}")).unwrap_or_default();
            outln!(
                "  {:<16} domain {} on host {}{snapshot}, ssh port {}, after run: {}",
                m.name,
                m.domain,
                m.host,
                m.ssh_port,
                m.after.as_str()
            );
            let Some(host) = fleet.host(&m.host) else { continue };
            let handle = HostHandle::spawn_with(&host.name, &host.uri, options);
            if let HostStatus::Down { reason, .. } = handle.wait_connected().await {
                outln!("    warning: host {} cannot be asked now: {reason}", host.name);
                continue;
            }
            match machines::check(m, &handle).await {
                Ok(()) => {}
                Err(e @ (MachineError::Missing { .. } | MachineError::NoSnapshot { .. })) => {
                    outln!("    error: {e}");
                    ok = false;
                }
                Err(e) => outln!("    warning: {}", paddock::error::chain(&e)),
            }
        }
        ok
    })
}

fn missing_files(image: &config::Image) -> Vec<std::path::PathBuf> {
    let mut files = match &image.boot {
        Boot::Disk { base } => vec![base.clone()],
        Boot::Kernel { kernel, initrd, .. } => vec![kernel.clone(), initrd.clone()],
    };
    if let HostKeyPolicy::File(f) = &image.host_key {
        files.push(f.clone());
    }
    files.into_iter().filter(|f| !f.exists()).collect()
}
