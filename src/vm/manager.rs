//! The `VmManager`: the one owner of paddock's VMs, host usage, ports and the
//! launch queue, driven by a command channel.
//!
//! Implementation note: the owner task never waits on libvirt or a booting
//! guest. It reserves a host and port, then spawns a task for the slow part
//! (overlay, define, start, readiness; or shutdown and removal) which reports
//! back through the same channel. Every state change goes through
//! `Owner::transition`, which checks the guard and persists the row.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::config::{Boot, Fleet, Host, Image, PortRange};
use crate::hosts::Block;
use crate::libvirt::storage;
use crate::libvirt::{self, DiskSpec, DomainSpec, HostHandle, HostStatus, Mark, error_chain};
use crate::store::{HostVolume, Store, VmRow};

use super::images::{self, PoolImage};
use super::placement::{self, HostView, Placement, Usage};
use super::ports::PortAllocator;
use super::readiness::{self, Readiness, WaitError};
use super::reconcile::{self, LiveSet, ReconcileReport};
use super::{VmError, VmState, overlay};

/// Settings of a manager; see [`ManagerConfig::from_fleet`].
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// This daemon's instance id: it goes into domain names and ownership marks.
    pub instance_id: String,
    pub state_dir: PathBuf,
    pub ssh_ports: PortRange,
    /// How many hosts a launch is tried on before it fails.
    pub launch_retries: u32,
    pub reconcile_interval: Duration,
    pub readiness: Readiness,
    /// How long a guest gets to power off after an ACPI shutdown request.
    pub shutdown_timeout: Duration,
    /// How long a host that failed a launch is passed over.
    pub host_cooldown: Duration,
    pub console_tail_lines: usize,
    /// Reads the wall time for donors' availability windows (paused in tests).
    pub clock: Clock,
    /// Boot deadlines of guests whose arch the host emulates are multiplied by this.
    pub emulation_boot_factor: std::collections::BTreeMap<crate::config::Arch, f64>,
    /// Images put into hosts' `image_pool`s from the start (others are put
    /// there on their first launch).
    pub images: Vec<Image>,
    /// How long a failed upload into a host's pool waits before the next try.
    pub upload_retry: Duration,
}

