//! Ready pools (issue 18, `min_ready` per image, `[[hosts]] ready` per host and image):
//! restored clones kept idle on each host, logged in, so a launch of that image takes one at
//! once: no restore and no SSH handshake between the trigger and its first step. On a host
//! with an `image_pool` a clone is restored from the template in that pool and its overlay is
//! a volume there (`launch/warm/pool.rs`), exactly as a clone restored for a run; a kernel
//! image keeps no clones on such a host (its template is in the state dir only).
//!
//! A pool clone is an ordinary VM of the owner (`Vm::pooled` says it is one): it counts
//! against its host's capacity like any other, is torn down like any other, and after a
//! crash it is reaped by the start-up reconciliation (its store row names the run
//! [`READY_POOL_RUN`], which is never held, so nothing adopts it). The pool of an image
//! fills only once a launch of that image has shown how its VMs are logged into
//! ([`Recipe`]: the authorized keys, CA and login the executor uses), and only while no
//! launch waits in the queue; an idle clone is given up when a queued launch of another
//! image needs its room, and replaced when the image's template key changes.
//!
//! Identity is given at refill, not at take: the clone gets its own host key, principal,
//! hostname, machine-id, clock and a reseeded RNG through the guest agent right after its
//! restore (`launch/warm.rs`), exactly as a clone restored for a run does. That identity is
//! the VM's, and a VM serves one run only, so doing it again at take would change nothing
//! a run can observe except time; the clock of an idle clone runs on like any running
//! guest's (it was set at restore). Doing it at take would put the guest-agent round trips
//! and an sshd restart back on the hot path that the pool exists to empty.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{Image, Start};
use crate::libvirt::error_chain;
use crate::vm::VmState;
use crate::vm::login::{HandedSession, Login};
use crate::vm::placement::{self, Placement, Usage};
use crate::vm::template::KeyInputs;

use super::owner::{Owner, Pending};
use super::{Cmd, LaunchRequest, LaunchStage, ReadyVm, Started};

/// A pool clone being torn down at shutdown, and what answers once it is gone.
pub(super) type Going = (String, tokio::sync::oneshot::Receiver<Result<(), crate::vm::VmError>>);

/// The run id a pool clone's row carries until a launch takes it.
pub const READY_POOL_RUN: &str = "ready-pool";

/// How often the templates' keys of pooled images are recomputed (a changed image file
/// changes the key: idle clones of the old template are then replaced).
const KEY_CHECK: Duration = Duration::from_secs(10);

/// How long a host is not refilled for an image after a refill there failed.
const REFILL_BACKOFF: Duration = Duration::from_secs(60);

/// How a launch of an image logs into its VMs, learned from the last such launch: a pool
/// clone is made the same way, and is taken only by a launch that would have made it so.
#[derive(Clone)]
pub(super) struct Recipe {
    authorized_keys: Vec<String>,
    ca_key: Option<String>,
    login: Login,
}

impl Recipe {
    fn matches(&self, req: &LaunchRequest, login: Option<&Login>) -> bool {
        self.authorized_keys == req.authorized_keys && self.ca_key == req.ca_key && login.is_some_and(|l| l.user == self.login.user)
    }
}

/// What a pool clone is doing.
pub(super) enum Pooled {
    /// Being restored for the pool.
    Filling { recipe: Recipe },
    /// Ready and waiting for a launch to take it.
    Idle {
        recipe: Recipe,
        session: Option<HandedSession>,
        boot_time: Duration,
        /// The template key it was restored from.
        template_key: Option<String>,
    },
}

/// The owner's ready-pool bookkeeping.
#[derive(Default)]
pub(super) struct ReadyPools {
    recipes: HashMap<String, Recipe>,
    /// The current template key per image, as last computed.
    keys: HashMap<String, String>,
    last_key_check: Option<Instant>,
    checking: bool,
    /// (host, image) not refilled before this, after a failed refill.
    backoff: HashMap<(usize, String), Instant>,
    /// The daemon is stopping (`drain_pool`): no refill, and a clone whose restore ends now
    /// is torn down instead of kept idle.
    closed: bool,
}

impl Owner {
    /// A launch of a pooled image shows how its pool clones are made.
    pub(super) fn remember_recipe(&mut self, req: &LaunchRequest, login: Option<&Login>) {
        if req.image.start != Start::Warm || !self.hosts.iter().any(|h| req.image.min_ready_on(&h.config) > 0) {
            return;
        }
        let Some(login) = login else { return };
        let recipe = Recipe { authorized_keys: req.authorized_keys.clone(), ca_key: req.ca_key.clone(), login: login.clone() };
        self.ready.recipes.insert(req.image.name.clone(), recipe);
        self.dirty = true;
    }

