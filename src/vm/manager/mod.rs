//! The `VmManager`: the one owner of paddock's VMs, host usage, ports and the
//! launch queue, driven by a command channel. This file is the handle: the
//! public types, the command enum and `VmManager::start`.
//!
//! Implementation note: the owner task (`owner.rs`) never waits on libvirt or
//! a booting guest. It reserves a host and port, then spawns a task for the
//! slow part (overlay, define, start, readiness in `launch.rs`; shutdown and
//! removal in `teardown.rs`; uploads into pools in `pools.rs`) which reports
//! back through the same channel. Every state change goes through
//! `Owner::transition`, which checks the guard and persists the row. Host
//! health (blocks, windows, quarantine) is in `health.rs`, adoption of held
//! VMs and reconciliation passes in `adopt.rs`.

mod adopt;
mod health;
mod launch;
mod owner;
mod pools;
mod ready_pool;
mod teardown;
mod templates;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::config::{Fleet, Host, Image, PortRange};
use crate::hosts::Block;
use crate::libvirt::{self, HostHandle, HostStatus};
use crate::store::Store;

use super::images::PoolImage;
use super::login::{HandedSession, Login};
use super::placement::Usage;
use super::ports::PortAllocator;
use super::readiness::Readiness;
use super::reconcile::ReconcileReport;
use super::{VmError, VmState};

use launch::{AttemptFailure, Booted};
pub use launch::{LaunchError, Started};
use owner::{HostSlot, Owner};
pub use ready_pool::READY_POOL_RUN;
pub use templates::PoolListing;

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
    /// Deadlines of every host's libvirt calls.
    pub libvirt: libvirt::HostOptions,
    /// A queued launch gains one priority point per this much waiting.
    pub priority_aging: Duration,
    /// The deadline of one image file's upload into a host's pool.
    pub upload_timeout: Duration,
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
            host_cooldown: fleet.daemon.host_cooldown,
            console_tail_lines: 40,
            clock: Clock::system(),
            emulation_boot_factor: fleet.daemon.emulation_boot_factor.clone(),
            images: fleet.images.clone(),
            upload_retry: Duration::from_secs(30),
            libvirt: libvirt::HostOptions {
                call_timeout: fleet.daemon.libvirt_timeout,
                connect_timeout: fleet.daemon.libvirt_connect_timeout,
            },
            priority_aging: fleet.daemon.priority_aging,
            upload_timeout: fleet.daemon.upload_timeout,
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
    /// Higher goes first when hosts are full (raised by ageing while it waits:
    /// `ManagerConfig::priority_aging`).
    pub priority: i32,
    /// Hosts to use only when no other can take it now (a retry avoids the host
    /// its previous attempt failed on).
    pub avoid_hosts: Vec<String>,
    /// Where the launch has got to, for callers that show it (a run's state).
    pub progress: Option<mpsc::UnboundedSender<LaunchStage>>,
}

/// How far a launch has got, as reported to [`LaunchRequest::progress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchStage {
    /// Host `host` and a port were chosen; VM `vm` is being defined there.
    Placed { vm: String, host: String },
    /// The domain was started; waiting for its SSH.
    Booting,
    /// The attempt failed; the launch waits in the queue for another host.
    Requeued,
}

/// A VM of the manager is gone (torn down, for whatever reason): told to
/// [`VmManager::subscribe_ended`] subscribers, so that the run coordinator ends
/// a held run when the manager ends its VM's hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEnded {
    pub name: String,
    /// The run (or `grant-<id>`) the VM was launched for.
    pub run_id: String,
}

#[derive(Debug, Clone)]
pub struct ReadyVm {
    pub name: String,
    pub host: String,
    pub ssh_addr: SocketAddr,
    pub host_key_from_console: Option<ssh_key::PublicKey>,
    /// The host key paddock generated for this VM and pinned before it booted
    /// (images with a per-VM identity).
    pub pinned_host_key: Option<ssh_key::PublicKey>,
    pub console_path: PathBuf,
    /// From `start` to the SSH banner, or to the login for a launch that gave one (or the
    /// domain running).
    pub boot_time: Duration,
    /// The session that proved it ready, for launches with a login (`launch_logged_in`).
    pub session: Option<HandedSession>,
    /// Booted cold, restored warm from the image's template, or cold after a failed restore.
    pub started: Started,
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
    /// The key of the template a warm clone was restored from.
    pub template_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub hosts: Vec<HostSnapshot>,
    pub vms: Vec<VmSnapshot>,
    /// Launches waiting for room.
    pub queued: usize,
}

type Reply<T> = oneshot::Sender<Result<T, VmError>>;

/// What [`VmManager::shutdown`] did with the ready pools' clones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drained {
    /// Clones torn down.
    pub removed: Vec<String>,
    /// Clones whose removal failed or did not end in time (the next start reaps them).
    pub left: Vec<String>,
}

