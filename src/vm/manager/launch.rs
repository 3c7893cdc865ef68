//! Launching: placing queued requests on hosts, and one launch attempt on one
//! host (overlay, define, start, readiness) run as its own task.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{Boot, Host, HostKeyPolicy, Image};
use crate::libvirt::domain_xml::Handover;
use crate::libvirt::storage;
use crate::libvirt::{self, ConsoleSink, ConsoleXml, DiskSpec, DomainSpec, HostHandle, HostStatus, Mark, error_chain};
use crate::vm::images::PoolImage;
use crate::vm::login::{self, HandedSession, Login, Pace, Polled, Probe};
use crate::vm::placement::{self, HostView, Placement, Usage};
use crate::vm::readiness::{self, Readiness, WaitError};
use crate::vm::seed::{self, Identity, SeedSpec};
use crate::vm::{VmError, VmState, overlay};

use super::owner::{Owner, Pending, Vm};
use super::{Cmd, LaunchRequest, ReadyVm};

/// A queued launch's place: effective priority (higher first), its rank among
/// its job's queued launches of that priority, when its job was last served, arrival.
type QueueKey = (std::cmp::Reverse<i32>, u64, u64, u64);

mod warm;
pub use warm::Started;

/// How long a console key may trail the SSH banner (see `Attempt::boot`).
const CONSOLE_LAG: Duration = Duration::from_secs(5);

pub(super) struct Booted {
    pub(super) boot_time: Duration,
    pub(super) host_key: Option<ssh_key::PublicKey>,
    /// The login that proved it ready, for launches that gave one.
    pub(super) session: Option<HandedSession>,
    pub(super) started: Started,
    /// The template key a warm clone was restored from.
    pub(super) template_key: Option<String>,
}

pub(super) struct AttemptFailure {
    pub(super) error: LaunchError,
    pub(super) console_tail: String,
}

/// Why one launch attempt failed: one variant per step of the attempt. Errors
/// of libvirt calls already name the step, domain and host, so they are shown as they are.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("creating the console folder {}", dir.display())]
    ConsoleDir { dir: PathBuf, source: std::io::Error },
    #[error("no base format recorded for the disk of image {image} in pool {pool}")]
    NoBaseFormat { image: String, pool: String },
    #[error("creating the overlay volume of {vm} on {uri}")]
    PoolOverlay { vm: String, uri: String, source: storage::StorageError },
    #[error(transparent)]
    Overlay(overlay::OverlayError),
    /// A blocking task (overlay creation) panicked or was cancelled.
    #[error("the {step} task of {vm}")]
    Task { vm: String, step: &'static str, source: tokio::task::JoinError },
    #[error(transparent)]
    Define(libvirt::LibvirtError),
    #[error(transparent)]
    Start(libvirt::LibvirtError),
    #[error(transparent)]
    Query(libvirt::LibvirtError),
    #[error("domain {vm} stopped right after starting")]
    StoppedAtStart { vm: String },
    #[error("no SSH banner from {vm} on {addr} within {timeout:?}")]
    NoBanner { vm: String, addr: SocketAddr, timeout: Duration },
    #[error("domain {vm} stopped while booting")]
    StoppedBooting { vm: String },
    #[error("making the identity of {vm}")]
    Identity { vm: String, source: seed::SeedError },
    #[error(transparent)]
    Seed(seed::SeedError),
    #[error("restoring ready-pool clone {vm}: {why}")]
    WarmOnly { vm: String, why: String },
    #[error("uploading the seed of {vm} to {uri}")]
    PoolSeed { vm: String, uri: String, source: storage::StorageError },
}

impl Owner {
    pub(super) fn usage(&self) -> Vec<Usage> {
        let mut used = vec![Usage::default(); self.hosts.len()];
        for vm in self.vms.values().filter(|vm| vm.state.holds_resources()) {
            used[vm.host].add(&vm.image);
        }
        // A template's domain holds room on its host while it is built (once: a VM of its
        // image placed there and not yet restored waits for it in its own slot).
        let sites = self.templates.build_sites();
        if !sites.is_empty() {
            let builds: Vec<(usize, &Image)> = sites
                .iter()
                .filter_map(|(host, image)| self.hosts.iter().position(|h| h.config.name == *host).map(|i| (i, image)))
                .collect();
            let waiting: Vec<(usize, &str)> =
                self.vms.values().filter(|vm| vm.state == VmState::Placed).map(|vm| (vm.host, vm.image.name.as_str())).collect();
            placement::add_template_builds(&mut used, &builds, &waiting);
        }
        used
    }