impl ManagerConfig {
    pub fn from_fleet(fleet: &Fleet, instance_id: &str, readiness: Readiness) -> ManagerConfig {
        ManagerConfig {
            instance_id: instance_id.to_string(),
            state_dir: fleet.daemon.state_dir.clone(),
            ssh_ports: fleet.daemon.ssh_ports,
            launch_retries: fleet.daemon.launch_retries.max(1),
            reconcile_interval: fleet.daemon.reconcile_interval,
            readiness,
            shutdown_timeout: Duration::from_secs(30),
            host_cooldown: Duration::from_secs(60),
            console_tail_lines: 40,
            clock: Clock::system(),
            emulation_boot_factor: fleet.daemon.emulation_boot_factor.clone(),
            images: fleet.images.clone(),
            upload_retry: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub run_id: String,
    /// The job the run belongs to; `None` for VMs of access grants.
    pub job: Option<String>,
    pub image: Image,
    /// `authorized_keys` lines handed to the guest.
    pub authorized_keys: Vec<String>,
    /// The fleet CA's public key line, for images that trust it.
    pub ca_key: Option<String>,
    /// Higher goes first when hosts are full; FIFO within a priority.
    pub priority: i32,
}

#[derive(Debug, Clone)]
pub struct ReadyVm {
    pub name: String,
    pub host: String,
    pub ssh_addr: SocketAddr,
    pub host_key_from_console: Option<ssh_key::PublicKey>,
    pub console_path: PathBuf,
    /// From `start` to the SSH banner (or the domain running).
    pub boot_time: Duration,
}

#[derive(Debug, Clone)]
pub struct HostSnapshot {
    pub name: String,
    pub uri: String,
    pub up: bool,
    /// Why the host is down, when it is.
    pub down_reason: Option<String>,
    pub cooling_down: bool,
    /// Drained or quarantined.
    pub blocked: Option<Block>,
    /// Inside the donor's availability windows.
    pub window_open: bool,
    pub capacity: crate::config::Capacity,
    pub used: Usage,
}

#[derive(Debug, Clone)]
pub struct VmSnapshot {
    pub name: String,
    pub run_id: String,
    pub image: String,
    pub host: String,
    pub state: VmState,
    pub ssh_port: u16,
    pub created_at: DateTime<Utc>,
    pub hold_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub hosts: Vec<HostSnapshot>,
    pub vms: Vec<VmSnapshot>,
    /// Launches waiting for room.
    pub queued: usize,
}

type Reply<T> = oneshot::Sender<Result<T, VmError>>;

enum Cmd {
    Launch { req: LaunchRequest, reply: Reply<ReadyVm> },
    Hold { name: String, until: DateTime<Utc>, reply: Reply<()> },
    Release { name: String, reply: Reply<()> },
    Destroy { name: String, reply: Reply<()> },
    Snapshot { reply: oneshot::Sender<Snapshot> },
    SetBlock { host: String, block: Option<Block>, reply: Reply<()> },
    ReconcileNow { reply: oneshot::Sender<ReconcileReport> },
    Running { name: String, reply: Reply<bool> },
    // Reports from spawned tasks.
    Progress { name: String, state: VmState },
    AttemptDone { name: String, result: Result<Booted, AttemptFailure> },
    TeardownDone { name: String, result: Result<(), String> },
    ReconcileDone { report: ReconcileReport, reply: Option<oneshot::Sender<ReconcileReport>> },
    ImageUploaded { host: usize, image: String, result: Result<PoolImage, String> },
    SweepDone { host: usize, image: String },
}

struct Booted {
    boot_time: Duration,
    host_key: Option<ssh_key::PublicKey>,
}

struct AttemptFailure {
    error: String,
    console_tail: String,
}

/// A handle to the manager; cheap to clone. The owner task ends when every handle is dropped.
#[derive(Clone)]
pub struct VmManager {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl VmManager {
    /// Connects to every host, adopts held VMs the store remembers, reaps
    /// everything else of this instance (the start-up reconciliation) and
    /// starts the owner task.
    pub async fn start(cfg: ManagerConfig, hosts: Vec<Host>, store: Store) -> Result<VmManager, VmError> {
        let handles: Vec<HostHandle> = hosts.iter().map(|h| HostHandle::spawn(&h.name, &h.uri)).collect();
        for (h, handle) in hosts.iter().zip(&handles) {
            if let HostStatus::Up(facts) = handle.wait_connected().await {
                for w in libvirt::check_host(h, &facts, &[]) {
                    warn!(host = %h.name, "{w}");
                }
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let store_for_hosts = store.clone();
        let mut owner = Owner {
            ports: PortAllocator::new(cfg.ssh_ports),
            cfg,
            hosts: Vec::with_capacity(hosts.len()),
            vms: HashMap::new(),
            queue: Vec::new(),
            seq: 0,
            store,
            tx: tx.downgrade(),
            reconciling: false,
            pools: HashMap::new(),
            images: HashMap::new(),
            last_image_check: Instant::now(),
        };
        let store = store_for_hosts;
        let blocks = store.host_blocks().await?;
        for (config, handle) in hosts.into_iter().zip(handles) {
            let block = blocks.iter().find(|(n, _)| *n == config.name).map(|(_, b)| b.clone());
            if let Some(b) = &block {
                info!(host = %config.name, kind = b.kind(), reason = %b.reason(), "host is blocked from before the restart");
            }
            let consecutive_failures = store.host_health(&config.name).await?.consecutive_failures;
            owner.hosts.push(HostSlot { config, handle, cooling_until: None, block, consecutive_failures, last_up: None });
        }
        owner.adopt().await?;
        let report = owner.reconcile_pass().await;
        owner.finish_reconcile(&report).await;
        for image in owner.cfg.images.clone() {
            owner.distribute(&image);
        }
        tokio::spawn(owner.run(rx));
        Ok(VmManager { tx })
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, VmError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| VmError::ManagerGone)?;
        rx.await.map_err(|_| VmError::ManagerGone)
    }

    /// Boots a VM for `req` and returns when its SSH answers. Waits in the
    /// queue while no host has room.
    pub async fn launch(&self, req: LaunchRequest) -> Result<ReadyVm, VmError> {
        self.ask(|reply| Cmd::Launch { req, reply }).await?
    }

    /// Keeps a ready VM past its release until `until`.
    pub async fn hold(&self, name: &str, until: DateTime<Utc>) -> Result<(), VmError> {
        self.ask(|reply| Cmd::Hold { name: name.into(), until, reply }).await?
    }

    /// The run is done with the VM: it is torn down now, or when its hold ends.
    pub async fn release(&self, name: &str) -> Result<(), VmError> {
        self.ask(|reply| Cmd::Release { name: name.into(), reply }).await?
    }

    /// Tears the VM down now and returns when nothing of it is left.
    pub async fn destroy(&self, name: &str) -> Result<(), VmError> {
        self.ask(|reply| Cmd::Destroy { name: name.into(), reply }).await?
    }

    /// Drains or quarantines a host (no new VMs there; running ones finish),
    /// or with `None` lets it take VMs again. The caller persists the block.
    pub async fn set_block(&self, host: &str, block: Option<Block>) -> Result<(), VmError> {
        self.ask(|reply| Cmd::SetBlock { host: host.into(), block, reply }).await?
    }

    pub async fn snapshot(&self) -> Result<Snapshot, VmError> {
        self.ask(|reply| Cmd::Snapshot { reply }).await
    }

    pub async fn reconcile_now(&self) -> Result<ReconcileReport, VmError> {
        self.ask(|reply| Cmd::ReconcileNow { reply }).await
    }

    /// Whether the VM's domain still runs on its host, asked of libvirt now. `false`
    /// when the domain is gone or shut off behind paddock's back; an error when the
    /// host cannot be asked (down, reconnecting), which says nothing about the guest.
    pub async fn is_running(&self, name: &str) -> Result<bool, VmError> {
        self.ask(|reply| Cmd::Running { name: name.into(), reply }).await?
    }
}

struct HostSlot {
    config: Host,
    handle: HostHandle,
    cooling_until: Option<Instant>,
    block: Option<Block>,
    /// Failed launches since the last good one (from the store at start).
    consecutive_failures: u32,
    /// Up or down as last recorded; `None` before the first look.
    last_up: Option<bool>,
}

struct Vm {
    name: String,
    run_id: String,
    image: Image,
    host: usize,
    state: VmState,
    port: u16,
    overlay: Option<PathBuf>,
    console: PathBuf,
    created_at: DateTime<Utc>,
    ready_at: Option<DateTime<Utc>>,
    hold_until: Option<DateTime<Utc>>,
    /// The run let go of it; it goes when its hold ends.
    released: bool,
    error: Option<String>,
    /// The launch this VM is an attempt of, until it is ready or failed.
    launch: Option<Pending>,
    /// Callers of `destroy` waiting for the teardown.
    waiters: Vec<Reply<()>>,
    /// The pool volumes it boots from (hosts with an `image_pool`): kept
    /// while it lives.
    volumes: Vec<String>,
    /// Its overlay, when that is a volume in the host's pool.
    pool_overlay: Option<String>,
}

struct Pending {
    req: LaunchRequest,
    reply: Reply<ReadyVm>,
    attempts: u32,
    tried: HashSet<usize>,
    seq: u64,
    last_failure: Option<AttemptFailure>,
    /// Hosts meant for this job that could not take it were reported once.
    missed_reported: bool,
}

struct Owner {
    cfg: ManagerConfig,
    hosts: Vec<HostSlot>,
    vms: HashMap<String, Vm>,
    queue: Vec<Pending>,
    seq: u64,
    ports: PortAllocator,
    store: Store,
    /// Weak, so that the owner stops once every `VmManager` handle (and every
    /// task it spawned) is gone.
    tx: mpsc::WeakUnboundedSender<Cmd>,
    reconciling: bool,
    /// Per host (index) and image name: what its `image_pool` holds.
    pools: HashMap<(usize, String), PoolSlot>,
    /// Images seen (config and launches), re-checked for changes on a timer.
    images: HashMap<String, Image>,
    last_image_check: Instant,
}

/// One image in one host's pool.
#[derive(Default)]
struct PoolSlot {
    /// The version there, once uploaded.
    current: Option<PoolImage>,
    /// An upload or a removal of old versions is running: never both at once,
    /// so a removal cannot take a volume an upload is writing.
    busy: bool,
    /// Old versions should be removed once `busy` clears.
    sweep_wanted: bool,
    /// After a failed upload, the next try waits until then.
    retry_at: Option<Instant>,
}

/// How often image files are checked for changes (size and mtime).
const IMAGE_CHECK: Duration = Duration::from_secs(5);

/// How often the owner re-checks cool-downs, expired holds and down hosts.
const TICK: Duration = Duration::from_millis(500);

impl Owner {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconcile = tokio::time::interval_at(Instant::now() + self.cfg.reconcile_interval, self.cfg.reconcile_interval);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                _ = tick.tick() => self.on_tick().await,
                _ = reconcile.tick() => self.spawn_reconcile(None),
            }
        }
    }

    async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Launch { req, reply } => {
                self.seq += 1;
                self.queue.push(Pending {
                    req,
                    reply,
                    attempts: 0,
                    tried: HashSet::new(),
                    seq: self.seq,
                    last_failure: None,
                    missed_reported: false,
                });
                self.pump().await;
            }
            Cmd::Hold { name, until, reply } => {
                let r = match self.vms.get_mut(&name) {
                    None => Err(VmError::NotFound { name }),
                    Some(vm) if !vm.state.can_hold() => Err(VmError::WrongState { name, state: vm.state }),
                    Some(vm) => {
                        vm.hold_until = Some(until);
                        self.persist(&name).await
                    }
                };
                let _ = reply.send(r);
            }
            Cmd::Release { name, reply } => {
                let r = match self.vms.get_mut(&name) {
                    None => Err(VmError::NotFound { name }),
                    Some(vm) => {
                        vm.released = true;
                        if vm.hold_until.is_none_or(|t| t <= Utc::now()) {
                            self.teardown(&name).await;
                        }
                        Ok(())
                    }
                };
                let _ = reply.send(r);
            }
            Cmd::Destroy { name, reply } => match self.vms.get_mut(&name) {
                None => drop(reply.send(Err(VmError::NotFound { name }))),
                Some(vm) => {
                    vm.waiters.push(reply);
                    if vm.state != VmState::Stopping {
                        self.teardown(&name).await;
                    }
                }
            },
            Cmd::Snapshot { reply } => drop(reply.send(self.snapshot())),
            Cmd::SetBlock { host, block, reply } => {
                let r = match self.hosts.iter_mut().find(|h| h.config.name == host) {
                    None => Err(VmError::UnknownHost { host }),
                    Some(slot) => {
                        if block.is_none() {
                            // A resumed host starts with a clean slate.
                            slot.consecutive_failures = 0;
                            slot.cooling_until = None;
                        }
                        slot.block = block;
                        Ok(())
                    }
                };
                let _ = reply.send(r);
                self.pump().await;
            }
            Cmd::ReconcileNow { reply } => self.spawn_reconcile(Some(reply)),
            Cmd::Running { name, reply } => match self.vms.get(&name) {
                None => drop(reply.send(Err(VmError::NotFound { name }))),
                Some(vm) => {
                    // Asked off the owner task: a libvirt call may be slow.
                    let handle = self.hosts[vm.host].handle.clone();
                    tokio::spawn(async move {
                        let r = handle.is_active(&name).await;
                        let _ = reply.send(r.map(|a| a == Some(true)).map_err(|e| VmError::Host { name, error: error_chain(&e) }));
                    });
                }
            },
            Cmd::Progress { name, state } => {
                // A VM being stopped stays stopping whatever its launch task still reports.
                if self.vms.get(&name).is_some_and(|vm| vm.state != VmState::Stopping) {
                    self.transition(&name, state).await;
                }
            }
            Cmd::AttemptDone { name, result } => self.attempt_done(name, result).await,
            Cmd::TeardownDone { name, result } => self.teardown_done(name, result).await,
            Cmd::ImageUploaded { host, image, result } => self.image_uploaded(host, image, result).await,
            Cmd::SweepDone { host, image } => {
                let slot = self.pools.entry((host, image.clone())).or_default();
                slot.busy = false;
                if std::mem::take(&mut slot.sweep_wanted) {
                    self.sweep(host, &image);
                }
            }
            Cmd::ReconcileDone { report, reply } => {
                self.reconciling = false;
                self.finish_reconcile(&report).await;
                if let Some(reply) = reply {
                    let _ = reply.send(report);
                }
            }
        }
    }

    async fn on_tick(&mut self) {
        self.watch_hosts().await;
        self.hard_stops().await;
        let now = Utc::now();
        let expired: Vec<String> = self
            .vms
            .values()
            .filter(|vm| vm.released && vm.state == VmState::Ready && vm.hold_until.is_some_and(|t| t <= now))
            .map(|vm| vm.name.clone())
            .collect();
        for name in expired {
            info!(vm = %name, "hold ended");
            self.teardown(&name).await;
        }
        if self.last_image_check.elapsed() >= IMAGE_CHECK {
            self.last_image_check = Instant::now();
            let images: Vec<Image> = self.images.values().cloned().collect();
            for image in images {
                self.distribute(&image);
            }
        }
        if !self.queue.is_empty() {
            self.pump().await;
        }
    }

    /// Whether host `i` can boot `image` as it is now: always for hosts that
    /// read files by path; for pool hosts, when the uploaded version was read
    /// from the same files with the size and mtime they have now.
    fn image_present(&self, i: usize, image: &Image) -> bool {
        if self.hosts[i].config.image_pool.is_none() {
            return true;
        }
        let Some(current) = self.pools.get(&(i, image.name.clone())).and_then(|p| p.current.as_ref()) else { return false };
        images::is_current(current, image)
    }

    /// Starts uploading `image` to every up pool host that may run it and
    /// lacks its current version.
    fn distribute(&mut self, image: &Image) {
        self.images.insert(image.name.clone(), image.clone());
        let Some(tx) = self.tx.upgrade() else { return };
        let now = Instant::now();
        for i in 0..self.hosts.len() {
            let config = &self.hosts[i].config;
            let Some(pool) = config.image_pool.clone() else { continue };
            if !config.limits.allows_image(&image.name) || !self.hosts[i].handle.status().is_up() || self.image_present(i, image) {
                continue;
            }
            let (uri, host_name) = (config.uri.clone(), config.name.clone());
            let slot = self.pools.entry((i, image.name.clone())).or_default();
            if slot.busy || slot.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            slot.busy = true;
            info!(host = %host_name, image = %image.name, %pool, "putting the image's current version into the host's pool");
            let (img, tx) = (image.clone(), tx.clone());
            tokio::spawn(async move {
                let name = img.name.clone();
                let result = tokio::task::spawn_blocking(move || images::upload(&uri, &pool, &img))
                    .await
                    .unwrap_or_else(|e| Err(format!("upload task: {e}")));
                let _ = tx.send(Cmd::ImageUploaded { host: i, image: name, result });
            });
        }
    }

    async fn image_uploaded(&mut self, host: usize, image: String, result: Result<PoolImage, String>) {
        let host_name = self.hosts[host].config.name.clone();
        let pool = self.hosts[host].config.image_pool.clone().unwrap_or_default();
        let key = (host, image.clone());
        match result {
            Ok(version) => {
                for f in &version.files {
                    let row = HostVolume {
                        host: host_name.clone(),
                        image: image.clone(),
                        role: f.role.into(),
                        sha256: f.sha256.clone(),
                        pool: pool.clone(),
                        volume: f.volume.clone(),
                        path: f.path.clone(),
                    };
                    if let Err(e) = self.store.put_host_volume(&row).await {
                        warn!(host = %host_name, error = %error_chain(&e), "could not record an image volume");
                    }
                }
                let sent: Vec<&str> = version.files.iter().filter(|f| f.sent).map(|f| f.volume.as_str()).collect();
                if !sent.is_empty() {
                    info!(host = %host_name, %image, volumes = %sent.join(", "), "image uploaded and verified");
                    let _ = self.store.record_event("image_uploaded", &host_name, &format!("image {image}: {}", sent.join(", "))).await;
                }
                let slot = self.pools.entry(key).or_default();
                slot.busy = false;
                slot.retry_at = None;
                slot.current = Some(version);
                self.sweep(host, &image);
                self.pump().await;
            }
            Err(error) => {
                warn!(host = %host_name, %image, %error, "could not put the image into the host's pool; retrying later");
                let _ = self.store.record_event("image_upload_failed", &host_name, &format!("image {image}: {error}")).await;
                let slot = self.pools.entry(key).or_default();
                slot.busy = false;
                slot.retry_at = Some(Instant::now() + self.cfg.upload_retry);
            }
        }
    }

    /// Removes versions of `image` in host `host`'s pool other than the
    /// current one and those live VMs there boot from.
    fn sweep(&mut self, host: usize, image: &str) {
        let Some(tx) = self.tx.upgrade() else { return };
        let Some(pool) = self.hosts[host].config.image_pool.clone() else { return };
        let mut keep: Vec<String> = self.vms.values().filter(|vm| vm.host == host).flat_map(|vm| vm.volumes.clone()).collect();
        let slot = self.pools.entry((host, image.to_string())).or_default();
        let Some(current) = &slot.current else { return };
        if slot.busy {
            slot.sweep_wanted = true;
            return;
        }
        slot.busy = true;
        keep.extend(current.volumes());
        let prefixes: Vec<String> = current.files.iter().map(|f| f.prefix.clone()).collect();
        let (uri, host_name, image) = (self.hosts[host].config.uri.clone(), self.hosts[host].config.name.clone(), image.to_string());
        tokio::spawn(async move {
            let (h, i) = (host_name.clone(), image.clone());
            let done = tokio::task::spawn_blocking(move || {
                for prefix in prefixes {
                    match storage::remove_volumes(&uri, &pool, &prefix, &keep) {
                        Ok(removed) if !removed.is_empty() => {
                            info!(host = %h, image = %i, removed = %removed.join(", "), "old image versions removed")
                        }
                        Ok(_) => {}
                        Err(e) => warn!(host = %h, image = %i, error = %error_chain(&e), "could not remove old image versions"),
                    }
                }
            });
            let _ = done.await;
            let _ = tx.send(Cmd::SweepDone { host, image });
        });
    }

    /// Records up/down periods; a host going down is an event and a notification.
    async fn watch_hosts(&mut self) {
        for i in 0..self.hosts.len() {
            let status = self.hosts[i].handle.status();
            let (up, reason) = match &status {
                HostStatus::Connecting => continue,
                HostStatus::Up(_) => (true, None),
                HostStatus::Down { reason, .. } => (false, Some(reason.clone())),
            };
            if self.hosts[i].last_up == Some(up) {
                continue;
            }
            let name = self.hosts[i].config.name.clone();
            let was = self.hosts[i].last_up.replace(up);
            let _ = self.store.record_host_state(&name, up, reason.as_deref()).await;
            if !up {
                let reason = reason.unwrap_or_default();
                let _ = self.store.record_event("host_down", &name, &reason).await;
                notify(&self.hosts[i].config, "down", &reason);
            } else if was == Some(false) {
                let _ = self.store.record_event("host_up", &name, "").await;
            }
        }
    }

    /// Outside every window of a `hard_stop` host, its VMs are stopped.
    async fn hard_stops(&mut self) {
        let wall = self.cfg.clock.now();
        let closed: HashSet<usize> = self
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.config.limits.hard_stop && !h.config.limits.open_at(wall))
            .map(|(i, _)| i)
            .collect();
        if closed.is_empty() {
            return;
        }
        let names: Vec<String> = self
            .vms
            .values()
            .filter(|vm| closed.contains(&vm.host) && vm.state.can_stop() && vm.state != VmState::Stopping)
            .map(|vm| vm.name.clone())
            .collect();
        for name in names {
            let host = self.hosts[self.vms[&name].host].config.name.clone();
            warn!(vm = %name, %host, "the donor's window closed (hard_stop): stopping the VM");
            let _ = self.store.record_event("window_hard_stop", &name, &format!("host {host}")).await;
            self.teardown(&name).await;
        }
    }

    /// A queued run of a job that names hosts meant for it (their `jobs`
    /// allow-list lists it) but none of them can take it now: said once.
    async fn report_missed_job(&mut self, pending: &mut Pending) {
        let Some(job) = pending.req.job.clone() else { return };
        if pending.missed_reported {
            return;
        }
        let wall = self.cfg.clock.now();
        let mut missed = Vec::new();
        for slot in &self.hosts {
            let meant = slot.config.limits.jobs.as_ref().is_some_and(|l| l.contains(&job));
            if !meant {
                continue;
            }
            let why = match (&slot.block, slot.handle.status().is_up(), slot.config.limits.open_at(wall)) {
                (Some(b), _, _) => format!("{}: {}", b.kind(), b.reason()),
                (None, false, _) => "down".to_string(),
                (None, true, false) => "outside its availability windows".to_string(),
                (None, true, true) => continue,
            };
            missed.push((slot.config.name.clone(), why));
        }
        if missed.is_empty() {
            return;
        }
        pending.missed_reported = true;
        for (host, why) in missed {
            warn!(%host, %job, run_id = %pending.req.run_id, %why, "a host meant for this job cannot run it");
            let detail = format!("job {job} (run {}): {why}", pending.req.run_id);
            let _ = self.store.record_event("host_missed_job", &host, &detail).await;
        }
    }

    /// Counts a launch on host `i` and quarantines the host when its failures
    /// in a row reach the donor's `quarantine_after`.
    async fn count_launch(&mut self, i: usize, vm: &str, result: Result<Duration, &str>) {
        let name = self.hosts[i].config.name.clone();
        let (ok, boot_ms, error) = match result {
            Ok(d) => (true, Some(d.as_millis() as u64), None),
            Err(e) => (false, None, Some(e)),
        };
        if let Err(e) = self.store.record_launch(&name, vm, ok, boot_ms, error).await {
            warn!(host = %name, error = %error_chain(&e), "could not record a launch");
        }
        let slot = &mut self.hosts[i];
        if ok {
            slot.consecutive_failures = 0;
            return;
        }
        slot.consecutive_failures += 1;
        let limit = slot.config.limits.quarantine_after;
        if slot.consecutive_failures < limit || slot.block.is_some() {
            return;
        }
        let reason = format!("{} launches in a row failed; last: {}", slot.consecutive_failures, error.unwrap_or_default());
        let block = Block::Quarantined { reason: reason.clone(), at: Utc::now() };
        slot.block = Some(block.clone());
        warn!(host = %name, %reason, "host quarantined until an admin resumes it");
        if let Err(e) = self.store.set_host_block(&name, Some(block), None).await {
            warn!(host = %name, error = %error_chain(&e), "could not persist a quarantine");
        }
        let _ = self.store.record_event("host_quarantined", &name, &reason).await;
        notify(&self.hosts[i].config, "quarantined", &reason);
    }

    /// Changes a VM's state if the guard allows it, and persists the row.
    async fn transition(&mut self, name: &str, next: VmState) -> bool {
        let Some(vm) = self.vms.get_mut(name) else { return false };
        if !vm.state.can_become(next) {
            warn!(vm = %name, from = %vm.state, to = %next, "illegal VM state transition refused");
            return false;
        }
        vm.state = next;
        if next == VmState::Ready {
            vm.ready_at = Some(Utc::now());
        }
        if let Err(e) = self.persist(name).await {
            warn!(vm = %name, error = %error_chain(&e), "could not persist a VM state");
        }
        true
    }

    async fn persist(&self, name: &str) -> Result<(), VmError> {
        let Some(vm) = self.vms.get(name) else { return Ok(()) };
        let row = VmRow {
            name: vm.name.clone(),
            run_id: Some(vm.run_id.clone()),
            image: vm.image.name.clone(),
            host: Some(self.hosts[vm.host].config.name.clone()),
            state: vm.state.as_str().into(),
            ssh_port: Some(vm.port),
            overlay_path: vm.overlay.as_ref().map(|p| p.display().to_string()),
            console_path: Some(vm.console.display().to_string()),
            error: vm.error.clone(),
            created_at: vm.created_at,
            updated_at: Utc::now(),
            ready_at: vm.ready_at,
            hold_until: vm.hold_until,
        };
        Ok(self.store.put_vm(&row).await?)
    }

    fn usage(&self) -> Vec<Usage> {
        let mut used = vec![Usage::default(); self.hosts.len()];
        for vm in self.vms.values().filter(|vm| vm.state.holds_resources()) {
            used[vm.host].add(&vm.image);
        }
        used
    }

    fn views(&self, req: &LaunchRequest, tried: &HashSet<usize>, used: &[Usage]) -> Vec<HostView> {
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

    /// Places queued launches, highest priority first, FIFO within a priority.
    /// `image.boot_timeout`, times the configured factor for its arch when host
    /// `i` is of another arch (so emulates it: an emulated guest boots slower).
    fn boot_timeout(&self, i: usize, image: &Image) -> Duration {
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
    fn allocate_port(&mut self, i: usize) -> Option<u16> {
        let addr = self.hosts[i].config.address;
        let local = self.hosts[i].config.uri.starts_with("qemu:///") && (addr.is_loopback() || addr.is_unspecified());
        self.ports.allocate_where(|port| !local || std::net::TcpListener::bind((addr, port)).is_ok())
    }

    /// A launch that cannot be placed does not hold back those behind it that can.
    async fn pump(&mut self) {
        self.queue.sort_by_key(|p| (std::cmp::Reverse(p.req.priority), p.seq));
        let queue = std::mem::take(&mut self.queue);
        for pending in queue {
            // A changed image file is noticed here at the latest: the launch waits for its upload.
            self.distribute(&pending.req.image);
            let used = self.usage();
            let views = self.views(&pending.req, &pending.tried, &used);
            match placement::place(&pending.req.image, &views) {
                Placement::Host(i) => match self.allocate_port(i) {
                    Some(port) => self.start_attempt(pending, i, port).await,
                    None => self.queue.push(pending),
                },
                Placement::Wait => {
                    let mut pending = pending;
                    self.report_missed_job(&mut pending).await;
                    self.queue.push(pending)
                }
                Placement::Never => {
                    let image = &pending.req.image;
                    let err = VmError::NoHost { image: image.name.clone(), arch: image.arch.to_string() };
                    let _ = pending.reply.send(Err(err));
                }
            }
        }
    }

    async fn start_attempt(&mut self, mut pending: Pending, host: usize, port: u16) {
        let Some(tx) = self.tx.upgrade() else { return };
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
            (Some(_), true) => (None, Some(format!("{name}-overlay.qcow2"))),
        };
        let volumes = pool.as_ref().map(|(_, v)| v.volumes()).unwrap_or_default();
        let console = self.cfg.state_dir.join("consoles").join(format!("{name}.log"));
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
        };
        let job = Attempt {
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
            tx,
        };
        info!(vm = %name, run_id = %vm.run_id, host = %self.hosts[host].config.name, port, attempt = pending.attempts, "placing VM");
        let mut vm = vm;
        vm.launch = Some(pending);
        self.vms.insert(name.clone(), vm);
        self.transition(&name, VmState::Placed).await;
        tokio::spawn(job.run());
    }

    async fn attempt_done(&mut self, name: String, result: Result<Booted, AttemptFailure>) {
        let Some(vm) = self.vms.get_mut(&name) else { return };
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
                    console_path: vm.console.clone(),
                    boot_time: booted.boot_time,
                };
                info!(vm = %name, host = %ready.host, boot_ms = booted.boot_time.as_millis() as u64, "VM ready");
                let host = vm.host;
                self.count_launch(host, &name, Ok(booted.boot_time)).await;
                self.transition(&name, VmState::Ready).await;
                if pending.reply.send(Ok(ready)).is_err() {
                    // The caller went away: nobody will use or release this VM.
                    self.teardown(&name).await;
                }
            }
            Ok(_) => drop(pending.reply.send(Err(VmError::Cancelled { name }))),
            Err(_) if stopping => drop(pending.reply.send(Err(VmError::Cancelled { name }))),
            Err(failure) => {
                let host = vm.host;
                vm.error = Some(failure.error.clone());
                warn!(vm = %name, host = %self.hosts[host].config.name, error = %failure.error, "launch attempt failed");
                self.hosts[host].cooling_until = Some(Instant::now() + self.cfg.host_cooldown);
                let _ = self.store.record_event("launch_failed", &name, &failure.error).await;
                self.count_launch(host, &name, Err(&failure.error)).await;
                self.transition(&name, VmState::Failed).await;
                self.teardown(&name).await;
                if pending.attempts >= self.cfg.launch_retries {
                    let _ = pending.reply.send(Err(VmError::LaunchFailed {
                        image: pending.req.image.name.clone(),
                        attempts: pending.attempts,
                        error: failure.error,
                        console_tail: failure.console_tail,
                    }));
                } else {
                    pending.last_failure = Some(failure);
                    self.queue.push(pending);
                    self.pump().await;
                }
            }
        }
    }

    /// Starts removing a VM: graceful when it is ready, immediate otherwise.
    async fn teardown(&mut self, name: &str) {
        let Some(vm) = self.vms.get(name) else { return };
        let graceful = vm.state == VmState::Ready;
        if !vm.state.can_stop() {
            return;
        }
        let Some(tx) = self.tx.upgrade() else { return };
        self.transition(name, VmState::Stopping).await;
        let vm = &self.vms[name];
        let host = &self.hosts[vm.host].config;
        let pool_overlay = match (&host.image_pool, &vm.pool_overlay) {
            (Some(pool), Some(vol)) => Some((host.uri.clone(), pool.clone(), vol.clone())),
            _ => None,
        };
        let job = Teardown {
            name: name.to_string(),
            pool_overlay,
            handle: self.hosts[vm.host].handle.clone(),
            overlay: vm.overlay.clone(),
            console: vm.console.clone(),
            graceful: graceful.then_some(self.cfg.shutdown_timeout),
            tx,
        };
        tokio::spawn(job.run());
    }

    async fn teardown_done(&mut self, name: String, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.transition(&name, VmState::Gone).await;
                let Some(vm) = self.vms.remove(&name) else { return };
                self.ports.release(vm.port);
                // The versions it booted from may now be unused.
                let current = self.pools.get(&(vm.host, vm.image.name.clone())).and_then(|s| s.current.as_ref());
                if !vm.volumes.is_empty() && current.is_none_or(|c| c.volumes() != vm.volumes) {
                    self.sweep(vm.host, &vm.image.name);
                }
                if let Err(e) = self.store.delete_vm(&name).await {
                    warn!(vm = %name, error = %error_chain(&e), "could not delete a VM row");
                }
                info!(vm = %name, "VM gone");
                for w in vm.waiters {
                    let _ = w.send(Ok(()));
                }
                if let Some(p) = vm.launch {
                    let _ = p.reply.send(Err(VmError::Cancelled { name: name.clone() }));
                }
                self.pump().await;
            }
            Err(error) => {
                // Keep the VM (and its capacity) accounted for; reconciliation retries the removal.
                warn!(vm = %name, %error, "teardown failed");
                if let Some(vm) = self.vms.get_mut(&name) {
                    vm.error = Some(error.clone());
                    for w in vm.waiters.drain(..) {
                        let _ = w.send(Err(VmError::Teardown { name: name.clone(), error: error.clone() }));
                    }
                }
                self.transition(&name, VmState::Failed).await;
            }
        }
    }

    fn live_set(&self) -> LiveSet {
        LiveSet { names: self.vms.keys().cloned().collect(), taken_at: Utc::now() }
    }

    async fn reconcile_pass(&self) -> ReconcileReport {
        let handles: Vec<HostHandle> = self.hosts.iter().map(|h| h.handle.clone()).collect();
        reconcile::reconcile(&handles, &self.cfg.instance_id, &self.live_set(), &self.cfg.state_dir, &self.store).await
    }

    fn spawn_reconcile(&mut self, reply: Option<oneshot::Sender<ReconcileReport>>) {
        if self.reconciling && reply.is_none() {
            return;
        }
        let Some(tx) = self.tx.upgrade() else { return };
        self.reconciling = true;
        let handles: Vec<HostHandle> = self.hosts.iter().map(|h| h.handle.clone()).collect();
        let (instance, live, dir, store) = (self.cfg.instance_id.clone(), self.live_set(), self.cfg.state_dir.clone(), self.store.clone());
        tokio::spawn(async move {
            let report = reconcile::reconcile(&handles, &instance, &live, &dir, &store).await;
            let _ = tx.send(Cmd::ReconcileDone { report, reply });
        });
    }

    /// Drops store rows of VMs no longer live (their domains were just reaped),
    /// and failed VMs whose removal now succeeded.
    async fn finish_reconcile(&mut self, report: &ReconcileReport) {
        for e in &report.errors {
            warn!(error = %e, "reconciliation");
        }
        let Ok(rows) = self.store.vms().await else { return };
        let skipped: HashSet<&str> = report.hosts_skipped.iter().map(String::as_str).collect();
        for row in rows {
            let on_skipped_host = row.host.as_deref().is_some_and(|h| skipped.contains(h));
            if !self.vms.contains_key(&row.name) && !on_skipped_host {
                let _ = self.store.delete_vm(&row.name).await;
                if let Some(port) = row.ssh_port {
                    self.ports.release(port);
                }
            }
        }
        let failed: Vec<String> =
            self.vms.values().filter(|vm| vm.state == VmState::Failed && vm.launch.is_none()).map(|vm| vm.name.clone()).collect();
        for name in failed {
            self.teardown(&name).await;
        }
    }

    /// At start: VMs the store remembers as ready and held are adopted (their
    /// hold is honoured, then they go); the ports of all remembered VMs are
    /// reserved until reconciliation has dealt with them.
    async fn adopt(&mut self) -> Result<(), VmError> {
        let rows = self.store.vms().await?;
        let now = Utc::now();
        for row in rows {
            if let Some(port) = row.ssh_port {
                self.ports.reserve(port);
            }
            let host = row.host.as_deref().and_then(|h| self.hosts.iter().position(|s| s.config.name == h));
            let held = row.hold_until.is_some_and(|t| t > now);
            let (Some(host), Some(port), true, Some(VmState::Ready)) = (host, row.ssh_port, held, VmState::parse(&row.state)) else {
                continue;
            };
            if self.hosts[host].handle.is_active(&row.name).await.ok().flatten() != Some(true) {
                continue;
            }
            info!(vm = %row.name, hold_until = ?row.hold_until, "adopting a held VM from before the restart");
            // The image config may have changed since; only its name matters for a held VM.
            let image = Image { name: row.image.clone(), ..placeholder_image() };
            self.vms.insert(
                row.name.clone(),
                Vm {
                    name: row.name.clone(),
                    run_id: row.run_id.clone().unwrap_or_default(),
                    image,
                    host,
                    state: VmState::Ready,
                    port,
                    overlay: row.overlay_path.map(PathBuf::from),
                    console: row.console_path.map(PathBuf::from).unwrap_or_default(),
                    created_at: row.created_at,
                    ready_at: row.ready_at,
                    hold_until: row.hold_until,
                    released: true,
                    error: None,
                    launch: None,
                    waiters: Vec::new(),
                    volumes: Vec::new(),
                    pool_overlay: None,
                },
            );
        }
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        let used = self.usage();
        let now = Instant::now();
        let hosts = self
            .hosts
            .iter()
            .zip(used)
            .map(|(slot, used)| {
                let status = slot.handle.status();
                HostSnapshot {
                    name: slot.config.name.clone(),
                    uri: slot.config.uri.clone(),
                    up: status.is_up(),
                    down_reason: match status {
                        HostStatus::Down { reason, .. } => Some(reason),
                        _ => None,
                    },
                    cooling_down: slot.cooling_until.is_some_and(|t| t > now),
                    blocked: slot.block.clone(),
                    window_open: slot.config.limits.open_at(self.cfg.clock.now()),
                    capacity: slot.config.capacity,
                    used,
                }
            })
            .collect();
        let mut vms: Vec<VmSnapshot> = self
            .vms
            .values()
            .map(|vm| VmSnapshot {
                name: vm.name.clone(),
                run_id: vm.run_id.clone(),
                image: vm.image.name.clone(),
                host: self.hosts[vm.host].config.name.clone(),
                state: vm.state,
                ssh_port: vm.port,
                created_at: vm.created_at,
                hold_until: vm.hold_until,
            })
            .collect();
        vms.sort_by_key(|v| v.created_at);
        Snapshot { hosts, vms, queued: self.queue.len() }
    }
}

