//! The onboarding verdict: what a probe of a host says against what the fleet
//! would ask of it, as lines of ok / warning / failure, each failure and
//! warning with what to fix. Pure: the probe and file hashes come in.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::config::{Accelerator, Host, Image};
use crate::libvirt::HostProbe;

use super::images::{image_files, volume_name, volume_prefix};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub level: Level,
    /// What the line is about: `connection`, `arch`, `passt`, `image tiny`...
    pub topic: String,
    pub text: String,
    /// What to do about a warning or failure.
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ready,
    ReadyWithWarnings,
    NotReady,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ready => "ready",
            Verdict::ReadyWithWarnings => "ready with warnings",
            Verdict::NotReady => "not ready",
        })
    }
}

/// A local file's hash and size (`None` when it cannot be read).
pub type LocalFiles = BTreeMap<PathBuf, Option<(String, u64)>>;

/// Whether guests on this host read image files from this machine's disk.
pub fn is_local(uri: &str) -> bool {
    uri.starts_with("qemu:///") || uri.starts_with("test:///")
}

fn line(level: Level, topic: impl Into<String>, text: impl Into<String>, fix: Option<String>) -> CheckLine {
    CheckLine { level, topic: topic.into(), text: text.into(), fix }
}

pub fn verdict(lines: &[CheckLine]) -> Verdict {
    match lines.iter().map(|l| l.level).max() {
        Some(Level::Fail) => Verdict::NotReady,
        Some(Level::Warn) => Verdict::ReadyWithWarnings,
        _ => Verdict::Ready,
    }
}