    /// Hands `pending` an idle pool clone of its image, if one fits it; gives `pending` back
    /// otherwise.
    pub(super) async fn take_ready(&mut self, pending: Pending) -> Result<(), Pending> {
        // No pool has filled yet: nothing to look through (a placement pass over a long queue
        // pays nothing for pools it does not have).
        if self.ready.recipes.is_empty() {
            return Err(pending);
        }
        let req = &pending.req;
        let wall = self.cfg.clock.now();
        let found = self
            .vms
            .values()
            .filter(|vm| vm.state == VmState::Ready && vm.image == req.image)
            .filter(|vm| matches!(&vm.pooled, Some(Pooled::Idle { recipe, .. }) if recipe.matches(req, pending.login.as_ref())))
            .filter(|vm| {
                let slot = &self.hosts[vm.host];
                !pending.tried.contains(&vm.host)
                    && slot.block.is_none()
                    && slot.config.limits.allows_job(req.job.as_deref())
                    && slot.config.limits.allows_image(&req.image.name)
                    && slot.config.limits.open_at(wall)
            })
            .min_by_key(|vm| vm.ready_at)
            .map(|vm| vm.name.clone());
        let Some(name) = found else { return Err(pending) };
        let vm = self.vms.get_mut(&name).expect("found above");
        let Some(Pooled::Idle { session, boot_time, .. }) = vm.pooled.take() else { unreachable!("filtered on Idle") };
        vm.run_id = pending.req.run_id.clone();
        // The session from the refill is handed over if it is still open; "banner → first
        // byte" counts from the take (no banner is on this run's path).
        let session = session.and_then(|h| h.take()).filter(|s| !s.is_closed()).map(|s| HandedSession::new(s, Utc::now()));
        let slot = &self.hosts[vm.host];
        let ready = ReadyVm {
            name: name.clone(),
            host: slot.config.name.clone(),
            ssh_addr: std::net::SocketAddr::new(slot.config.address, vm.port),
            host_key_from_console: None,
            pinned_host_key: vm.host_key.clone(),
            console_path: vm.console.clone(),
            boot_time,
            session,
            started: Started::ReadyPool,
        };
        info!(vm = %name, run_id = %pending.req.run_id, host = %ready.host, "launch took a ready-pool clone");
        if let Err(e) = self.persist(&name).await {
            warn!(vm = %name, error = %error_chain(&e), "could not persist a taken pool clone");
        }
        if pending.attempts == 0 {
            crate::metrics::queue_waited(pending.queued_at.elapsed().as_secs_f64());
        }
        self.placements += 1;
        self.last_served.insert(pending.req.job.clone(), self.placements);
        pending.report(LaunchStage::Placed { vm: name.clone(), host: ready.host.clone() });
        pending.report(LaunchStage::Booting);
        if pending.reply.send(Ok(ready)).is_err() {
            self.teardown(&name).await;
        }
        // The pool is one short now.
        self.dirty = true;
        Ok(())
    }

    /// Whether some pool clone is idle (its room can be given up).
    pub(super) fn any_idle_pooled(&self) -> bool {
        !self.ready.recipes.is_empty()
            && self.vms.values().any(|vm| vm.state == VmState::Ready && matches!(vm.pooled, Some(Pooled::Idle { .. })))
    }

    /// Tears down one idle pool clone whose room would let `pending` be placed. True when
    /// one goes (the launch is placed once it is gone).
    pub(super) async fn give_up_idle_for(&mut self, pending: &Pending, used: &[Usage]) -> bool {
        let idle: Vec<(String, usize, Image)> = self
            .vms
            .values()
            .filter(|vm| vm.state == VmState::Ready && matches!(vm.pooled, Some(Pooled::Idle { .. })))
            .map(|vm| (vm.name.clone(), vm.host, vm.image.clone()))
            .collect();
        for (name, host, image) in idle {
            let mut freed = used.to_vec();
            freed[host].remove(&image);
            let views = self.views(&pending.req, &pending.tried, &freed);
            if placement::place(&pending.req.image, &views) == Placement::Host(host) {
                info!(vm = %name, image = %image.name, for_image = %pending.req.image.name, "ready-pool clone given up for a waiting launch");
                self.teardown(&name).await;
                return true;
            }
        }
        false
    }

