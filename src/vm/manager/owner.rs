//! The owner task of the VM manager: its state, the command loop, the timer,
//! guarded state transitions and snapshots.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tracing::{info, warn};

use crate::config::{Host, Image};
use crate::hosts::Block;
use crate::libvirt::{HostHandle, HostStatus, error_chain};
use crate::store::{Store, VmRow};
use crate::vm::ports::PortAllocator;
use crate::vm::{VmError, VmState};

use super::launch::AttemptFailure;
use super::pools::PoolSlot;
use super::{Cmd, HostSnapshot, LaunchRequest, ManagerConfig, ReadyVm, Reply, Snapshot, VmSnapshot};

pub(super) struct HostSlot {
    pub(super) config: Host,
    pub(super) handle: HostHandle,
    pub(super) cooling_until: Option<Instant>,
    pub(super) block: Option<Block>,
    /// Failed launches since the last good one (from the store at start).
    pub(super) consecutive_failures: u32,
    /// Up or down as last recorded; `None` before the first look.
    pub(super) last_up: Option<bool>,
}

pub(super) struct Vm {
    pub(super) name: String,
    pub(super) run_id: String,
    pub(super) image: Image,
    pub(super) host: usize,
    pub(super) state: VmState,
    pub(super) port: u16,
    pub(super) overlay: Option<PathBuf>,
    pub(super) console: PathBuf,
    pub(super) created_at: DateTime<Utc>,
    pub(super) ready_at: Option<DateTime<Utc>>,
    pub(super) hold_until: Option<DateTime<Utc>>,
    /// The run let go of it; it goes when its hold ends.
    pub(super) released: bool,
    pub(super) error: Option<String>,
    /// The launch this VM is an attempt of, until it is ready or failed.
    pub(super) launch: Option<Pending>,
    /// Callers of `destroy` waiting for the teardown.
    pub(super) waiters: Vec<Reply<()>>,
    /// The pool volumes it boots from (hosts with an `image_pool`): kept
    /// while it lives.
    pub(super) volumes: Vec<String>,
    /// Its overlay, when that is a volume in the host's pool.
    pub(super) pool_overlay: Option<String>,
    /// Its cloud-init seed (`vm::seed`): a file beside the overlay, or on a pool
    /// host a volume of this name in the pool.
    pub(super) seed: Option<PathBuf>,
    pub(super) pool_seed: Option<String>,
    /// The host key paddock generated for it and pinned before it booted.
    pub(super) host_key: Option<ssh_key::PublicKey>,
    /// A clone of its image's ready pool, until a launch takes it.
    pub(super) pooled: Option<super::ready_pool::Pooled>,
    /// The key of the template it was restored from (a warm clone), once it is up: the
    /// templates listing counts a diskless template's clones by it.
    pub(super) template_key: Option<String>,
}

pub(super) struct Pending {
    pub(super) req: LaunchRequest,
    /// How readiness logs in, when the caller wants the session that proved it.
    pub(super) login: Option<crate::vm::login::Login>,
    pub(super) reply: Reply<ReadyVm>,
    pub(super) attempts: u32,
    pub(super) tried: HashSet<usize>,
    pub(super) seq: u64,
    pub(super) last_failure: Option<AttemptFailure>,
    /// Hosts meant for this job that could not take it were reported once.
    pub(super) missed_reported: bool,
    /// When it entered the queue, for `paddock_run_queue_wait_seconds` and priority ageing.
    pub(super) queued_at: Instant,
    /// A placement pass has looked at it (so it is not one no host could ever take).
    pub(super) checked: bool,
}

impl Pending {
    /// Tells the caller how far its launch has got.
    pub(super) fn report(&self, stage: super::LaunchStage) {
        if let Some(p) = &self.req.progress {
            let _ = p.send(stage);
        }
    }
}

pub(super) struct Owner {
    pub(super) cfg: ManagerConfig,
    pub(super) hosts: Vec<HostSlot>,
    pub(super) vms: HashMap<String, Vm>,
    pub(super) queue: Vec<Pending>,
    pub(super) seq: u64,
    pub(super) ports: PortAllocator,
    pub(super) store: Store,
    /// Weak, so that the owner stops once every `VmManager` handle (and every
    /// task it spawned) is gone.
    pub(super) tx: mpsc::WeakUnboundedSender<Cmd>,
    pub(super) reconciling: bool,
    /// Per host (index) and image name: what its `image_pool` holds.
    pub(super) pools: HashMap<(usize, String), PoolSlot>,
    /// Images seen (config and launches), re-checked for changes on a timer.
    pub(super) images: HashMap<String, Image>,
    pub(super) last_image_check: Instant,
    /// When each job last got a launch placed (a count of placements): the queue
    /// serves the least recently served job first.
    pub(super) last_served: HashMap<Option<String>, u64>,
    pub(super) placements: u64,
    /// Something changed that may let a queued launch be placed: a placement pass
    /// runs once the commands that arrived meanwhile are handled.
    pub(super) dirty: bool,
    /// Told about every VM that goes.
    pub(super) ended: tokio::sync::broadcast::Sender<super::VmEnded>,
    /// Warm-start templates (`vm::template`).
    pub(super) templates: std::sync::Arc<crate::vm::template::Templates>,
    /// Ready pools (`ready_pool.rs`).
    pub(super) ready: super::ready_pool::ReadyPools,
    /// The templates in hosts' pools as last listed (`templates.rs`).
    pub(super) listings: super::templates::Listings,
}