enum Cmd {
    Launch {
        /// Boxed: a request carries a whole `Image`.
        req: Box<LaunchRequest>,
        login: Option<Login>,
        reply: Reply<ReadyVm>,
    },
    Hold {
        name: String,
        until: DateTime<Utc>,
        reply: Reply<()>,
    },
    Release {
        name: String,
        reply: Reply<()>,
    },
    Destroy {
        name: String,
        reply: Reply<()>,
    },
    Snapshot {
        reply: oneshot::Sender<Snapshot>,
    },
    SetBlock {
        host: String,
        block: Option<Block>,
        reply: Reply<()>,
    },
    ReconcileNow {
        reply: oneshot::Sender<ReconcileReport>,
    },
    Running {
        name: String,
        reply: Reply<bool>,
    },
    // Reports from spawned tasks.
    Progress {
        name: String,
        state: VmState,
    },
    /// Boxed: a failure carries a libvirt error and is much larger than the other commands.
    AttemptDone {
        name: String,
        result: Result<Booted, Box<AttemptFailure>>,
    },
    TeardownDone {
        name: String,
        result: Result<(), String>,
    },
    ReconcileDone {
        report: ReconcileReport,
        reply: Option<oneshot::Sender<ReconcileReport>>,
    },
    ImageUploaded {
        host: usize,
        image: String,
        result: Result<PoolImage, String>,
    },
    SweepDone {
        host: usize,
        image: String,
    },
    /// The template keys of pooled images, recomputed (`ready_pool.rs`).
    PoolKeys {
        keys: Vec<(String, String)>,
    },
    /// An upload missed `upload_timeout` (it still runs; `ImageUploaded` follows when it returns).
    UploadHung {
        host: usize,
        image: String,
        reason: String,
    },
    /// Fault injection for the supervisor's test: the owner panics, as a bug would.
    InjectPanic,
    /// The owner ends (`VmManager::stop`); the loop acts on it before `Owner::handle`.
    Stop,
    /// A pool host's templates were listed (`templates.rs`).
    TemplatesListed {
        host: usize,
        at: DateTime<Utc>,
        templates: Result<Vec<super::template::pool::Surveyed>, String>,
    },
    /// Every pool host's last templates listing.
    Templates {
        reply: oneshot::Sender<Vec<PoolListing>>,
    },
    /// The daemon stops: idle ready-pool clones go (`VmManager::shutdown`).
    DrainPool {
        reply: oneshot::Sender<Vec<ready_pool::Going>>,
    },
}

/// A handle to the manager; cheap to clone. The owner task ends when every handle is dropped.
#[derive(Clone)]
pub struct VmManager {
    tx: mpsc::UnboundedSender<Cmd>,
    ended: broadcast::Sender<VmEnded>,
    /// Every host's libvirt handle, for the persistent machines' calls (`crate::machines`),
    /// which go through the same actor (and deadline) as the owner's.
    handles: std::sync::Arc<Vec<HostHandle>>,
    health: crate::supervisor::Health,
}

/// What a new owner is made of: kept by the supervisor across restarts.
#[derive(Clone)]
struct Parts {
    cfg: ManagerConfig,
    hosts: Vec<(Host, HostHandle)>,
    store: Store,
    tx: mpsc::WeakUnboundedSender<Cmd>,
    ended: broadcast::Sender<VmEnded>,
    templates: std::sync::Arc<super::template::Templates>,
}

impl Parts {
    /// An owner with its hosts (blocks and failure counts from the store), the VMs it
    /// adopts, and one reconciliation pass done; `in_process` after an owner of this
    /// process failed (see `Owner::adopt`).
    async fn owner(&self, in_process: bool) -> Result<Owner, VmError> {
        let mut owner = Owner {
            ports: PortAllocator::new(self.cfg.ssh_ports),
            cfg: self.cfg.clone(),
            hosts: Vec::with_capacity(self.hosts.len()),
            vms: HashMap::new(),
            queue: Vec::new(),
            seq: 0,
            store: self.store.clone(),
            tx: self.tx.clone(),
            reconciling: false,
            pools: HashMap::new(),
            images: HashMap::new(),
            last_image_check: Instant::now(),
            last_served: HashMap::new(),
            placements: 0,
            dirty: false,
            ended: self.ended.clone(),
            templates: self.templates.clone(),
            ready: Default::default(),
            listings: Default::default(),
        };
        let blocks = self.store.host_blocks().await?;
        for (config, handle) in self.hosts.iter().cloned() {
            let block = blocks.iter().find(|(n, _)| *n == config.name).map(|(_, b)| b.clone());
            if let Some(b) = &block {
                info!(host = %config.name, kind = b.kind(), reason = %b.reason(), "host is blocked from before the restart");
            }
            let consecutive_failures = self.store.host_health(&config.name).await?.consecutive_failures;
            owner.hosts.push(HostSlot { config, handle, cooling_until: None, block, consecutive_failures, last_up: None });
        }
        owner.adopt(in_process).await?;
        let report = owner.reconcile_pass().await;
        owner.finish_reconcile(&report).await;
        Ok(owner)
    }
}