    /// Starts restoring clones where a pooled image's pool on a host is short. Never
    /// while a launch waits for room, and only within the host's capacity.
    pub(super) async fn refill(&mut self) {
        if !self.queue.is_empty() || self.ready.recipes.is_empty() || self.ready.closed {
            return;
        }
        let images: Vec<Image> = self
            .images
            .values()
            .filter(|i| i.start == Start::Warm && self.hosts.iter().any(|h| i.min_ready_on(&h.config) > 0))
            .cloned()
            .collect();
        for image in images {
            let Some(recipe) = self.ready.recipes.get(&image.name).cloned() else { continue };
            // A new template key is known before clones of the old one are refilled.
            if self.ready.checking && !self.ready.keys.contains_key(&image.name) {
                continue;
            }
            // A pool host restores clones from the template in its pool, on the image's
            // current volumes there: an image changed since is put there first (placement
            // waits until it is).
            if self.hosts.iter().any(|h| h.config.image_pool.is_some()) {
                self.distribute(&image);
            }
            for host in 0..self.hosts.len() {
                // The test driver restores nothing; a kernel image's template is local only
                // (`may_start_warm`), so a pool host keeps no clones of it.
                let kernel = !matches!(image.boot, crate::config::Boot::Disk { .. });
                if self.hosts[host].config.uri.starts_with("test:") || (kernel && self.hosts[host].config.image_pool.is_some()) {
                    continue;
                }
                if self.ready.backoff.get(&(host, image.name.clone())).is_some_and(|t| *t > Instant::now()) {
                    continue;
                }
                let have = self
                    .vms
                    .values()
                    .filter(|vm| vm.host == host && vm.image == image && vm.pooled.is_some() && vm.state != VmState::Stopping)
                    .count() as u32;
                // The host's own `ready` entry for the image, else the image's `min_ready`.
                for _ in have..image.min_ready_on(&self.hosts[host].config) {
                    let (reply, _) = tokio::sync::oneshot::channel();
                    let req = LaunchRequest {
                        run_id: READY_POOL_RUN.into(),
                        job: None,
                        image: image.clone(),
                        authorized_keys: recipe.authorized_keys.clone(),
                        ca_key: recipe.ca_key.clone(),
                        priority: 0,
                        avoid_hosts: Vec::new(),
                        progress: None,
                    };
                    let pending = Pending {
                        req,
                        login: Some(recipe.login.clone()),
                        reply,
                        attempts: 0,
                        tried: Default::default(),
                        seq: 0,
                        last_failure: None,
                        missed_reported: false,
                        queued_at: Instant::now(),
                        checked: true,
                    };
                    // Only this host: every other one is made unavailable for the check.
                    let used = self.usage();
                    let mut views = self.views(&pending.req, &pending.tried, &used);
                    for (i, v) in views.iter_mut().enumerate() {
                        v.available &= i == host;
                    }
                    if placement::place(&image, &views) != Placement::Host(host) {
                        break;
                    }
                    let Some(port) = self.allocate_port(host) else { break };
                    info!(image = %image.name, host = %self.hosts[host].config.name, "refilling the ready pool");
                    if let Some(name) = self.start_attempt(pending, host, port).await
                        && let Some(vm) = self.vms.get_mut(&name)
                    {
                        vm.pooled = Some(Pooled::Filling { recipe: recipe.clone() });
                    }
                }
            }
        }
    }