    pub(super) fn views(&self, req: &LaunchRequest, tried: &HashSet<usize>, used: &[Usage]) -> Vec<HostView> {
        let image = &req.image;
        let now = Instant::now();
        let wall = self.cfg.clock.now();
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let status = slot.handle.status();
                let runs_arch = match &status {
                    HostStatus::Up(facts) => Some(facts.runs(image.arch.as_str(), slot.config.accelerator)),
                    HostStatus::Connecting | HostStatus::Down { .. } => None,
                };
                HostView {
                    capacity: slot.config.capacity,
                    available: status.is_up()
                        && slot.cooling_until.is_none_or(|t| t <= now)
                        && slot.block.is_none()
                        && slot.config.limits.open_at(wall),
                    runs_arch,
                    used: used[i],
                    tried: tried.contains(&i),
                    allowed: slot.config.limits.allows_image(&image.name) && slot.config.limits.allows_job(req.job.as_deref()),
                    image_present: self.image_present(i, image),
                }
            })
            .collect()
    }

    /// `image.boot_timeout`, times the configured factor for its arch when host
    /// `i` is of another arch (so emulates it: an emulated guest boots slower).
    pub(super) fn boot_timeout(&self, i: usize, image: &Image) -> Duration {
        let native = match self.hosts[i].handle.status() {
            HostStatus::Up(facts) => facts.arch == image.arch.as_str(),
            HostStatus::Connecting | HostStatus::Down { .. } => false,
        };
        let factor = if native { 1.0 } else { self.cfg.emulation_boot_factor.get(&image.arch).copied().unwrap_or(1.0) };
        image.boot_timeout.mul_f64(factor)
    }

    /// A port for a VM on host `i`. On a host whose forwards are bound on this
    /// machine, a port something else already holds (another program, or a VM
    /// a different paddock left behind) is skipped rather than failing the launch.
    pub(super) fn allocate_port(&mut self, i: usize) -> Option<u16> {
        let addr = self.hosts[i].config.address;
        let local = self.hosts[i].config.uri.starts_with("qemu:///") && (addr.is_loopback() || addr.is_unspecified());
        self.ports.allocate_where(|port| !local || std::net::TcpListener::bind((addr, port)).is_ok())
    }

    /// Places queued launches, highest effective priority first: a launch's
    /// priority plus one point per `priority_aging` it has waited, so a
    /// low-priority launch waits behind newer high-priority ones for at most
    /// (their priority − its priority) × `priority_aging`, then takes turns with
    /// them. Within an effective priority, round robin between jobs (each job's
    /// n-th queued launch comes after every other job's (n-1)-th, and among
    /// equals the job served least recently goes first), so one job's long
    /// matrix never holds another job's single run back for its whole length;
    /// FIFO within a job. A launch that cannot be placed does not hold back
    /// those behind it that can.
    pub(super) async fn pump(&mut self) {
        self.dirty = false;
        let queue = std::mem::take(&mut self.queue);
        // Usage is counted once per pass and kept up to date as launches are placed.
        let mut used = self.usage();
        let mut room = self.any_room(&used);
        // Looked up once per pass (and after a change), not once per queued launch.
        let mut idle_pooled = self.any_idle_pooled();
        // With no room anywhere nothing can be placed: the order does not matter then.
        let queue = if room { queue_order(queue, &self.last_served, self.cfg.priority_aging, Instant::now()) } else { queue };
        for pending in queue {
            // The caller went away (a cancelled run): nothing may boot for it.
            if pending.reply.is_closed() {
                info!(run_id = %pending.req.run_id, "launch withdrawn while queued");
                continue;
            }
            // No host has a free VM slot: it waits, and only a launch never looked at is
            // looked at (it may be one that no host could ever take, which fails at once).
            // So a pass over a long queue on full hosts costs little per launch.
            // A ready-pool clone of its image takes no new room.
            let mut pending = match idle_pooled {
                false => pending,
                true => match self.take_ready(pending).await {
                    Ok(()) => {
                        idle_pooled = self.any_idle_pooled();
                        continue;
                    }
                    Err(p) => p,
                },
            };
            // An idle pool clone is room a waiting launch may have (`give_up_idle_for`).
            if !room && pending.checked && !idle_pooled {
                self.queue.push(pending);
                continue;
            }
            pending.checked = true;
            // A changed image file is noticed here at the latest: the launch waits for its upload.
            self.distribute(&pending.req.image);
            let views = self.views(&pending.req, &pending.tried, &used);
            match placement::place(&pending.req.image, &views) {
                Placement::Host(i) => match self.allocate_port(i) {
                    Some(port) => {
                        self.placements += 1;
                        self.last_served.insert(pending.req.job.clone(), self.placements);
                        used[i].add(&pending.req.image);
                        self.start_attempt(pending, i, port).await;
                        room = self.any_room(&used);
                    }
                    None => self.queue.push(pending),
                },
                Placement::Wait => match self.hung_upload(&pending.req.image, &views) {
                    Some(why) => {
                        let image = &pending.req.image;
                        let _ = pending.reply.send(Err(VmError::UploadHung { image: image.name.clone(), why }));
                    }
                    None => {
                        self.report_missed_job(&mut pending).await;
                        // An idle ready-pool clone never keeps a launch waiting.
                        if idle_pooled && self.give_up_idle_for(&pending, &used).await {
                            idle_pooled = self.any_idle_pooled();
                        }
                        self.queue.push(pending)
                    }
                },
                Placement::Never => {
                    let image = &pending.req.image;
                    let why = placement::never_reason(image, &views);
                    let err = VmError::NoHost { image: image.name.clone(), arch: image.arch.to_string(), why };
                    let _ = pending.reply.send(Err(err));
                }
            }
        }
        self.refill().await;
    }

    /// Whether some host that takes VMs now has a free VM slot (room for memory and
    /// vCPUs is for placement to judge per image).
    fn any_room(&self, used: &[Usage]) -> bool {
        let now = Instant::now();
        let wall = self.cfg.clock.now();
        self.hosts.iter().zip(used).any(|(slot, u)| {
            u.vms < slot.config.capacity.max_vms
                && slot.handle.status().is_up()
                && slot.cooling_until.is_none_or(|t| t <= now)
                && slot.block.is_none()
                && slot.config.limits.open_at(wall)
        })
    }

    /// Starts a launch attempt on `host`; the new VM's name.
    pub(super) async fn start_attempt(&mut self, mut pending: Pending, host: usize, port: u16) -> Option<String> {
        let tx = self.tx.upgrade()?;
        if pending.attempts == 0 {
            crate::metrics::queue_waited(pending.queued_at.elapsed().as_secs_f64());
        }
        pending.attempts += 1;
        pending.tried.insert(host);
        let name = format!("paddock-{}-{}", short(&self.cfg.instance_id), random_id());
        let image = pending.req.image.clone();
        let pool = self.hosts[host].config.image_pool.clone().and_then(|p| {
            let version = self.pools.get(&(host, image.name.clone())).and_then(|s| s.current.clone())?;
            Some((p, version))
        });
        let disk = matches!(image.boot, Boot::Disk { .. });
        // On a pool host the overlay is a volume next to the base, so that the host's libvirt writes it.
        let (overlay, pool_overlay) = match (&pool, disk) {
            (_, false) => (None, None),
            (None, true) => (Some(overlay::path_for(&self.cfg.state_dir, &name)), None),
            (Some(_), true) => (None, Some(format!("{name}{}", storage::OVERLAY_SUFFIX))),
        };
        let volumes = pool.as_ref().map(|(_, v)| v.volumes()).unwrap_or_default();
        let console = self.cfg.state_dir.join("consoles").join(format!("{name}.log"));
        // A per-VM identity: its host key is made and pinned (stored) before the VM
        // exists, so paddock never has to trust whatever key the guest shows first.
        let identity = match image.host_key {
            HostKeyPolicy::PerVm => Some(Identity::generate(&name)),
            HostKeyPolicy::Pinned(_) | HostKeyPolicy::File(_) | HostKeyPolicy::Console => None,
        };
        let identity = match identity.transpose() {
            Ok(id) => id,
            Err(source) => {
                let error = LaunchError::Identity { vm: name.clone(), source };
                let _ = pending.reply.send(Err(VmError::LaunchFailed {
                    image: image.name.clone(),
                    attempts: pending.attempts,
                    error: Box::new(error),
                    console_tail: String::new(),
                }));
                return None;
            }
        };
        if let Some(id) = &identity
            && let Err(e) = self.store.set_vm_host_key(&name, &id.public_line()).await
        {
            let _ = pending.reply.send(Err(VmError::Store(e)));
            return None;
        }
        // Local hosts read the seed beside the overlay; pool hosts get it as a volume.
        // Kernel images take the identity on their command line instead.
        let (seed_file, pool_seed) = match (&identity, &pool, disk) {
            (None, _, _) | (Some(_), _, false) => (None, None),
            (Some(_), None, true) => (Some(seed::path_for(&self.cfg.state_dir, &name)), None),
            (Some(_), Some(_), true) => (None, Some(format!("{name}{}", seed::SEED_SUFFIX))),
        };
        let vm = Vm {
            name: name.clone(),
            run_id: pending.req.run_id.clone(),
            image: image.clone(),
            host,
            state: VmState::Requested,
            port,
            overlay: overlay.clone(),
            console: console.clone(),
            created_at: Utc::now(),
            ready_at: None,
            hold_until: None,
            released: false,
            error: None,
            launch: None,
            waiters: Vec::new(),
            volumes,
            pool_overlay: pool_overlay.clone(),
            seed: seed_file.clone(),
            pool_seed: pool_seed.clone(),
            host_key: identity.as_ref().map(|id| id.public_key().clone()),
            pooled: None,
            template_key: None,
        };
        let job = Attempt {
            identity,
            seed_file,
            pool_seed,
            state_dir: self.cfg.state_dir.clone(),
            pool,
            pool_overlay,
            name: name.clone(),
            host: self.hosts[host].config.clone(),
            handle: self.hosts[host].handle.clone(),
            image,
            port,
            overlay,
            console,
            mark: Mark { run_id: pending.req.run_id.clone(), instance: self.cfg.instance_id.clone(), created_at: vm.created_at },
            authorized_keys: pending.req.authorized_keys.clone(),
            ca_key: pending.req.ca_key.clone(),
            readiness: self.cfg.readiness,
            tail_lines: self.cfg.console_tail_lines,
            boot_timeout: self.boot_timeout(host, &pending.req.image),
            login: pending.login.clone(),
            // A ready pool holds restored clones only: a failed restore is not booted cold.
            warm_only: pending.req.run_id == super::ready_pool::READY_POOL_RUN && pending.req.job.is_none(),
            templates: self.templates.clone(),
            tx,
        };
        info!(vm = %name, run_id = %vm.run_id, host = %self.hosts[host].config.name, port, attempt = pending.attempts, "placing VM");
        pending.report(super::LaunchStage::Placed { vm: name.clone(), host: self.hosts[host].config.name.clone() });
        let mut vm = vm;
        vm.launch = Some(pending);
        self.vms.insert(name.clone(), vm);
        self.transition(&name, VmState::Placed).await;
        tokio::spawn(job.run());
        Some(name)
    }

    pub(super) async fn attempt_done(&mut self, name: String, result: Result<Booted, Box<AttemptFailure>>) {
        let Some(vm) = self.vms.get_mut(&name) else { return };
        if matches!(vm.pooled, Some(super::ready_pool::Pooled::Filling { .. })) {
            vm.launch = None;
            return self.pool_attempt_done(&name, result.map_err(|f| error_chain(&f.error))).await;
        }
        let stopping = vm.state == VmState::Stopping;
        let Some(mut pending) = vm.launch.take() else { return };
        match result {
            Ok(booted) if !stopping => {
                let slot = &self.hosts[vm.host];
                let ready = ReadyVm {
                    name: name.clone(),
                    host: slot.config.name.clone(),
                    ssh_addr: SocketAddr::new(slot.config.address, vm.port),
                    host_key_from_console: booted.host_key,
                    pinned_host_key: vm.host_key.clone(),
                    console_path: vm.console.clone(),
                    boot_time: booted.boot_time,
                    session: booted.session,
                    started: booted.started.clone(),
                };
                vm.template_key = booted.template_key.clone();
                let restored = booted.template_key.clone().map(|k| (vm.host, k));
                if let Started::ColdAfterWarm(why) = &booted.started {
                    let _ = self.store.record_event("warm_start_fell_back", &name, why).await;
                }
                info!(vm = %name, host = %ready.host, boot_ms = booted.boot_time.as_millis() as u64, "VM ready");
                let host = vm.host;
                crate::metrics::boot_ready(&vm.image.name, booted.boot_time.as_secs_f64());
                self.count_launch(host, &name, Ok(booted.boot_time)).await;
                self.transition(&name, VmState::Ready).await;
                if let Some((host, key)) = restored {
                    self.clone_restored(host, &key);
                }
                if pending.reply.send(Ok(ready)).is_err() {
                    // The caller went away: nobody will use or release this VM.
                    self.teardown(&name).await;
                }
            }
            Ok(_) => drop(pending.reply.send(Err(VmError::Cancelled { name }))),
            Err(_) if stopping => drop(pending.reply.send(Err(VmError::Cancelled { name }))),
            Err(failure) => {
                let host = vm.host;
                let error = error_chain(&failure.error);
                vm.error = Some(error.clone());
                warn!(vm = %name, host = %self.hosts[host].config.name, %error, "launch attempt failed");
                self.hosts[host].cooling_until = Some(Instant::now() + self.cfg.host_cooldown);
                let _ = self.store.record_event("launch_failed", &name, &error).await;
                self.count_launch(host, &name, Err(&error)).await;
                self.transition(&name, VmState::Failed).await;
                self.teardown(&name).await;
                if pending.attempts >= self.cfg.launch_retries {
                    let _ = pending.reply.send(Err(VmError::LaunchFailed {
                        image: pending.req.image.name.clone(),
                        attempts: pending.attempts,
                        error: Box::new(failure.error),
                        console_tail: failure.console_tail,
                    }));
                } else {
                    pending.last_failure = Some(*failure);
                    pending.report(super::LaunchStage::Requeued);
                    self.queue.push(pending);
                    self.dirty = true;
                }
            }
        }
    }
}