/// How often the owner re-checks cool-downs, expired holds and down hosts.
const TICK: Duration = Duration::from_millis(500);

/// At most this many commands are handled between two placement passes.
const BATCH: usize = 256;

impl Owner {
    pub(super) async fn run(mut self, rx: &mut mpsc::UnboundedReceiver<Cmd>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconcile = tokio::time::interval_at(Instant::now() + self.cfg.reconcile_interval, self.cfg.reconcile_interval);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None | Some(Cmd::Stop) => break,
                    Some(cmd) => {
                        self.handle(cmd).await;
                        // A burst (launches queued, VMs gone) costs one placement pass.
                        for _ in 0..BATCH {
                            match rx.try_recv() {
                                Ok(Cmd::Stop) => return,
                                Ok(cmd) => self.handle(cmd).await,
                                Err(_) => break,
                            }
                        }
                        if self.dirty {
                            self.pump().await;
                        }
                    }
                },
                _ = tick.tick() => self.on_tick().await,
                _ = reconcile.tick() => self.spawn_reconcile(None),
            }
        }
    }

    pub(super) async fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Launch { req, login, reply } => {
                self.seq += 1;
                self.remember_recipe(&req, login.as_ref());
                // Hosts to avoid count as tried: used only when no other can take it.
                let tried =
                    self.hosts.iter().enumerate().filter(|(_, h)| req.avoid_hosts.contains(&h.config.name)).map(|(i, _)| i).collect();
                self.queue.push(Pending {
                    req: *req,
                    login,
                    reply,
                    attempts: 0,
                    tried,
                    seq: self.seq,
                    last_failure: None,
                    missed_reported: false,
                    queued_at: Instant::now(),
                    checked: false,
                });
                self.dirty = true;
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
            Cmd::Snapshot { reply } => {
                // What is queued is what waits after a placement pass, never before one.
                if self.dirty {
                    self.pump().await;
                }
                drop(reply.send(self.snapshot()))
            }
            Cmd::SetBlock { host, block, reply } => {
                let _ = reply.send(self.set_block(host, block));
                self.dirty = true;
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
                if self.vms.get(&name).is_some_and(|vm| vm.state != VmState::Stopping)
                    && self.transition(&name, state).await
                    && let (VmState::Booting, Some(p)) = (state, self.vms.get(&name).and_then(|vm| vm.launch.as_ref()))
                {
                    p.report(super::LaunchStage::Booting);
                }
            }
            Cmd::AttemptDone { name, result } => self.attempt_done(name, result).await,
            Cmd::TeardownDone { name, result } => self.teardown_done(name, result).await,
            Cmd::ImageUploaded { host, image, result } => self.image_uploaded(host, image, result).await,
            Cmd::SweepDone { host, image } => self.sweep_done(host, &image),
            Cmd::UploadHung { host, image, reason } => self.upload_hung(host, image, reason).await,
            Cmd::InjectPanic => panic!("injected fault: VM manager owner"),
            // `run` ends on it before handing it here.
            Cmd::Stop => {}
            Cmd::PoolKeys { keys } => self.pool_keys_done(keys).await,
            Cmd::TemplatesListed { host, at, templates } => self.templates_listed(host, at, templates),
            Cmd::Templates { reply } => drop(reply.send(self.template_listing())),
            Cmd::DrainPool { reply } => {
                let waits = self.drain_pool().await;
                let _ = reply.send(waits);
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

    pub(super) async fn on_tick(&mut self) {
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
        self.recheck_images();
        self.check_pool_keys();
        self.watch_template_builds();
        if !self.queue.is_empty() {
            self.pump().await;
        }
        self.refill().await;
    }

    /// Changes a VM's state if the guard allows it, and persists the row.
    pub(super) async fn transition(&mut self, name: &str, next: VmState) -> bool {
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

    pub(super) async fn persist(&self, name: &str) -> Result<(), VmError> {
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

    pub(super) fn snapshot(&self) -> Snapshot {
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
                template_key: vm.template_key.clone(),
            })
            .collect();
        vms.sort_by_key(|v| v.created_at);
        Snapshot { hosts, vms, queued: self.queue.len() }
    }
}