    /// A pool clone's restore ended. `Ok` with its session when it came up warm.
    pub(super) async fn pool_attempt_done(&mut self, name: &str, result: Result<super::launch::Booted, String>) {
        let Some(vm) = self.vms.get_mut(name) else { return };
        let stopping = vm.state == VmState::Stopping;
        let recipe = match vm.pooled.take() {
            Some(Pooled::Filling { recipe }) => recipe,
            other => {
                vm.pooled = other;
                return;
            }
        };
        let (host, image) = (vm.host, vm.image.name.clone());
        match result {
            Ok(_) if stopping => {}
            Ok(booted) if booted.started == Started::Warm => {
                let stale = booted.template_key.as_ref().is_some_and(|k| self.ready.keys.get(&image).is_some_and(|cur| cur != k));
                vm.template_key = booted.template_key.clone();
                vm.pooled =
                    Some(Pooled::Idle { recipe, session: booted.session, boot_time: booted.boot_time, template_key: booted.template_key });
                info!(vm = %name, image = %image, host = %self.hosts[host].config.name, "ready-pool clone idle");
                crate::metrics::boot_ready(&image, booted.boot_time.as_secs_f64());
                self.transition(name, VmState::Ready).await;
                if let Some(key) = self.vms.get(name).and_then(|vm| vm.template_key.clone()) {
                    self.clone_restored(host, &key);
                }
                if stale || self.ready.closed {
                    self.teardown(name).await;
                }
            }
            Ok(_) | Err(_) => {
                let why = match &result {
                    Err(e) => e.clone(),
                    Ok(_) => "it came up cold".into(),
                };
                warn!(vm = %name, image = %image, error = %why, "ready-pool refill failed");
                let _ = self.store.record_event("ready_pool_refill_failed", name, &why).await;
                self.ready.backoff.insert((host, image), Instant::now() + REFILL_BACKOFF);
                self.transition(name, VmState::Failed).await;
                self.teardown(name).await;
            }
        }
        self.dirty = true;
    }

    /// Recomputes the template keys of pooled images off the owner task, every `KEY_CHECK`.
    pub(super) fn check_pool_keys(&mut self) {
        if self.ready.checking || self.ready.recipes.is_empty() || self.ready.last_key_check.is_some_and(|t| t.elapsed() < KEY_CHECK) {
            return;
        }
        let Some(tx) = self.tx.upgrade() else { return };
        self.ready.checking = true;
        self.ready.last_key_check = Some(Instant::now());
        let jobs: Vec<(Image, Recipe)> =
            self.ready.recipes.iter().filter_map(|(name, r)| self.images.get(name).map(|i| (i.clone(), r.clone()))).collect();
        let templates = self.templates.clone();
        tokio::task::spawn_blocking(move || {
            let keys = jobs
                .iter()
                .filter_map(|(image, r)| {
                    let inputs = KeyInputs { image, authorized_keys: &r.authorized_keys, ca_key: r.ca_key.as_deref() };
                    templates.key(&inputs).ok().map(|k| (image.name.clone(), k))
                })
                .collect();
            let _ = tx.send(Cmd::PoolKeys { keys });
        });
    }

    /// New template keys: idle clones of another key are replaced.
    pub(super) async fn pool_keys_done(&mut self, keys: Vec<(String, String)>) {
        self.ready.checking = false;
        for (image, key) in keys {
            self.ready.keys.insert(image, key);
        }
        let stale: Vec<String> = self
            .vms
            .values()
            .filter(|vm| vm.state == VmState::Ready)
            .filter(|vm| match &vm.pooled {
                Some(Pooled::Idle { template_key: Some(k), .. }) => self.ready.keys.get(&vm.image.name).is_some_and(|cur| cur != k),
                _ => false,
            })
            .map(|vm| vm.name.clone())
            .collect();
        for name in stale {
            info!(vm = %name, "ready-pool clone of a superseded template torn down");
            self.teardown(&name).await;
        }
        self.dirty = true;
    }

    /// The daemon stops (`VmManager::shutdown`): the pools refill no more and every clone of
    /// them goes — an idle one now (its domain destroyed and undefined, its overlay file or
    /// volume and console removed, so its port forward closes with its passt), one still
    /// being restored as soon as its restore ends (`pool_attempt_done`), one already being
    /// torn down as it is. A clone a launch took is a run's VM from then on (`take_ready`
    /// renames its run in this same owner, so no drain races a take) and stays, as held VMs
    /// do. Returns, per clone, a receiver that answers once it is gone (or its removal failed).
    pub(super) async fn drain_pool(&mut self) -> Vec<Going> {
        self.ready.closed = true;
        let clones: Vec<String> = self.vms.values().filter(|vm| vm.run_id == READY_POOL_RUN).map(|vm| vm.name.clone()).collect();
        let mut out = Vec::with_capacity(clones.len());
        for name in clones {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let Some(vm) = self.vms.get_mut(&name) else { continue };
            vm.waiters.push(tx);
            // A restore under way has its attempt task still working on the domain: it is
            // torn down when that ends, never under it.
            let restoring = matches!(vm.pooled, Some(Pooled::Filling { .. }));
            if !restoring && vm.state.can_stop() && vm.state != VmState::Stopping {
                info!(vm = %name, "ready-pool clone torn down: the daemon stops");
                self.teardown(&name).await;
            }
            out.push((name, rx));
        }
        out
    }
}