/// A stand-in for an adopted VM's image: it takes no new capacity decisions
/// beyond its own memory/vCPU count, which are unknown after a restart.
fn placeholder_image() -> Image {
    Image {
        name: String::new(),
        os: crate::config::Os::Linux,
        arch: crate::config::Arch::X86_64,
        boot: Boot::Kernel { kernel: PathBuf::new(), initrd: PathBuf::new(), cmdline: String::new() },
        memory_mib: 0,
        vcpus: 0,
        user: String::new(),
        shell: crate::config::Shell::Sh,
        host_key: crate::config::HostKeyPolicy::Console,
        trusts_fleet_ca: false,
        boot_timeout: Duration::ZERO,
        nic_model: None,
        tpm: false,
        smc_key: None,
        firmware: None,
    }
}

/// Runs the host's `notify_command` (through `sh -c`) with `PADDOCK_HOST`,
/// `PADDOCK_HOST_URI`, `PADDOCK_EVENT` and `PADDOCK_REASON` set; never waits for it.
fn notify(host: &Host, event: &str, reason: &str) {
    let Some(cmd) = host.limits.notify_command.clone() else { return };
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c")
        .arg(&cmd)
        .env("PADDOCK_HOST", &host.name)
        .env("PADDOCK_HOST_URI", &host.uri)
        .env("PADDOCK_EVENT", event)
        .env("PADDOCK_REASON", reason)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    let name = host.name.clone();
    match c.spawn() {
        Ok(mut child) => {
            tokio::spawn(async move {
                match child.wait().await {
                    Ok(st) if st.success() => {}
                    Ok(st) => warn!(host = %name, status = %st, "notify_command failed"),
                    Err(e) => warn!(host = %name, error = %e, "notify_command failed"),
                }
            });
        }
        Err(e) => warn!(host = %name, error = %e, "could not run notify_command"),
    }
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
}