/// A launch's priority raised by one point per `aging` it has waited by `now`.
fn effective_priority(p: &Pending, aging: Duration, now: Instant) -> i32 {
    let aging = aging.max(Duration::from_millis(1)).as_nanos();
    let points = now.saturating_duration_since(p.queued_at).as_nanos() / aging;
    p.req.priority.saturating_add(i32::try_from(points).unwrap_or(i32::MAX))
}

/// The order `pump` tries queued launches in (see there). Pure, so the cost of a
/// placement pass is this sort plus one placement per launch.
fn queue_order(mut queue: Vec<Pending>, last_served: &HashMap<Option<String>, u64>, aging: Duration, now: Instant) -> Vec<Pending> {
    queue.sort_by_key(|p| p.seq);
    let mut rank: HashMap<(i32, Option<String>), u64> = HashMap::new();
    let mut keyed: Vec<(QueueKey, Pending)> = queue
        .into_iter()
        .map(|p| {
            let eff = effective_priority(&p, aging, now);
            let r = rank.entry((eff, p.req.job.clone())).or_insert(0);
            let served = last_served.get(&p.req.job).copied().unwrap_or(0);
            let key = (std::cmp::Reverse(eff), *r, served, p.seq);
            *r += 1;
            (key, p)
        })
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().map(|(_, p)| p).collect()
}

