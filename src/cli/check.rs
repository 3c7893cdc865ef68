//! `paddock check`: validate a fleet file and summarise it.

use std::path::Path;
use std::process::ExitCode;

use chrono::Utc;
use paddock::config::{self, Boot, HostKeyPolicy, LoadError, duration};

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
    outln!("\nusers: {}", fleet.users.iter().map(|u| format!("{} ({})", u.name, u.role.as_str())).collect::<Vec<_>>().join(", "));
    outln!("recorders: {}", fleet.recorders.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "));
    Ok(ExitCode::SUCCESS)
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