impl VmManager {
    /// Connects to every host, adopts held VMs the store remembers, reaps
    /// everything else of this instance (the start-up reconciliation) and
    /// starts the owner task.
    pub async fn start(cfg: ManagerConfig, hosts: Vec<Host>, store: Store) -> Result<VmManager, VmError> {
        let handles: Vec<HostHandle> = hosts.iter().map(|h| HostHandle::spawn_with(&h.name, &h.uri, cfg.libvirt)).collect();
        // All hosts at once: one that does not answer costs its connect deadline, not everyone's.
        let mut connecting = tokio::task::JoinSet::new();
        for (h, handle) in hosts.iter().cloned().zip(handles.iter().cloned()) {
            connecting.spawn(async move {
                if let HostStatus::Up(facts) = handle.wait_connected().await {
                    for w in libvirt::check_host(&h, &facts, &[]) {
                        warn!(host = %h.name, "{w}");
                    }
                }
            });
        }
        while connecting.join_next().await.is_some() {}
        let (tx, rx) = mpsc::unbounded_channel();
        let (ended, _) = broadcast::channel(256);
        let state_dir = cfg.state_dir.clone();
        let parts = Parts {
            cfg,
            hosts: hosts.into_iter().zip(handles.iter().cloned()).collect(),
            store,
            tx: tx.downgrade(),
            ended: ended.clone(),
            templates: std::sync::Arc::new(super::template::Templates::with_checksums(crate::checksums::Checksums::in_state_dir(
                &state_dir,
            ))),
        };
        let mut owner = parts.owner(false).await?;
        // A template build a crash cut short left a folder without its manifest (its
        // domain, marked with this instance, went with the pass above).
        for dir in super::template::remove_unfinished(&owner.cfg.state_dir) {
            info!(template = %dir.display(), "unfinished warm-start template removed");
        }
        for image in owner.cfg.images.clone() {
            owner.distribute(&image);
        }
        let health = crate::supervisor::Health::default();
        // A new owner after a panic is made from the store (`Parts::owner` after a failure: ready
        // VMs adopted, what was mid-launch or mid-teardown reaped by the pass) on the same command
        // channel. Launches the failed owner had queued or was booting are sent again by their
        // callers (`VmManager::launch`).
        let rebuild = move || {
            let parts = parts.clone();
            async move {
                let mut o = parts.owner(true).await?;
                for image in o.cfg.images.clone() {
                    o.distribute(&image);
                }
                Ok::<_, VmError>(o)
            }
        };
        let run = |o: Owner, mut rx: tokio::sync::OwnedMutexGuard<_>| async move { o.run(&mut rx).await };
        tokio::spawn(crate::supervisor::supervise("vm-manager", health.clone(), rx, owner, run, rebuild));
        Ok(VmManager { tx, ended, handles: std::sync::Arc::new(handles), health })
    }

    /// How the owner has fared: restarts after failures, and the last failure.
    pub fn health(&self) -> crate::supervisor::Health {
        self.health.clone()
    }

    /// Ends the owner task, as a daemon that stops must (`Daemon::stop`): no launch, teardown
    /// or reconciliation pass after it, and every VM stays as it is, for the next start of this
    /// instance to adopt or reap. Without it an owner lives while any handle does (a stopped
    /// daemon's executor holds one), and its reconciliation passes would reap the VMs of the
    /// next daemon of the same instance, which it does not know of.
    pub fn stop(&self) {
        let _ = self.tx.send(Cmd::Stop);
    }