fn short(instance: &str) -> &str {
    &instance[..instance.len().min(8)]
}

fn random_id() -> String {
    hex::encode(rand::random::<[u8; 4]>())
}

/// One launch attempt on one host, run as its own task.
struct Attempt {
    /// The image's boot timeout, scaled when the host emulates a foreign arch.
    boot_timeout: Duration,
    name: String,
    host: Host,
    handle: HostHandle,
    image: Image,
    port: u16,
    overlay: Option<PathBuf>,
    /// The image's version in the host's pool, for hosts with an `image_pool`.
    pool: Option<(String, PoolImage)>,
    /// The overlay volume's name, for disk images on such hosts.
    pool_overlay: Option<String>,
    console: PathBuf,
    mark: Mark,
    authorized_keys: Vec<String>,
    ca_key: Option<String>,
    readiness: Readiness,
    tail_lines: usize,
    tx: mpsc::UnboundedSender<Cmd>,
    /// The VM's own host key and principal, handed over in its seed.
    identity: Option<Identity>,
    /// Where its seed is written (local hosts), or the seed volume's name (pool hosts).
    seed_file: Option<PathBuf>,
    pool_seed: Option<String>,
    state_dir: PathBuf,
    /// When given, readiness is a login and its session is handed over.
    login: Option<Login>,
    /// A failed warm start fails the attempt instead of booting cold (ready-pool refills).
    warm_only: bool,
    templates: std::sync::Arc<crate::vm::template::Templates>,
}