impl Attempt {
    async fn run(self) {
        let result = self
            .boot()
            .await
            .map_err(|error| AttemptFailure { error, console_tail: readiness::console_tail(&self.console, self.tail_lines) });
        let _ = self.tx.send(Cmd::AttemptDone { name: self.name.clone(), result });
    }

    fn progress(&self, state: VmState) {
        let _ = self.tx.send(Cmd::Progress { name: self.name.clone(), state });
    }

    async fn boot(&self) -> Result<Booted, String> {
        if let Some(parent) = self.console.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        let image = match &self.pool {
            Some((_, version)) => version.boot_image(&self.image),
            None => self.image.clone(),
        };
        let disk = match (&image.boot, &self.overlay, &self.pool, &self.pool_overlay) {
            (Boot::Disk { base }, _, Some((pool, version)), Some(vol)) => {
                let (format, size) = version.disk.clone().ok_or("no base format recorded for the pool's disk")?;
                let (uri, pool, vol, base) = (self.host.uri.clone(), pool.clone(), vol.clone(), base.display().to_string());
                let path = tokio::task::spawn_blocking(move || storage::create_overlay(&uri, &pool, &vol, &base, &format, size))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| error_chain(&e))?;
                Some(DiskSpec { path: path.into(), format: "qcow2".into() })
            }
            (Boot::Disk { base }, Some(ov), _, _) => {
                let (base, ov2) = (base.clone(), ov.clone());
                tokio::task::spawn_blocking(move || overlay::create(&base, &ov2))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| error_chain(&e))?;
                Some(DiskSpec { path: ov.clone(), format: "qcow2".into() })
            }
            _ => None,
        };
        let xml = libvirt::domain_xml::render(&DomainSpec {
            name: &self.name,
            image: &image,
            host: &self.host,
            domain_type: match self.handle.status() {
                HostStatus::Up(facts) => facts.domain_type(self.host.accelerator),
                HostStatus::Connecting | HostStatus::Down { .. } => self.host.accelerator.domain_type(),
            },
            mark: &self.mark,
            ssh_port: self.port,
            disk,
            console_path: &self.console,
            authorized_keys: &self.authorized_keys,
            ca_key: self.ca_key.as_deref(),
        });
        self.handle.define(&self.name, xml).await.map_err(|e| error_chain(&e))?;
        self.progress(VmState::Defined);
        let started = Instant::now();
        self.handle.start(&self.name).await.map_err(|e| error_chain(&e))?;
        self.progress(VmState::Booting);
        let deadline = started + self.boot_timeout;
        match self.readiness {
            Readiness::DomainRunning => {
                if self.handle.is_active(&self.name).await.map_err(|e| error_chain(&e))? != Some(true) {
                    return Err(format!("domain {} stopped right after starting", self.name));
                }
            }
            Readiness::SshBanner { poll } => {
                let addr = SocketAddr::new(self.host.address, self.port);
                let handle = self.handle.clone();
                let name = self.name.clone();
                let running = move || {
                    let (handle, name) = (handle.clone(), name.clone());
                    // A failed query is not proof the guest died: keep waiting.
                    async move { handle.is_active(&name).await.map(|a| a == Some(true)).unwrap_or(true) }
                };
                match readiness::wait_for_banner(addr, deadline, poll, running).await {
                    Ok(_) => {}
                    Err(WaitError::Timeout) => {
                        return Err(format!("no SSH banner from {} on {addr} within {:?}", self.name, self.boot_timeout));
                    }
                    Err(WaitError::Stopped) => return Err(format!("domain {} stopped while booting", self.name)),
                }
            }
        }
        let boot_time = started.elapsed();
        let host_key = readiness::host_key_from_console(&String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()));
        Ok(Booted { boot_time, host_key })
    }
}