/// Checks a probed host. `host` is its `fleet.toml` entry when it has one;
/// `images` are the fleet's images (the host's allow-list applies).
pub fn assess(uri: &str, probe: Result<&HostProbe, String>, host: Option<&Host>, images: &[Image], files: &LocalFiles) -> Vec<CheckLine> {
    let p = match probe {
        Ok(p) => p,
        Err(e) => {
            return vec![line(
                Level::Fail,
                "connection",
                format!("cannot connect to {uri}: {e}"),
                Some(format!("check that libvirtd runs there and that `virsh -c {uri} list` works from this machine")),
            )];
        }
    };
    let mut out = Vec::new();
    let f = &p.facts;
    out.push(line(
        Level::Ok,
        "connection",
        format!(
            "{uri} ({}): libvirt {}{}",
            if p.hostname.is_empty() { "?" } else { &p.hostname },
            p.libvirt_version,
            p.hypervisor_version.as_ref().map(|v| format!(", hypervisor {v}")).unwrap_or_default()
        ),
        None,
    ));
    out.push(line(Level::Ok, "host", format!("arch {}, {} CPUs, {} MiB memory", f.arch, f.cpus, f.memory_mib), None));

    // Emulators and accelerators.
    if p.emulators.is_empty() {
        out.push(line(
            Level::Fail,
            "emulators",
            "libvirt offers no guest emulator",
            Some("install qemu-system-<arch> (e.g. qemu-system-x86)".into()),
        ));
    } else {
        let mut by_arch: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for e in &p.emulators {
            by_arch.entry(&e.arch).or_default().push(&e.domain_type);
        }
        let text = by_arch.iter().map(|(a, t)| format!("{a} ({})", t.join(", "))).collect::<Vec<_>>().join("; ");
        out.push(line(Level::Ok, "emulators", text, None));
    }
    let accels: Vec<&str> = {
        let mut v: Vec<&str> = p.emulators.iter().map(|e| e.domain_type.as_str()).collect();
        v.sort();
        v.dedup();
        v
    };
    if let Some(h) = host {
        let want = f.domain_type(h.accelerator);
        if accels.contains(&want) {
            out.push(line(Level::Ok, "accelerator", format!("`{want}` as configured (available: {})", accels.join(", ")), None));
        } else {
            let fix = match h.accelerator {
                Accelerator::Kvm => "enable KVM on the host (/dev/kvm, kvm modules) or set accelerator = \"tcg\"".to_string(),
                Accelerator::Tcg => "install QEMU's system emulators on the host".to_string(),
            };
            out.push(line(
                Level::Fail,
                "accelerator",
                format!("configured `{want}` is not available (host offers: {})", accels.join(", ")),
                Some(fix),
            ));
        }
        if h.capacity.memory_mib > f.memory_mib {
            out.push(line(
                Level::Warn,
                "capacity",
                format!("memory_mib = {} but the host has {} MiB", h.capacity.memory_mib, f.memory_mib),
                Some(format!("lower memory_mib to at most {} unless over-committing is meant", f.memory_mib)),
            ));
        }
        if h.capacity.vcpus > f.cpus {
            out.push(line(
                Level::Warn,
                "capacity",
                format!("vcpus = {} but the host has {} CPUs", h.capacity.vcpus, f.cpus),
                Some(format!("lower vcpus to at most {} unless over-committing is meant", f.cpus)),
            ));
        }
    } else {
        out.push(line(Level::Ok, "accelerator", format!("available: {}", accels.join(", ")), None));
    }

    // passt, for user-mode networking with port forwards.
    if host.is_none_or(|h| h.network.is_none()) {
        let known: Vec<bool> = p.emulators.iter().filter_map(|e| e.passt).collect();
        if known.contains(&true) {
            out.push(line(Level::Ok, "passt", "the passt interface backend is available", None));
        } else if known.is_empty() {
            out.push(line(
                Level::Warn,
                "passt",
                "libvirt does not say whether the passt backend is available",
                Some("install passt on the host (libvirt 9.0 or newer uses it for <backend type='passt'/>)".into()),
            ));
        } else {
            out.push(line(
                Level::Fail,
                "passt",
                "the passt interface backend is not available; guests' SSH cannot be forwarded",
                Some("install the `passt` package on the host and restart libvirtd".into()),
            ));
        }
    }

    // Storage pools.
    let active: Vec<_> = p.pools.iter().filter(|p| p.active).collect();
    if active.is_empty() {
        out.push(line(
            Level::Warn,
            "storage",
            "no active storage pool; images cannot be uploaded to this host",
            Some("virsh pool-define-as paddock dir --target /var/lib/paddock/images && virsh pool-build paddock && virsh pool-start paddock && virsh pool-autostart paddock".into()),
        ));
    } else {
        let text = active
            .iter()
            .map(|p| format!("{} ({} MiB free of {} MiB)", p.name, p.available >> 20, p.capacity >> 20))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(line(Level::Ok, "storage", text, None));
    }

    // The images paddock would place here.
    let placeable: Vec<&Image> = images.iter().filter(|i| host.is_none_or(|h| h.limits.allows_image(&i.name))).collect();
    let accel = host.map_or(Accelerator::Tcg, |h| h.accelerator);
    let mut runnable = 0;
    let local = is_local(uri);
    let mut need_bytes = 0u64;
    for img in &placeable {
        let topic = format!("image {}", img.name);
        if !f.runs(img.arch.as_str(), accel) {
            out.push(line(
                Level::Warn,
                topic,
                format!("{} guests cannot run here with `{}`; it will not be placed here", img.arch, f.domain_type(accel)),
                Some(format!("install qemu-system for {} on the host, or leave it out of this host's `images`", img.arch)),
            ));
            continue;
        }
        let cap_mem = host.map_or(f.memory_mib, |h| h.capacity.memory_mib);
        let cap_cpu = host.map_or(f.cpus, |h| h.capacity.vcpus);
        if img.memory_mib > cap_mem || img.vcpus > cap_cpu {
            out.push(line(
                Level::Warn,
                topic,
                format!("needs {} MiB and {} vCPUs; the host has room for {cap_mem} MiB and {cap_cpu} vCPUs", img.memory_mib, img.vcpus),
                Some("give the host more memory_mib/vcpus, or run the image elsewhere".into()),
            ));
            continue;
        }
        runnable += 1;
        for file in image_files(img) {
            let local_file = files.get(&file.path).cloned().flatten();
            let Some((sha, size)) = local_file else {
                out.push(line(
                    Level::Fail,
                    &topic,
                    format!("{} {} is missing on this machine", file.role, file.path.display()),
                    Some("build or copy the image file, then check again".into()),
                ));
                continue;
            };
            need_bytes += size;
            let want = volume_name(&file, &sha);
            if let Some(v) = p.volumes.iter().find(|v| v.name == want) {
                if v.capacity == size {
                    out.push(line(
                        Level::Ok,
                        &topic,
                        format!("{} present as volume {}/{} (sha256 {})", file.role, v.pool, v.name, &sha[..12]),
                        None,
                    ));
                } else {
                    out.push(line(
                        Level::Fail,
                        &topic,
                        format!("{} volume {}/{} has {} bytes, the image file {size}", file.role, v.pool, v.name, v.capacity),
                        Some(format!("delete the volume (virsh vol-delete {} --pool {}); paddock uploads it again", v.name, v.pool)),
                    ));
                }
            } else if local {
                out.push(line(Level::Ok, &topic, format!("{} read from {} (sha256 {})", file.role, file.path.display(), &sha[..12]), None));
            } else {
                let stale = p.volumes.iter().filter(|v| v.name.starts_with(&volume_prefix(&file))).count();
                out.push(line(
                    Level::Warn,
                    &topic,
                    if stale > 0 {
                        format!(
                            "{} on the host is an old version ({stale} stale volume(s)); runs are not placed here until it is current",
                            file.role
                        )
                    } else {
                        format!("{} is not on the host yet; runs are not placed here until it is", file.role)
                    },
                    Some("start the daemon: it uploads images to every host with an active pool".into()),
                ));
            }
        }
    }
    if !placeable.is_empty() && runnable == 0 {
        out.push(line(
            Level::Fail,
            "images",
            "none of the fleet's images can run on this host",
            Some("fix the arch or room problems above, or give the host images it can run".into()),
        ));
    }
    if !local
        && let Some(best) = active.iter().map(|p| p.available).max()
        && best < need_bytes
    {
        out.push(line(
            Level::Warn,
            "storage",
            format!("the images need {} MiB; the roomiest pool has {} MiB free", need_bytes >> 20, best >> 20),
            Some("free space in the pool or add a bigger one".into()),
        ));
    }
    out
}