    /// Stops as a daemon that ends for good should: first the ready pools' clones go on every
    /// host (`Owner::drain_pool`: no refill from now on; each idle clone's domain destroyed and
    /// undefined, its overlay and console removed; one being restored once its restore ends),
    /// waited for within `limit` (each libvirt and storage call has its own deadline too), then
    /// the owner ends as with [`VmManager::stop`]. Runs' VMs, held VMs and persistent machines
    /// stay, for the next start to adopt or reap. A clone that could not be removed in time is
    /// named in the log and in the result; the next start reaps it.
    pub async fn shutdown(&self, limit: Duration) -> Drained {
        let mut drained = Drained::default();
        let waits = match tokio::time::timeout(limit, self.ask(|reply| Cmd::DrainPool { reply })).await {
            Ok(Ok(w)) => w,
            _ => {
                warn!("the VM manager did not answer the shutdown; its ready-pool clones are left for the next start");
                self.stop();
                return drained;
            }
        };
        let deadline = Instant::now() + limit;
        for (name, gone) in waits {
            match tokio::time::timeout_at(deadline, gone).await {
                Ok(Ok(Ok(()))) => drained.removed.push(name),
                Ok(Ok(Err(e))) => {
                    warn!(vm = %name, error = %crate::error::chain(&e), "a ready-pool clone could not be removed at shutdown; the next start reaps it");
                    drained.left.push(name);
                }
                Ok(Err(_)) | Err(_) => {
                    warn!(vm = %name, limit_s = limit.as_secs(), "a ready-pool clone was not removed in time at shutdown; the next start reaps it");
                    drained.left.push(name);
                }
            }
        }
        if !drained.removed.is_empty() {
            info!(removed = drained.removed.len(), "ready-pool clones removed at shutdown");
        }
        self.stop();
        drained
    }

    /// Fault injection: makes the owner task panic, as a bug in it would. The supervisor's
    /// test calls it; no endpoint does.
    pub fn inject_owner_panic(&self) {
        let _ = self.tx.send(Cmd::InjectPanic);
    }

    fn restarts(&self) -> u64 {
        self.health.lock().unwrap_or_else(|e| e.into_inner()).restarts
    }

    /// Whether the owner failed (and was restarted) since it had `before` restarts. A failing
    /// owner drops its replies while it unwinds, a moment before the supervisor counts the
    /// restart: wait a little for the count.
    async fn restarted_since(&self, before: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if self.restarts() > before {
                return true;
            }
            if self.tx.is_closed() || Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a launch; when the owner failed before answering it (the reply was dropped and
    /// a restart counted), sends it again to the new owner, telling the caller it is queued.
    async fn launch_surviving(&self, req: LaunchRequest, login: Option<Login>) -> Result<ReadyVm, VmError> {
        loop {
            let before = self.restarts();
            let (reply, rx) = oneshot::channel();
            let cmd = Cmd::Launch { req: Box::new(req.clone()), login: login.clone(), reply };
            self.tx.send(cmd).map_err(|_| VmError::ManagerGone)?;
            match rx.await {
                Ok(r) => return r,
                Err(_) if self.restarted_since(before).await => {
                    warn!(run_id = %req.run_id, "the VM manager failed before the launch was answered; launching again");
                    if let Some(p) = &req.progress {
                        let _ = p.send(LaunchStage::Requeued);
                    }
                }
                Err(_) => return Err(VmError::ManagerGone),
            }
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, VmError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| VmError::ManagerGone)?;
        rx.await.map_err(|_| VmError::ManagerGone)
    }

    /// Boots a VM for `req` and returns when its SSH answers. Waits in the
    /// queue while no host has room.
    pub async fn launch(&self, req: LaunchRequest) -> Result<ReadyVm, VmError> {
        self.launch_surviving(req, None).await
    }

    /// As `launch`, but readiness is a login with `login` (where the host key is known before
    /// the guest answers), and the session that proved the VM ready comes back in
    /// `ReadyVm::session`: one SSH handshake from banner to first step.
    pub async fn launch_logged_in(&self, req: LaunchRequest, login: Login) -> Result<ReadyVm, VmError> {
        self.launch_surviving(req, Some(login)).await
    }

    /// Every VM that goes from now on, as it goes.
    pub fn subscribe_ended(&self) -> broadcast::Receiver<VmEnded> {
        self.ended.subscribe()
    }

    /// Keeps a ready VM past its release until `until` (replacing an earlier
    /// hold). The holders (a failed run, the grants on it) agree on the latest
    /// of their ends; the manager alone tears the VM down when that passes.
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

    /// The templates in every pool host's pool as the owner last listed them (on its
    /// reconciliation passes, and as templates and clones come and go): no host is asked.
    pub async fn pool_templates(&self) -> Result<Vec<PoolListing>, VmError> {
        self.ask(|reply| Cmd::Templates { reply }).await
    }

    pub async fn reconcile_now(&self) -> Result<ReconcileReport, VmError> {
        self.ask(|reply| Cmd::ReconcileNow { reply }).await
    }

    /// Whether the VM's domain still runs on its host, asked of libvirt now. `false`
    /// when the domain is gone or shut off behind paddock's back; an error when the
    /// host cannot be asked (down, reconnecting), which says nothing about the guest.
    /// Every host's libvirt handle (persistent machines use them; they hold no VM state).
    pub fn host_handles(&self) -> &[HostHandle] {
        &self.handles
    }

    pub async fn is_running(&self, name: &str) -> Result<bool, VmError> {
        self.ask(|reply| Cmd::Running { name: name.into(), reply }).await?
    }
}