impl Attempt {
    /// Writes the VM's seed and returns the path its host reads it from: the file
    /// itself, or on a pool host the volume it was uploaded (and read back) into.
    async fn write_seed(&self, image: &Image) -> Result<Option<PathBuf>, LaunchError> {
        let Some(identity) = &self.identity else { return Ok(None) };
        if !matches!(image.boot, Boot::Disk { .. }) {
            return Ok(None);
        }
        let spec = SeedSpec {
            name: &self.name,
            os: image.os,
            user: &image.user,
            authorized_keys: &self.authorized_keys,
            ca_key: self.ca_key.as_deref(),
            identity,
        };
        if let Some(file) = &self.seed_file {
            seed::write(&spec, file).await.map_err(LaunchError::Seed)?;
            return Ok(Some(file.clone()));
        }
        let (Some(vol), Some((pool, _))) = (&self.pool_seed, &self.pool) else { return Ok(None) };
        // Staged in the overlay folder (private), uploaded, then removed here.
        let local = seed::path_for(&self.state_dir, &self.name);
        if let Some(dir) = local.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LaunchError::ConsoleDir { dir: dir.to_path_buf(), source })?;
        }
        seed::write(&spec, &local).await.map_err(LaunchError::Seed)?;
        let sha = {
            use sha2::Digest;
            let bytes =
                std::fs::read(&local).map_err(|source| LaunchError::Seed(seed::SeedError::Write { path: local.clone(), source }))?;
            hex::encode(sha2::Sha256::digest(&bytes))
        };
        let (uri, pool, vol2, file) = (self.host.uri.clone(), pool.clone(), vol.clone(), local.clone());
        let uploaded = tokio::task::spawn_blocking(move || storage::put_volume(&uri, &pool, &vol2, &file, &sha))
            .await
            .map_err(|source| LaunchError::Task { vm: self.name.clone(), step: "seed volume", source })?;
        let _ = std::fs::remove_file(&local);
        let up = uploaded.map_err(|source| LaunchError::PoolSeed { vm: self.name.clone(), uri: self.host.uri.clone(), source })?;
        Ok(Some(PathBuf::from(up.path)))
    }

    async fn run(self) {
        let result = self
            .boot()
            .await
            .map_err(|error| Box::new(AttemptFailure { error, console_tail: readiness::console_tail(&self.console, self.tail_lines) }));
        let _ = self.tx.send(Cmd::AttemptDone { name: self.name.clone(), result });
    }

    /// Whether `domain` still runs, for readiness polls: a failed query is not proof the
    /// guest died, so it counts as running.
    async fn is_running(&self, domain: &str) -> bool {
        self.handle.is_active(domain).await.map(|a| a == Some(true)).unwrap_or(true)
    }

    /// Logs in to `domain` on `port` of this host as `login` says, checking `key`, until
    /// `deadline` (`login::poll_login`, paced by `pace`); a stopped domain ends it.
    async fn poll_login(&self, login: &Login, domain: &str, port: u16, key: &ssh_key::PublicKey, deadline: Instant, pace: Pace) -> Polled {
        let target = crate::ssh::Target { addr: SocketAddr::new(self.host.address, port), user: login.user.clone() };
        login::poll_login(&target, login, key, deadline, pace, || self.is_running(domain)).await
    }

    fn progress(&self, state: VmState) {
        let _ = self.tx.send(Cmd::Progress { name: self.name.clone(), state });
    }

    fn domain_type(&self) -> &'static str {
        match self.handle.status() {
            HostStatus::Up(facts) => facts.domain_type(self.host.accelerator),
            HostStatus::Connecting | HostStatus::Down { .. } => self.host.accelerator.domain_type(),
        }
    }

    async fn boot(&self) -> Result<Booted, LaunchError> {
        if let Some(parent) = self.console.parent() {
            std::fs::create_dir_all(parent).map_err(|source| LaunchError::ConsoleDir { dir: parent.to_path_buf(), source })?;
        }
        let mut started_as = Started::Cold;
        let early_type = self.domain_type();
        if self.warm_only && !self.may_start_warm(early_type) {
            return Err(LaunchError::WarmOnly { vm: self.name.clone(), why: "this host or image cannot start warm".into() });
        }
        if self.may_start_warm(early_type) {
            match self.warm_boot(early_type).await {
                Ok(booted) => return Ok(booted),
                Err(e) => {
                    let why = error_chain(&e);
                    if self.warm_only {
                        let _ = self.handle.destroy(&self.name).await;
                        let _ = self.handle.undefine(&self.name).await;
                        return Err(LaunchError::WarmOnly { vm: self.name.clone(), why });
                    }
                    warn!(vm = %self.name, error = %why, "warm start failed; booting cold");
                    // Nothing of the failed clone may be left for the cold boot to trip over.
                    let _ = self.handle.destroy(&self.name).await;
                    let _ = self.handle.undefine(&self.name).await;
                    if let Some(ov) = &self.overlay {
                        let _ = std::fs::remove_file(ov);
                    }
                    started_as = Started::ColdAfterWarm(why);
                }
            }
        }
        let image = match &self.pool {
            Some((_, version)) => version.boot_image(&self.image),
            None => self.image.clone(),
        };
        let disk = match (&image.boot, &self.overlay, &self.pool, &self.pool_overlay) {
            (Boot::Disk { base }, _, Some((pool, version)), Some(vol)) => {
                let (format, size) =
                    version.disk.clone().ok_or_else(|| LaunchError::NoBaseFormat { image: self.image.name.clone(), pool: pool.clone() })?;
                let (uri, pool, vol, base) = (self.host.uri.clone(), pool.clone(), vol.clone(), base.display().to_string());
                let uri2 = uri.clone();
                let what = format!("creating overlay volume {vol} on host {}", self.host.name);
                let path = storage::with_deadline(what, self.handle.options().call_timeout, move || {
                    storage::create_overlay(&uri2, &pool, &vol, &base, &format, size)
                })
                .await
                .map_err(|source| LaunchError::PoolOverlay { vm: self.name.clone(), uri, source })?;
                Some(DiskSpec { path: path.into(), format: "qcow2".into() })
            }
            (Boot::Disk { base }, Some(ov), _, _) => {
                let (base, ov2) = (base.clone(), ov.clone());
                tokio::task::spawn_blocking(move || overlay::create(&base, &ov2))
                    .await
                    .map_err(|source| LaunchError::Task { vm: self.name.clone(), step: "overlay", source })?
                    .map_err(LaunchError::Overlay)?;
                Some(DiskSpec { path: ov.clone(), format: "qcow2".into() })
            }
            _ => None,
        };
        let domain_type = self.domain_type();
        // A pool host may be another machine: its console is a pty read over the connection.
        // A host without one shares the daemon's filesystem and gets a file, which QEMU
        // writes without back-pressure. libvirt's test driver has no consoles.
        let remote_console = self.host.image_pool.is_some() && domain_type != "test";
        let seed = self.write_seed(&image).await?;
        let cmdline_identity = match (&self.identity, &image.boot) {
            (Some(id), Boot::Kernel { .. }) => Some((id.private_pem().map_err(LaunchError::Seed)?, id.public_line(), id.principal.clone())),
            _ => None,
        };
        let handover = match (&seed, &cmdline_identity) {
            (Some(p), _) => Handover::Seed(p),
            (None, Some((pem, public, principal))) => Handover::Cmdline { host_key_pem: pem, host_pub: public, principal },
            (None, None) => Handover::None,
        };
        let xml = libvirt::domain_xml::render_with(
            &DomainSpec {
                name: &self.name,
                image: &image,
                host: &self.host,
                domain_type,
                mark: &self.mark,
                ssh_port: self.port,
                disk,
                console: if remote_console { ConsoleXml::Pty } else { ConsoleXml::File(&self.console) },
                authorized_keys: &self.authorized_keys,
                ca_key: self.ca_key.as_deref(),
            },
            &handover,
        );
        self.handle.define(&self.name, xml).await.map_err(LaunchError::Define)?;
        self.progress(VmState::Defined);
        let started = Instant::now();
        // Either way the console ends up in the daemon's own file, which readiness, host-key
        // learning and console tails read.
        match remote_console {
            true => self.handle.start_with_console(&self.name, ConsoleSink::new(&self.console)).await,
            false => self.handle.start(&self.name).await,
        }
        .map_err(LaunchError::Start)?;
        self.progress(VmState::Booting);
        let deadline = started + self.boot_timeout;
        let mut session = None;
        match self.readiness {
            Readiness::DomainRunning => {
                if self.handle.is_active(&self.name).await.map_err(LaunchError::Query)? != Some(true) {
                    return Err(LaunchError::StoppedAtStart { vm: self.name.clone() });
                }
            }
            Readiness::SshBanner { poll } => {
                let addr = SocketAddr::new(self.host.address, self.port);
                let expected = login::expected_host_key(&self.image, self.identity.as_ref().map(|id| id.public_key()));
                if let (Some(login), Some(expected)) = (&self.login, expected) {
                    let pace = Pace { every: poll, probe: Probe::Banner };
                    match self.poll_login(login, &self.name, self.port, &expected, deadline, pace).await {
                        Polled::Session(s, began) => session = Some(HandedSession::new(s, began)),
                        // Up, but this login cannot work: the caller's own login says why.
                        Polled::Answered(e) => {
                            warn!(vm = %self.name, error = %crate::error::chain(&e), "guest answers SSH but refused the readiness login")
                        }
                        Polled::Timeout => return Err(LaunchError::NoBanner { vm: self.name.clone(), addr, timeout: self.boot_timeout }),
                        Polled::Stopped => return Err(LaunchError::StoppedBooting { vm: self.name.clone() }),
                    }
                } else {
                    match readiness::wait_for_banner(addr, deadline, poll, || self.is_running(&self.name)).await {
                        Ok(_) => {}
                        Err(WaitError::Timeout) => {
                            return Err(LaunchError::NoBanner { vm: self.name.clone(), addr, timeout: self.boot_timeout });
                        }
                        Err(WaitError::Stopped) => return Err(LaunchError::StoppedBooting { vm: self.name.clone() }),
                    }
                }
            }
        }
        let boot_time = started.elapsed();
        let read_key = || readiness::host_key_from_console(&String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()));
        let mut host_key = read_key();
        // The console crosses the connection on its own stream: the key printed before sshd
        // listened may land in the file just after the banner was seen.
        if host_key.is_none() && self.image.host_key == HostKeyPolicy::Console && remote_console {
            let wait = Instant::now() + CONSOLE_LAG;
            while host_key.is_none() && Instant::now() < wait {
                tokio::time::sleep(Duration::from_millis(50)).await;
                host_key = read_key();
            }
        }
        Ok(Booted { boot_time, host_key, session, started: started_as, template_key: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Arch, Os};
    use crate::libvirt::domain_xml::tests::{disk_boot, image};

    fn pending(run: &str, job: &str, priority: i32, seq: u64, queued_at: Instant) -> Pending {
        let (reply, _) = tokio::sync::oneshot::channel();
        Pending {
            req: LaunchRequest {
                run_id: run.into(),
                job: Some(job.into()),
                image: image("t", Os::Linux, Arch::X86_64, disk_boot()),
                authorized_keys: Vec::new(),
                ca_key: None,
                priority,
                avoid_hosts: Vec::new(),
                progress: None,
            },
            reply,
            login: None,
            attempts: 0,
            tried: HashSet::new(),
            seq,
            last_failure: None,
            missed_reported: false,
            queued_at,
            checked: false,
        }
    }

    fn order(queue: Vec<Pending>, aging: Duration, now: Instant) -> Vec<String> {
        queue_order(queue, &HashMap::new(), aging, now).into_iter().map(|p| p.req.run_id).collect()
    }

    /// Higher priority first; a waiting launch gains a point per `aging`, so a low one
    /// queued (p_high − p_low) × aging before the high ones goes first.
    #[test]
    fn priority_ages_with_waiting() {
        let t0 = Instant::now();
        let aging = Duration::from_secs(60);
        let queue = |now_offset: u64| {
            let at = |s: u64| t0 + Duration::from_secs(s);
            let q = vec![
                pending("low", "nightly", 0, 1, at(0)),
                pending("high-1", "urgent", 3, 2, at(now_offset)),
                pending("high-2", "urgent", 3, 3, at(now_offset)),
            ];
            (q, at(now_offset))
        };
        // Just queued: strictly by priority, FIFO within the job.
        let (q, now) = queue(0);
        assert_eq!(order(q, aging, now), ["high-1", "high-2", "low"]);
        // Two minutes later the low one has 2 points: still behind.
        let (q, now) = queue(120);
        assert_eq!(order(q, aging, now), ["high-1", "high-2", "low"]);
        // After three minutes it ties with fresh high ones and takes turns with their job.
        let (q, now) = queue(180);
        assert_eq!(order(q, aging, now), ["low", "high-1", "high-2"]);
        // Past that it is ahead of any newly queued high one.
        let (q, now) = queue(240);
        assert_eq!(order(q, aging, now), ["low", "high-1", "high-2"]);
    }

    /// Within one effective priority, round robin between jobs: a 50-image matrix queued
    /// first lets a single run through as the second launch placed.
    #[test]
    fn within_a_priority_jobs_take_turns() {
        let now = Instant::now();
        let mut q: Vec<Pending> = (0..50).map(|i| pending(&format!("m{i}"), "matrix", 0, i, now)).collect();
        q.push(pending("single", "single", 0, 50, now));
        let got = order(q, Duration::from_secs(60), now);
        assert_eq!(got[..3], ["m0", "single", "m1"]);
        assert_eq!(got.len(), 51);
    }

    #[test]
    fn ageing_never_overflows() {
        let now = Instant::now();
        let p = pending("r", "j", i32::MAX - 1, 1, now);
        assert_eq!(effective_priority(&p, Duration::ZERO, now + Duration::from_secs(3600)), i32::MAX);
    }
}