/// The report as text: one line per check, fixes indented below, the verdict last.
pub fn render(uri: &str, lines: &[CheckLine]) -> String {
    let mut s = format!("host check {uri}\n");
    for l in lines {
        s.push_str(&format!("  {:<5} {:<20} {}\n", l.level.as_str(), l.topic, l.text));
        if let Some(fix) = &l.fix {
            s.push_str(&format!("        fix: {fix}\n"));
        }
    }
    let warns = lines.iter().filter(|l| l.level == Level::Warn).count();
    let fails = lines.iter().filter(|l| l.level == Level::Fail).count();
    s.push_str(&format!("verdict: {} ({fails} failure(s), {warns} warning(s))\n", verdict(lines)));
    s
}

/// Hashes of every file of `images`, for [`assess`]. Blocks on disk reads.
pub fn local_files(images: &[Image]) -> LocalFiles {
    local_files_with(images, &crate::checksums::Checksums::none())
}

/// As [`local_files`], but files whose hash `known` holds as they are now are not read again.
pub fn local_files_with(images: &[Image], known: &crate::checksums::Checksums) -> LocalFiles {
    let mut out = LocalFiles::new();
    for img in images {
        for f in image_files(img) {
            let v = known.file(&f.path).ok().map(|h| h.sha256).zip(std::fs::metadata(&f.path).ok().map(|m| m.len()));
            out.insert(f.path, v);
        }
    }
    out
}