/// Shutting down and removing one VM, run as its own task.
struct Teardown {
    name: String,
    /// URI, pool and name of an overlay volume to delete.
    pool_overlay: Option<(String, String, String)>,
    handle: HostHandle,
    overlay: Option<PathBuf>,
    console: PathBuf,
    /// `Some(timeout)`: ask the guest to power off first.
    graceful: Option<Duration>,
    tx: mpsc::UnboundedSender<Cmd>,
}

impl Teardown {
    async fn run(self) {
        let result = self.remove().await;
        let _ = self.tx.send(Cmd::TeardownDone { name: self.name.clone(), result });
    }

    async fn remove(&self) -> Result<(), String> {
        let h = &self.handle;
        if let Some(timeout) = self.graceful
            && h.shutdown(&self.name).await.is_ok()
        {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                match h.is_active(&self.name).await {
                    Ok(Some(true)) => tokio::time::sleep(Duration::from_millis(200)).await,
                    _ => break,
                }
            }
        }
        h.destroy(&self.name).await.map_err(|e| error_chain(&e))?;
        h.undefine(&self.name).await.map_err(|e| error_chain(&e))?;
        if let Some(ov) = &self.overlay {
            overlay::remove(ov).map_err(|e| error_chain(&e))?;
        }
        if let Some((uri, pool, vol)) = self.pool_overlay.clone() {
            tokio::task::spawn_blocking(move || storage::delete_volume(&uri, &pool, &vol))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| error_chain(&e))?;
        }
        remove_console(&self.console);
        Ok(())
    }
}

fn remove_console(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %e, "could not remove a console log");
    }
}
