//! Turns the raw, spanned `fleet.toml` into a [`Fleet`], collecting every error
//! with the file, line, column and key path it belongs to.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::*;
use super::{ConfigError, duration, model::*};

const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_INPUT_CAP: u64 = 16 << 20;
/// The most `retry_infrastructure` a job may ask for: a broken lab is not hidden behind endless re-runs.
pub const MAX_RETRIES: u32 = 10;
/// `priority` is within ±this.
pub const MAX_PRIORITY: i32 = 1000;

/// `"16M"`, `"512K"`, `"1G"` (binary units) or a plain byte count.
pub(super) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 10),
        (i, 'M' | 'm') => (&s[..i], 20),
        (i, 'G' | 'g') => (&s[..i], 30),
        _ => (s, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

pub(super) struct Validator<'a> {
    src: &'a str,
    file: &'a Path,
    base_dir: PathBuf,
    pub(super) errors: Vec<ConfigError>,
}

impl<'a> Validator<'a> {
    pub(super) fn new(src: &'a str, file: &'a Path) -> Self {
        let parent = file.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p }).unwrap_or(Path::new("."));
        // Absolute, because libvirt opens some of these paths (console logs,
        // kernels) from its own working directory.
        let base_dir = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
        Validator { src, file, base_dir, errors: Vec::new() }
    }

    pub(super) fn error(&mut self, span: Option<Range<usize>>, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::at(self.file, self.src, span, path.into(), message.into()));
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }

    /// A secret env value: a file's contents (one trailing newline dropped) or a variable of
    /// the daemon's environment. The error never quotes the value.
    fn secret(&self, s: &RawSecret) -> Result<String, String> {
        const MAX_SECRET: u64 = 64 * 1024;
        match (&s.from_file, &s.from_env) {
            (Some(f), None) => {
                let path = self.path(f);
                let len = std::fs::metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
                if len > MAX_SECRET {
                    return Err(format!("{} is {len} bytes; a secret is at most {MAX_SECRET}", path.display()));
                }
                let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
                if text.is_empty() {
                    return Err(format!("{} is empty", path.display()));
                }
                Ok(text.to_owned())
            }
            (None, Some(name)) => match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(v),
                Ok(_) => Err(format!("the daemon's environment variable `{name}` is empty")),
                Err(_) => Err(format!("the daemon's environment has no variable `{name}` (or it is not UTF-8)")),
            },
            _ => Err("give exactly one of `from_file` and `from_env`".to_owned()),
        }
    }

    fn duration(&mut self, v: &Option<S<String>>, path: &str, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match duration::parse(s.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.error(Some(s.span()), path, e);
                    default
                }
            },
        }
    }

    /// A duration that must not be zero (a deadline of nothing refuses everything).
    fn timeout(&mut self, v: &Option<S<String>>, path: &str, default: Duration) -> Duration {
        let d = self.duration(v, path, default);
        if d.is_zero() {
            if let Some(s) = v {
                self.error(Some(s.span()), path, "must be longer than 0s");
            }
            return default;
        }
        d
    }

    fn positive<T: TryFrom<i64>>(&mut self, v: &S<i64>, path: &str, fallback: T) -> T {
        let n = *v.get_ref();
        match T::try_from(n) {
            Ok(t) if n > 0 => t,
            _ => {
                self.error(Some(v.span()), path, format!("must be a positive number, got {n}"));
                fallback
            }
        }
    }

    /// An optional integer within `range`; absent: `default`.
    fn within<T: TryFrom<i64> + Copy + std::fmt::Display>(
        &mut self,
        v: &Option<S<i64>>,
        path: &str,
        range: std::ops::RangeInclusive<T>,
        default: T,
    ) -> T
    where
        i64: From<T>,
    {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        let (lo, hi) = (i64::from(*range.start()), i64::from(*range.end()));
        match T::try_from(n) {
            Ok(t) if (lo..=hi).contains(&n) => t,
            _ => {
                self.error(Some(v.span()), path, format!("must be a whole number from {lo} to {hi}, got {n}"));
                default
            }
        }
    }

    fn one_of<T: Copy>(&mut self, v: &S<String>, path: &str, choices: &[(&str, T)]) -> Option<T> {
        match choices.iter().find(|(name, _)| *name == v.get_ref()) {
            Some((_, t)) => Some(*t),
            None => {
                let known: Vec<String> = choices.iter().map(|(n, _)| format!("`{n}`")).collect();
                self.error(Some(v.span()), path, format!("`{}` is not allowed; expected one of {}", v.get_ref(), known.join(", ")));
                None
            }
        }
    }

    fn name(&mut self, v: &S<String>, path: &str, seen: &mut HashSet<String>, what: &str) -> String {
        let name = v.get_ref().clone();
        let valid = !name.is_empty() && name.len() <= 48 && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            self.error(Some(v.span()), path, format!("`{name}` is not a valid {what} name; use 1-48 of a-z, A-Z, 0-9, `-`, `_`, `.`"));
        } else if !seen.insert(name.clone()) {
            self.error(Some(v.span()), path, format!("duplicate {what} name `{name}`"));
        }
        name
    }

    pub(super) fn fleet(&mut self, raw: RawFleet) -> Fleet {
        if *raw.version.get_ref() != 1 {
            self.error(
                Some(raw.version.span()),
                "version",
                format!("schema version {} is not supported; this paddock reads version 1", raw.version.get_ref()),
            );
        }
        let daemon = self.daemon(&raw.daemon);
        let mut seen = HashSet::new();
        let hosts: Vec<Host> = raw.hosts.iter().enumerate().map(|(i, h)| self.host(i, h, &mut seen)).collect();
        if hosts.is_empty() {
            self.error(None, "hosts", "at least one [[hosts]] entry is required");
        }
        let mut image_seen = HashSet::new();
        let images: Vec<Image> = raw.images.iter().enumerate().map(|(i, m)| self.image(i, m, &mut image_seen)).collect();
        // Machines share the images' names: a job's `images` may name either.
        let machines: Vec<Machine> =
            raw.machines.iter().enumerate().map(|(i, m)| self.machine(i, m, &mut image_seen, &hosts, &daemon)).collect();
        for (i, m) in machines.iter().enumerate() {
            if let Some(other) = machines[..i].iter().find(|o| o.host == m.host && (o.ssh_port == m.ssh_port || o.domain == m.domain)) {
                let span = Some(raw.machines[i].get_ref().ssh_port.span());
                self.error(
                    span,
                    format!("machines[{i}]"),
                    format!("machine `{}` has the host and the port or domain of `{}`", m.name, other.name),
                );
            }
        }
        let mut seen = HashSet::new();
        let users: Vec<User> = raw.users.iter().enumerate().map(|(i, u)| self.user(i, u, &mut seen)).collect();
        let image_names: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
        let target_names: Vec<&str> = image_names.iter().copied().chain(machines.iter().map(|m| m.name.as_str())).collect();
        let user_names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        let mut seen = HashSet::new();
        let jobs: Vec<Job> = raw.jobs.iter().enumerate().map(|(i, j)| self.job(i, j, &mut seen, &target_names, &user_names)).collect();
        let job_names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        self.check_allow_lists(&raw.hosts, &image_names, &job_names);
        self.check_ready_pools(&raw.hosts, &hosts, &images);
        let mut seen = HashSet::new();
        let mut recorders: Vec<Recorder> = raw.recorders.iter().enumerate().map(|(i, r)| self.recorder(i, r, &mut seen)).collect();
        if raw.recorders.is_empty() {
            recorders.push(Recorder { name: "embedded".into(), target: RecorderTarget::Embedded });
        }
        let access = self.access(raw.access.as_ref());
        let limits = self.fleet_limits(raw.limits.as_ref());
        let retention = raw.retention.as_ref().map(|r| self.retention(r));
        Fleet { source: self.file.to_path_buf(), daemon, hosts, images, jobs, users, recorders, machines, access, limits, retention }
    }

    fn retention(&mut self, raw: &S<RawRetention>) -> Retention {
        let r = raw.get_ref();
        let keep_last = match &r.keep_last {
            None => 10,
            Some(n) => self.positive(n, "retention.keep_last", 10u32),
        };
        let opt = |me: &mut Self, v: &Option<S<String>>, key: &str| {
            v.as_ref().map(|_| me.duration(v, &format!("retention.{key}"), Duration::ZERO))
        };
        let max_age = opt(self, &r.max_age, "max_age");
        let failure_max_age = opt(self, &r.failure_max_age, "failure_max_age");
        if let (Some(pass), Some(fail)) = (max_age, failure_max_age)
            && fail < pass
        {
            let span = r.failure_max_age.as_ref().map(|s| s.span());
            self.error(span, "retention.failure_max_age", "failures are kept at least as long as passes: at least `max_age`");
        }
        let every = self.duration(&r.every, "retention.every", Duration::from_secs(3600));
        if every.is_zero() {
            let span = r.every.as_ref().map(|s| s.span());
            self.error(span, "retention.every", "must be longer than 0s");
        }
        Retention { keep_last, max_age, failure_max_age, every }
    }

    fn fleet_limits(&mut self, raw: Option<&S<RawLimits>>) -> Limits {
        let d = Limits::default();
        let Some(raw) = raw else { return d };
        let l = raw.get_ref();
        let mut size = |v: &Option<S<String>>, key: &str, default: u64| match v {
            None => default,
            Some(s) => match super::size::parse(s.get_ref()) {
                Ok(n) => n,
                Err(e) => {
                    self.error(Some(s.span()), format!("limits.{key}"), e);
                    default
                }
            },
        };
        let run_log_bytes = size(&l.run_log, "run_log", d.run_log_bytes);
        let step_log_bytes = size(&l.step_log, "step_log", d.step_log_bytes);
        let step_output_bytes = size(&l.step_output, "step_output", d.step_output_bytes as u64);
        let result_body_bytes = size(&l.result_body, "result_body", d.result_body_bytes as u64);
        let console_bytes = size(&l.console, "console", d.console_bytes);
        // "none": a step may print without end (its logs stay capped).
        let step_kill_after_bytes = match &l.step_kill_after {
            Some(s) if s.get_ref() == "none" => None,
            v => Some(size(v, "step_kill_after", d.step_kill_after_bytes.unwrap_or(1 << 30))),
        };
        let mut count = |v: &Option<S<i64>>, key: &str, default: usize| match v {
            None => default,
            Some(n) => self.positive(n, &format!("limits.{key}"), default),
        };
        let result_steps = count(&l.result_steps, "result_steps", d.result_steps);
        let result_tags = count(&l.result_tags, "result_tags", d.result_tags);
        let http_connections = count(&l.http_connections, "http_connections", d.http_connections);
        let live_streams = count(&l.live_streams, "live_streams", d.live_streams);
        let live_streams_per_client = count(&l.live_streams_per_client, "live_streams_per_client", d.live_streams_per_client);
        Limits {
            run_log_bytes,
            step_log_bytes,
            step_output_bytes: usize::try_from(step_output_bytes).unwrap_or(usize::MAX),
            result_body_bytes: usize::try_from(result_body_bytes).unwrap_or(usize::MAX),
            result_steps,
            result_tags,
            http_header_timeout: self.timeout(&l.http_header_timeout, "limits.http_header_timeout", d.http_header_timeout),
            http_request_timeout: self.timeout(&l.http_request_timeout, "limits.http_request_timeout", d.http_request_timeout),
            http_connections,
            live_streams,
            live_streams_per_client,
            artifact_timeout: self.timeout(&l.artifact_timeout, "limits.artifact_timeout", d.artifact_timeout),
            console_bytes,
            step_kill_after_bytes,
        }
    }

    fn daemon(&mut self, raw: &S<RawDaemon>) -> Daemon {
        let d = raw.get_ref();
        let listen = match d.listen.get_ref().parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.error(
                    Some(d.listen.span()),
                    "daemon.listen",
                    format!("`{}` is not an address:port like \"127.0.0.1:8080\"", d.listen.get_ref()),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        };
        let ssh_ports = match parse_port_range(d.ssh_ports.get_ref()) {
            Ok(r) => r,
            Err(e) => {
                self.error(Some(d.ssh_ports.span()), "daemon.ssh_ports", e);
                PortRange { first: 1024, last: 1024 }
            }
        };
        let launch_retries = match &d.launch_retries {
            None => 2,
            Some(v) => self.positive(v, "daemon.launch_retries", 2u32),
        };
        Daemon {
            listen,
            state_dir: self.path(d.state_dir.get_ref()),
            ssh_ports,
            reconcile_interval: self.duration(&d.reconcile_interval, "daemon.reconcile_interval", Duration::from_secs(30)),
            max_hold: self.duration(&d.max_hold, "daemon.max_hold", Duration::from_secs(24 * 3600)),
            launch_retries,
            host_cooldown: self.duration(&d.host_cooldown, "daemon.host_cooldown", Duration::from_secs(60)),
            libvirt_timeout: self.duration(&d.libvirt_timeout, "daemon.libvirt_timeout", crate::libvirt::DEFAULT_CALL_TIMEOUT),
            libvirt_connect_timeout: self.duration(
                &d.libvirt_connect_timeout,
                "daemon.libvirt_connect_timeout",
                crate::libvirt::DEFAULT_CONNECT_TIMEOUT,
            ),
            priority_aging: self.duration(&d.priority_aging, "daemon.priority_aging", Duration::from_secs(60)),
            upload_timeout: self.duration(&d.upload_timeout, "daemon.upload_timeout", Duration::from_secs(30 * 60)),
            public_reads: d.public_reads.unwrap_or(false),
            emulation_boot_factor: self.boot_factors(&d.emulation_boot_factor),
        }
    }

    fn boot_factors(&mut self, raw: &BTreeMap<String, S<f64>>) -> BTreeMap<Arch, f64> {
        let mut out = BTreeMap::new();
        for (arch, factor) in raw {
            let known: Vec<String> = Arch::ALL.iter().map(|a| format!("`{a}`")).collect();
            match Arch::parse(arch) {
                None => self.error(
                    Some(factor.span()),
                    format!("daemon.emulation_boot_factor.{arch}"),
                    format!("unknown arch `{arch}`; expected one of {}", known.join(", ")),
                ),
                Some(_) if !(1.0..=100.0).contains(factor.get_ref()) => self.error(
                    Some(factor.span()),
                    format!("daemon.emulation_boot_factor.{arch}"),
                    format!("must be between 1 and 100, got {}", factor.get_ref()),
                ),
                Some(a) => {
                    out.insert(a, *factor.get_ref());
                }
            }
        }
        out
    }

    fn host(&mut self, i: usize, raw: &S<RawHost>, seen: &mut HashSet<String>) -> Host {
        let h = raw.get_ref();
        let p = format!("hosts[{i}]");
        let name = self.name(&h.name, &format!("{p}.name"), seen, "host");
        let uri = h.uri.get_ref().clone();
        let scheme_ok = ["qemu:///", "qemu+ssh://", "qemu+tcp://", "qemu+tls://", "test:///"].iter().any(|s| uri.starts_with(s));
        if !scheme_ok {
            self.error(
                Some(h.uri.span()),
                format!("{p}.uri"),
                format!("`{uri}` is not a libvirt URI paddock can use; expected qemu:///system, qemu+ssh://HOST/system or test:///..."),
            );
        }
        let accelerator = self
            .one_of(&h.accelerator, &format!("{p}.accelerator"), &[("kvm", Accelerator::Kvm), ("tcg", Accelerator::Tcg)])
            .unwrap_or(Accelerator::Tcg);
        let address = match h.address.get_ref().parse::<IpAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.error(Some(h.address.span()), format!("{p}.address"), format!("`{}` is not an IP address", h.address.get_ref()));
                IpAddr::from([127, 0, 0, 1])
            }
        };
        let capacity = Capacity {
            max_vms: self.positive(&h.max_vms, &format!("{p}.max_vms"), 1u32),
            memory_mib: self.positive(&h.memory_mib, &format!("{p}.memory_mib"), 1u64),
            vcpus: self.positive(&h.vcpus, &format!("{p}.vcpus"), 1u32),
        };
        let limits = self.limits(&p, h);
        let image_pool = h.image_pool.as_ref().map(|n| n.get_ref().trim().to_string());
        if let (Some(raw), Some(pool)) = (&h.image_pool, &image_pool)
            && (pool.is_empty() || pool.contains('/'))
        {
            self.error(Some(raw.span()), format!("{p}.image_pool"), format!("`{pool}` is not a storage pool name"));
        }
        let network = h.network.as_ref().map(|n| n.get_ref().clone());
        Host { name, uri, accelerator, address, capacity, network, image_pool, limits }
    }

    /// Donor limits; the allow-lists are checked against images and jobs in
    /// [`Validator::check_allow_lists`], once those are known.
    fn limits(&mut self, p: &str, h: &RawHost) -> DonorLimits {
        let mut windows = Vec::new();
        for (k, w) in h.windows.iter().enumerate() {
            match Window::parse(w.get_ref()) {
                Ok(w) => windows.push(w),
                Err(e) => self.error(Some(w.span()), format!("{p}.windows[{k}]"), e),
            }
        }
        let timezone = match &h.timezone {
            None => chrono_tz::UTC,
            Some(t) => t.get_ref().parse::<chrono_tz::Tz>().unwrap_or_else(|_| {
                self.error(
                    Some(t.span()),
                    format!("{p}.timezone"),
                    format!("unknown time zone `{}`; expected an IANA name like \"Europe/Berlin\"", t.get_ref()),
                );
                chrono_tz::UTC
            }),
        };
        if h.timezone.is_some() && h.windows.is_empty() {
            let span = h.timezone.as_ref().map(|t| t.span());
            self.error(span, format!("{p}.timezone"), "`timezone` without `windows`");
        }
        if h.hard_stop && h.windows.is_empty() {
            self.error(None, format!("{p}.hard_stop"), "`hard_stop` without `windows`");
        }
        let quarantine_after = match &h.quarantine_after {
            None => 3,
            Some(v) => self.positive(v, &format!("{p}.quarantine_after"), 3u32),
        };
        let list = |l: &Option<Vec<S<String>>>| l.as_ref().map(|v| v.iter().map(|s| s.get_ref().clone()).collect());
        let mut ready = BTreeMap::new();
        for (image, n) in h.ready.iter().flatten() {
            ready.insert(image.clone(), self.within(&Some(n.clone()), &format!("{p}.ready.{image}"), 0u32..=64, 0));
        }
        DonorLimits {
            ready,
            windows,
            timezone,
            hard_stop: h.hard_stop,
            jobs: list(&h.jobs),
            images: list(&h.images),
            quarantine_after,
            notify_command: h.notify_command.as_ref().map(|c| c.get_ref().clone()),
        }
    }

    fn check_allow_lists(&mut self, raw: &[S<RawHost>], image_names: &[&str], job_names: &[&str]) {
        for (i, h) in raw.iter().enumerate() {
            let h = h.get_ref();
            for (key, list, names, what) in [("images", &h.images, image_names, "image"), ("jobs", &h.jobs, job_names, "job")] {
                for v in list.iter().flatten() {
                    if !names.contains(&v.get_ref().as_str()) {
                        self.error(
                            Some(v.span()),
                            format!("hosts[{i}].{key}"),
                            format!("no {what} named `{}`; known: {}", v.get_ref(), known(names)),
                        );
                    }
                }
            }
        }
    }

    /// Each `[[hosts]] ready` entry names a warm image the host may boot. A host with an
    /// `image_pool` keeps clones of disk images only: a kernel + initrd image's template is
    /// its saved memory in the daemon's state dir (`warm/kernel.rs`), which such a host
    /// cannot read.
    fn check_ready_pools(&mut self, raw: &[S<RawHost>], hosts: &[Host], images: &[Image]) {
        for (i, (r, h)) in raw.iter().zip(hosts).enumerate() {
            for (name, n) in r.get_ref().ready.iter().flatten() {
                let key = format!("hosts[{i}].ready.{name}");
                let Some(image) = images.iter().find(|m| m.name == *name) else {
                    let names: Vec<&str> = images.iter().map(|m| m.name.as_str()).collect();
                    self.error(Some(n.span()), key, format!("no image named `{name}`; known: {}", known(&names)));
                    continue;
                };
                if *n.get_ref() <= 0 {
                    continue;
                }
                let why = if image.start != Start::Warm {
                    Some(format!("a ready pool holds restored clones: image `{name}` needs `start = \"warm\"`"))
                } else if h.image_pool.is_some() && !matches!(image.boot, Boot::Disk { .. }) {
                    Some(format!(
                        "image `{name}` boots a `kernel` + `initrd`: its template is kept in the daemon's state dir, so a host with `image_pool` keeps no ready pool of it (only of `disk` images)"
                    ))
                } else if !h.limits.allows_image(name) {
                    Some(format!("image `{name}` is not in this host's `images`"))
                } else {
                    None
                };
                if let Some(why) = why {
                    self.error(Some(n.span()), key, why);
                }
            }
        }
    }

    fn image(&mut self, i: usize, raw: &S<RawImage>, seen: &mut HashSet<String>) -> Image {
        let m = raw.get_ref();
        let p = format!("images[{i}]");
        let name = self.name(&m.name, &format!("{p}.name"), seen, "image");
        let os = self
            .one_of(&m.os, &format!("{p}.os"), &[("linux", Os::Linux), ("windows", Os::Windows), ("macos", Os::Macos)])
            .unwrap_or(Os::Linux);
        let arch_choices: Vec<(&str, Arch)> = Arch::ALL.iter().map(|a| (a.as_str(), *a)).collect();
        let arch = self.one_of(&m.arch, &format!("{p}.arch"), &arch_choices).unwrap_or(Arch::X86_64);
        let boot = match (&m.disk, &m.kernel, &m.initrd) {
            (Some(disk), None, None) => Boot::Disk { base: self.path(disk.get_ref()) },
            (None, Some(k), Some(r)) => Boot::Kernel {
                kernel: self.path(k.get_ref()),
                initrd: self.path(r.get_ref()),
                cmdline: m.cmdline.as_ref().map(|c| c.get_ref().clone()).unwrap_or_default(),
            },
            (None, Some(_), None) | (None, None, Some(_)) => {
                self.error(Some(raw.span()), &p, "`kernel` and `initrd` go together; give both");
                Boot::Disk { base: PathBuf::new() }
            }
            (Some(_), _, _) => {
                self.error(Some(raw.span()), &p, "give either `disk` or `kernel` + `initrd`, not both");
                Boot::Disk { base: PathBuf::new() }
            }
            (None, None, None) => {
                self.error(Some(raw.span()), &p, "no boot source; give `disk` or `kernel` + `initrd`");
                Boot::Disk { base: PathBuf::new() }
            }
        };
        if m.cmdline.is_some() && m.disk.is_some() {
            let span = m.cmdline.as_ref().map(|c| c.span());
            self.error(span, format!("{p}.cmdline"), "`cmdline` only applies to kernel + initrd images");
        }
        let default_shell = if os == Os::Windows { Shell::Powershell } else { Shell::Sh };
        let shell = match &m.shell {
            None => default_shell,
            Some(s) => self
                .one_of(s, &format!("{p}.shell"), &[("sh", Shell::Sh), ("powershell", Shell::Powershell), ("cmd", Shell::Cmd)])
                .unwrap_or(default_shell),
        };
        if os != Os::Windows && shell != Shell::Sh {
            let span = m.shell.as_ref().map(|s| s.span());
            self.error(span, format!("{p}.shell"), format!("a {} image runs steps with `sh`", os.as_str()));
        }
        if os == Os::Windows && shell == Shell::Sh {
            let span = m.shell.as_ref().map(|s| s.span());
            self.error(span, format!("{p}.shell"), "a windows image runs steps with `powershell` or `cmd`");
        }
        let host_key = match (&m.identity, &m.host_key) {
            (None, Some(k)) => self.host_key(k, &format!("{p}.host_key")),
            (None, None) => {
                self.error(
                    Some(raw.span()),
                    format!("{p}.host_key"),
                    "missing `host_key` (\"console\", \"file:PATH\" or a key), or `identity = \"cloud-init\"` for a per-VM key",
                );
                HostKeyPolicy::Console
            }
            (Some(id), host_key) => {
                // Where the identity goes: a cloud-init seed needs the image's own system
                // (a disk); the bundled guest's /init reads it from the kernel command line.
                match self.one_of(id, &format!("{p}.identity"), &[("cloud-init", true), ("cmdline", false)]) {
                    Some(true) if m.disk.is_none() => self.error(
                        Some(id.span()),
                        format!("{p}.identity"),
                        "`identity = \"cloud-init\"` needs a `disk` image (cloud-init runs from the image's own system)",
                    ),
                    Some(false) if m.kernel.is_none() => self.error(
                        Some(id.span()),
                        format!("{p}.identity"),
                        "`identity = \"cmdline\"` needs a `kernel` + `initrd` image (its /init reads the command line)",
                    ),
                    _ => {}
                }
                if let Some(k) = host_key {
                    self.error(
                        Some(k.span()),
                        format!("{p}.host_key"),
                        "an image with an `identity` gets a host key generated for each VM; remove `host_key`",
                    );
                }
                HostKeyPolicy::PerVm
            }
        };
        // Not unique: two images may deliberately report as one platform.
        let platform = match &m.platform {
            None => name.clone(),
            Some(v) => self.name(v, &format!("{p}.platform"), &mut HashSet::new(), "platform"),
        };
        let start = match &m.start {
            None => Start::Cold,
            Some(v) => {
                let start = self.one_of(v, &format!("{p}.start"), &[("cold", Start::Cold), ("warm", Start::Warm)]).unwrap_or(Start::Cold);
                // A clone starts with its template's RNG state, clock, hostname and host key:
                // only an image paddock can give fresh ones before the first SSH handshake may be
                // cloned: through the guest agent, with a VM generation ID the kernel reseeds on.
                // A cloud-init identity brings both; the bundled guest's kernel + initrd only
                // when the image says its guest has them (`guest_agent`, images/out/x86_64-warm).
                let identity = m.identity.as_ref().map(|i| i.get_ref().as_str());
                let agent = m.guest_agent.as_ref().is_some_and(|a| *a.get_ref());
                let cloneable = os == Os::Linux
                    && match identity {
                        Some("cloud-init") => m.disk.is_some(),
                        Some("cmdline") => m.kernel.is_some() && agent,
                        _ => false,
                    };
                if start == Start::Warm && !cloneable {
                    let why = if os == Os::Linux && m.kernel.is_some() && identity == Some("cmdline") {
                        "warm start of a `kernel` + `initrd` image needs `guest_agent = true`, a guest that runs the QEMU guest agent and whose kernel reseeds its RNG on a new VM generation ID (the bundled guest's cloud kernel has no VMGENID driver and its initramfs no agent; `images/build-guest.sh x86_64-warm` builds the one that has both, in images/out/x86_64-warm); this image's clones would share its template's RNG state and host key"
                    } else {
                        "warm start needs a linux `disk` image with `identity = \"cloud-init\"`, or a `kernel` + `initrd` image with `identity = \"cmdline\"` and `guest_agent = true` (its clones get a fresh RNG seed, clock, host key, hostname and machine-id through the guest agent before any SSH handshake); this image's clones would share its template's"
                    };
                    self.error(Some(v.span()), format!("{p}.start"), why);
                }
                start
            }
        };
        let min_ready = self.within(&m.min_ready, &format!("{p}.min_ready"), 0u32..=64, 0);
        if min_ready > 0
            && start != Start::Warm
            && let Some(v) = &m.min_ready
        {
            self.error(Some(v.span()), format!("{p}.min_ready"), "a ready pool holds restored clones: it needs `start = \"warm\"`");
        }
        Image {
            guest_agent: m.guest_agent.as_ref().is_some_and(|a| *a.get_ref()),
            min_ready,
            start,
            platform,
            name,
            os,
            arch,
            boot,
            memory_mib: self.positive(&m.memory_mib, &format!("{p}.memory_mib"), 256u64),
            vcpus: self.positive(&m.vcpus, &format!("{p}.vcpus"), 1u32),
            user: m.user.get_ref().clone(),
            shell,
            host_key,
            trusts_fleet_ca: m.trusts_fleet_ca,
            boot_timeout: self.duration(&m.boot_timeout, &format!("{p}.boot_timeout"), DEFAULT_BOOT_TIMEOUT),
            nic_model: m.nic_model.as_ref().map(|s| s.get_ref().clone()),
            tpm: m.tpm,
            smc_key: m.smc_key.as_ref().map(|s| s.get_ref().clone()),
            firmware: m.firmware.as_ref().map(|s| self.path(s.get_ref())),
            network: match &m.network {
                None => GuestNetwork::Outbound,
                Some(n) => self
                    .one_of(n, &format!("{p}.network"), &[("outbound", GuestNetwork::Outbound), ("none", GuestNetwork::None)])
                    .unwrap_or(GuestNetwork::Outbound),
            },
        }
    }

    /// A `[[machines]]` entry: a domain that exists on one of `hosts`, reached on a port of
    /// its own (outside `daemon.ssh_ports`, which disposable VMs use), with a host key known
    /// before the first login.
    fn machine(&mut self, i: usize, raw: &S<RawMachine>, seen: &mut HashSet<String>, hosts: &[Host], daemon: &Daemon) -> Machine {
        let m = raw.get_ref();
        let p = format!("machines[{i}]");
        let name = self.name(&m.name, &format!("{p}.name"), seen, "image or machine");
        if !hosts.iter().any(|h| h.name == *m.host.get_ref()) {
            let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
            self.error(Some(m.host.span()), format!("{p}.host"), format!("no host named `{}`; known: {}", m.host.get_ref(), known(&names)));
        }
        let domain = m.domain.get_ref().clone();
        if domain.is_empty() || domain.len() > 200 || domain.chars().any(|c| c.is_control() || c == '/') {
            self.error(Some(m.domain.span()), format!("{p}.domain"), format!("`{domain}` is not a libvirt domain name"));
        }
        let snapshot = m.snapshot.as_ref().map(|v| {
            let s = v.get_ref().clone();
            if s.is_empty() || s.len() > 200 || s.chars().any(|c| c.is_control() || c == '/') {
                self.error(Some(v.span()), format!("{p}.snapshot"), format!("`{s}` is not a libvirt snapshot name"));
            }
            s
        });
        let ssh_port = self.within(&Some(m.ssh_port.clone()), &format!("{p}.ssh_port"), 1u16..=65535, 22);
        if daemon.ssh_ports.contains(ssh_port) {
            self.error(
                Some(m.ssh_port.span()),
                format!("{p}.ssh_port"),
                format!("port {ssh_port} is inside daemon.ssh_ports ({}), which disposable VMs use", daemon.ssh_ports),
            );
        }
        let os = match &m.os {
            None => Os::Linux,
            Some(v) => self
                .one_of(v, &format!("{p}.os"), &[("linux", Os::Linux), ("windows", Os::Windows), ("macos", Os::Macos)])
                .unwrap_or(Os::Linux),
        };
        let arch = match &m.arch {
            None => Arch::X86_64,
            Some(v) => {
                let choices: Vec<(&str, Arch)> = Arch::ALL.iter().map(|a| (a.as_str(), *a)).collect();
                self.one_of(v, &format!("{p}.arch"), &choices).unwrap_or(Arch::X86_64)
            }
        };
        let default_shell = if os == Os::Windows { Shell::Powershell } else { Shell::Sh };
        let shell = match &m.shell {
            None => default_shell,
            Some(s) => self
                .one_of(s, &format!("{p}.shell"), &[("sh", Shell::Sh), ("powershell", Shell::Powershell), ("cmd", Shell::Cmd)])
                .unwrap_or(default_shell),
        };
        if (os == Os::Windows) == (shell == Shell::Sh) {
            let span = m.shell.as_ref().map(|s| s.span()).or(Some(raw.span()));
            let want = if os == Os::Windows { "`powershell` or `cmd`" } else { "`sh`" };
            self.error(span, format!("{p}.shell"), format!("a {} machine runs steps with {want}", os.as_str()));
        }
        // The machine's key is known before paddock first logs in: pinned or a `.pub` file
        // the admin wrote; never learned from the guest (it may already run builds).
        let host_key = match self.host_key(&m.host_key, &format!("{p}.host_key")) {
            HostKeyPolicy::Console => {
                if m.host_key.get_ref().trim() == "console" {
                    self.error(
                        Some(m.host_key.span()),
                        format!("{p}.host_key"),
                        "a machine's host key is pinned (\"ssh-ed25519 AAAA...\") or a file (\"file:PATH\"); paddock does not read a persistent machine's console",
                    );
                }
                HostKeyPolicy::Console
            }
            k => k,
        };
        let after = match &m.after {
            None => AfterRun::Keep,
            Some(v) => self
                .one_of(
                    v,
                    &format!("{p}.after"),
                    &[("keep", AfterRun::Keep), ("shutdown", AfterRun::Shutdown), ("revert", AfterRun::Revert)],
                )
                .unwrap_or(AfterRun::Keep),
        };
        if after == AfterRun::Revert && snapshot.is_none() {
            let span = m.after.as_ref().map(|v| v.span());
            self.error(span, format!("{p}.after"), "`after = \"revert\"` needs a `snapshot` to revert to");
        }
        let platform = match &m.platform {
            None => name.clone(),
            Some(v) => self.name(v, &format!("{p}.platform"), &mut HashSet::new(), "platform"),
        };
        Machine {
            name,
            host: m.host.get_ref().clone(),
            domain,
            snapshot,
            ssh_port,
            host_key,
            user: m.user.get_ref().clone(),
            os,
            arch,
            shell,
            boot_timeout: self.timeout(&m.boot_timeout, &format!("{p}.boot_timeout"), DEFAULT_BOOT_TIMEOUT),
            after,
            platform,
        }
    }

    /// `host_key` is `"console"`, an inline `ssh-ed25519 AAAA...` key, or
    /// `"file:PATH"` naming a `.pub` file (read when the image is launched, so
    /// that `paddock check` works before the image is built).
    fn host_key(&mut self, v: &S<String>, path: &str) -> HostKeyPolicy {
        let s = v.get_ref().trim();
        if s == "console" {
            return HostKeyPolicy::Console;
        }
        if let Some(file) = s.strip_prefix("file:") {
            return HostKeyPolicy::File(self.path(file));
        }
        match ssh_key::PublicKey::from_openssh(s) {
            Ok(k) => HostKeyPolicy::Pinned(k),
            Err(e) => {
                self.error(
                    Some(v.span()),
                    path,
                    format!("not an SSH public key ({e}); expected \"console\", \"file:PATH\" or \"ssh-ed25519 AAAA...\""),
                );
                HostKeyPolicy::Console
            }
        }
    }

    fn job(&mut self, i: usize, raw: &S<RawJob>, seen: &mut HashSet<String>, image_names: &[&str], user_names: &[&str]) -> Job {
        let j = raw.get_ref();
        let p = format!("jobs[{i}]");
        let name = self.name(&j.name, &format!("{p}.name"), seen, "job");
        let mut images = Vec::new();
        if j.images.get_ref().is_empty() {
            self.error(Some(j.images.span()), format!("{p}.images"), "a job needs at least one image");
        }
        for img in j.images.get_ref() {
            if !image_names.contains(&img.get_ref().as_str()) {
                self.error(
                    Some(img.span()),
                    format!("{p}.images"),
                    format!("no image named `{}`; known: {}", img.get_ref(), known(image_names)),
                );
            } else if images.contains(img.get_ref()) {
                self.error(Some(img.span()), format!("{p}.images"), format!("image `{}` listed twice", img.get_ref()));
            } else {
                images.push(img.get_ref().clone());
            }
        }
        let tz = match &j.timezone {
            None => chrono_tz::UTC,
            Some(t) => match t.get_ref().parse::<chrono_tz::Tz>() {
                Ok(tz) => tz,
                Err(_) => {
                    self.error(
                        Some(t.span()),
                        format!("{p}.timezone"),
                        format!("unknown time zone `{}`; expected an IANA name like \"Europe/Berlin\"", t.get_ref()),
                    );
                    chrono_tz::UTC
                }
            },
        };
        if j.timezone.is_some() && j.schedule.is_none() {
            let span = j.timezone.as_ref().map(|t| t.span());
            self.error(span, format!("{p}.timezone"), "`timezone` without a `schedule`");
        }
        let schedule = j.schedule.as_ref().and_then(|s| match s.get_ref().parse::<croner::Cron>() {
            Ok(cron) => Some(Schedule { expr: s.get_ref().clone(), cron, tz }),
            Err(e) => {
                self.error(Some(s.span()), format!("{p}.schedule"), format!("bad cron expression `{}`: {e}", s.get_ref()));
                None
            }
        });
        if j.steps.is_empty() {
            self.error(Some(raw.span()), format!("{p}.steps"), "a job needs at least one step");
        }
        let mut step_names = HashSet::new();
        let steps = j.steps.iter().enumerate().map(|(k, s)| self.step(&format!("{p}.steps[{k}]"), s, &mut step_names)).collect();
        let mut env = BTreeMap::new();
        let mut secret_env = std::collections::BTreeSet::new();
        for (k, v) in &j.env {
            let valid =
                !k.is_empty() && !k.starts_with(|c: char| c.is_ascii_digit()) && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.error(Some(v.span()), format!("{p}.env"), format!("`{k}` is not a valid environment variable name"));
            }
            let value = match v.get_ref() {
                RawEnvValue::Plain(s) => s.clone(),
                RawEnvValue::Secret(secret) => {
                    secret_env.insert(k.clone());
                    match self.secret(secret) {
                        Ok(s) => s,
                        Err(e) => {
                            self.error(Some(v.span()), format!("{p}.env.{k}"), e);
                            String::new()
                        }
                    }
                }
            };
            env.insert(k.clone(), value);
        }
        for m in &j.maintainers {
            if !user_names.contains(&m.get_ref().as_str()) {
                self.error(
                    Some(m.span()),
                    format!("{p}.maintainers"),
                    format!("no user named `{}`; known: {}", m.get_ref(), known(user_names)),
                );
            }
        }
        let hold_on_failure = j.hold_on_failure.as_ref().map(|h| match duration::parse(h.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                self.error(Some(h.span()), format!("{p}.hold_on_failure"), e);
                Duration::from_secs(1)
            }
        });
        Job {
            name,
            images,
            schedule,
            steps,
            stop_if_failure: j.stop_if_failure.unwrap_or(true),
            secret_env,
            env,
            tags: j.tags.iter().map(|t| t.get_ref().clone()).collect(),
            hold_on_failure,
            retry_infrastructure: self.within(&j.retry_infrastructure, &format!("{p}.retry_infrastructure"), 0..=MAX_RETRIES, 0),
            priority: self.within(&j.priority, &format!("{p}.priority"), -MAX_PRIORITY..=MAX_PRIORITY, 0),
            maintainers: j.maintainers.iter().map(|m| m.get_ref().clone()).collect(),
            artifacts: j.artifacts.iter().map(|a| a.get_ref().clone()).collect(),
            inputs: j.inputs.iter().enumerate().map(|(k, inp)| self.input(&format!("{p}.inputs[{k}]"), inp)).collect(),
        }
    }

    /// An input's path is not checked here (like image files, it may be made after
    /// `paddock check`); `paddock check` lists missing ones and the run names it.
    fn input(&mut self, p: &str, raw: &S<RawInput>) -> Input {
        let i = raw.get_ref();
        let path = self.path(i.path.get_ref());
        let dest = i.dest.get_ref().trim_end_matches('/').to_string();
        let absolute = dest.starts_with('/') || (dest.len() >= 3 && dest.as_bytes()[1] == b':' && dest.as_bytes()[2] == b'/');
        if !absolute || dest.split('/').any(|c| c == "..") || dest.contains('\\') {
            self.error(
                Some(i.dest.span()),
                format!("{p}.dest"),
                format!("`{}` is not an absolute guest path without `..` (like \"/root/src\" or \"C:/src\")", i.dest.get_ref()),
            );
        }
        let max_bytes = match &i.max_size {
            None => DEFAULT_INPUT_CAP,
            Some(s) => match parse_size(s.get_ref()) {
                Some(n) if n > 0 => n,
                _ => {
                    self.error(
                        Some(s.span()),
                        format!("{p}.max_size"),
                        format!("`{}` is not a size like \"16M\", \"512K\" or \"1G\"", s.get_ref()),
                    );
                    DEFAULT_INPUT_CAP
                }
            },
        };
        Input { path, dest, max_bytes }
    }

    fn step(&mut self, p: &str, raw: &S<RawStep>, seen: &mut HashSet<String>) -> Step {
        let s = raw.get_ref();
        let name = self.name(&s.name, &format!("{p}.name"), seen, "step");
        let kind = self
            .one_of(&s.kind, &format!("{p}.type"), &[("setup", StepKind::Setup), ("build", StepKind::Build), ("test", StepKind::Test)])
            .unwrap_or(StepKind::Build);
        if s.command.get_ref().trim().is_empty() {
            self.error(Some(s.command.span()), format!("{p}.command"), "empty command");
        }
        Step {
            name,
            kind,
            command: s.command.get_ref().clone(),
            timeout: self.duration(&s.timeout, &format!("{p}.timeout"), DEFAULT_STEP_TIMEOUT),
            ignore_failure: s.ignore_failure,
        }
    }

    fn user(&mut self, i: usize, raw: &S<RawUser>, seen: &mut HashSet<String>) -> User {
        let u = raw.get_ref();
        let p = format!("users[{i}]");
        let name = self.name(&u.name, &format!("{p}.name"), seen, "user");
        let role = self
            .one_of(&u.role, &format!("{p}.role"), &[("admin", Role::Admin), ("maintainer", Role::Maintainer), ("viewer", Role::Viewer)])
            .unwrap_or(Role::Viewer);
        let mut ssh_keys = Vec::new();
        for (k, key) in u.ssh_keys.iter().enumerate() {
            match ssh_key::PublicKey::from_openssh(key.get_ref().trim()) {
                Ok(pk) => ssh_keys.push(pk),
                Err(e) => self.error(Some(key.span()), format!("{p}.ssh_keys[{k}]"), format!("not an OpenSSH public key ({e})")),
            }
        }
        User { name, role, ssh_keys }
    }

    fn recorder(&mut self, i: usize, raw: &S<RawRecorder>, seen: &mut HashSet<String>) -> Recorder {
        let r = raw.get_ref();
        let p = format!("recorders[{i}]");
        let name = self.name(&r.name, &format!("{p}.name"), seen, "recorder");
        #[derive(Clone, Copy)]
        enum K {
            Embedded,
            Paddock,
            PonyBuild,
        }
        let kind =
            self.one_of(&r.kind, &format!("{p}.kind"), &[("embedded", K::Embedded), ("paddock", K::Paddock), ("pony-build", K::PonyBuild)]);
        let url = |v: &mut Self| -> String {
            match &r.url {
                None => {
                    v.error(Some(raw.span()), format!("{p}.url"), "this kind of recorder needs a `url`");
                    String::new()
                }
                Some(u) => {
                    let s = u.get_ref();
                    if !(s.starts_with("http://") || s.starts_with("https://")) {
                        v.error(Some(u.span()), format!("{p}.url"), format!("`{s}` is not an http:// or https:// URL"));
                    }
                    s.clone()
                }
            }
        };
        let target = match kind {
            None | Some(K::Embedded) => {
                if let Some(u) = &r.url {
                    self.error(Some(u.span()), format!("{p}.url"), "the embedded recorder takes no `url`");
                }
                RecorderTarget::Embedded
            }
            Some(K::Paddock) => RecorderTarget::Paddock { url: url(self), token: r.token.as_ref().map(|t| t.get_ref().clone()) },
            Some(K::PonyBuild) => RecorderTarget::PonyBuild { url: url(self) },
        };
        Recorder { name, target }
    }

    fn access(&mut self, raw: Option<&S<RawAccess>>) -> AccessPolicy {
        let none = RawAccess { auto_approve_max: None, max_grant: None, allow_forwarding: false };
        let a = raw.map(|r| r.get_ref()).unwrap_or(&none);
        let auto_approve_max = self.duration(&a.auto_approve_max, "access.auto_approve_max", Duration::from_secs(4 * 3600));
        let max_grant = self.duration(&a.max_grant, "access.max_grant", Duration::from_secs(24 * 3600));
        if auto_approve_max > max_grant {
            let span = a.auto_approve_max.as_ref().map(|s| s.span());
            self.error(span, "access.auto_approve_max", "longer than `access.max_grant`");
        }
        AccessPolicy { auto_approve_max, max_grant, allow_forwarding: a.allow_forwarding }
    }
}

fn known(names: &[&str]) -> String {
    if names.is_empty() { "(none)".to_string() } else { names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ") }
}

fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let bad = || format!("`{s}` is not a port range like \"22200-22299\"");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let first: u16 = a.trim().parse().map_err(|_| bad())?;
    let last: u16 = b.trim().parse().map_err(|_| bad())?;
    if first < 1024 {
        return Err(format!("`{s}`: ports below 1024 are privileged; start at 1024 or above"));
    }
    if last < first {
        return Err(format!("`{s}`: the range ends before it starts"));
    }
    Ok(PortRange { first, last })
}
