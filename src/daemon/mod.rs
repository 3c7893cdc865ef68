//! `paddock serve`: wires the store, VM manager, run coordinator, scheduler,
//! forwarder, embedded recorder and HTTP server together, and shuts them down
//! in order.

mod recorder_auth;
mod reload;
mod run_dirs;
mod state_dir;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::access::machines::VmMachines;
use crate::access::{Access, AccessConfig, FleetCa};
use crate::api::{ApiState, HostStatus};
use crate::clock::Clock;
use crate::config::{Fleet, FleetUpdater};
use crate::outbox::{Backoff, Destination, Forwarder};
use crate::recorder::{Recorder, RecorderConfig};
use crate::runs::{Coordinator, Executor, ExecutorConfig, RunsHandle, Trigger};
use crate::ssh::ClientKey;
use crate::store::{Store, StoreError};
use crate::vm::readiness::Readiness;
use crate::vm::{ManagerConfig, VmManager};

pub use reload::{ReloadError, Reloaded};
pub use state_dir::{StateDir, StateDirError};

/// The API and the dashboard together: what the daemon serves (the recorder is
/// nested under `/recorder` beside them). Composed here so that `api` and
/// `dashboard` depend one way: the dashboard on the API.
pub fn app(state: crate::api::Shared) -> axum::Router {
    crate::api::router(state.clone()).merge(crate::dashboard::router(state))
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("preparing the state directory")]
    StateDir(#[from] StateDirError),
    #[error("opening the store")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("building the HTTP client for recorders")]
    HttpClient(#[source] reqwest::Error),
    #[error("recovering runs left by the previous daemon")]
    Recover(#[source] crate::runs::RunsError),
    #[error("opening the embedded recorder")]
    Recorder(#[source] crate::recorder::RecorderError),
    #[error("starting the VM manager")]
    Vms(#[source] crate::vm::VmError),
    #[error("loading the daemon's SSH key")]
    Key(#[source] crate::ssh::KeyError),
    #[error("loading the fleet CA")]
    Ca(#[source] crate::access::CaError),
    #[error("starting the access service")]
    Access(#[source] crate::access::AccessError),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// Options of one daemon process that are not in `fleet.toml`.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Overrides `daemon.listen` (tests use port 0).
    pub listen: Option<SocketAddr>,
    /// Trigger every job once at start (the README's demo).
    pub demo: bool,
}

/// A running daemon: where it listens and how to reach its parts.
pub struct Daemon {
    pub addr: SocketAddr,
    pub runs: RunsHandle,
    pub store: Store,
    pub recorder: Recorder,
    pub vms: VmManager,
    fleet: FleetUpdater,
    schedules: reload::Schedules,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), std::io::Error>>,
}

impl Daemon {
    /// Starts everything and returns once the HTTP server is listening.
    pub async fn start(fleet: Fleet, options: ServeOptions) -> Result<Daemon, DaemonError> {
        let fleet = Arc::new(fleet);
        // Whatever the daemon writes from now on (store, logs, keys) is its own: 0600 / 0700.
        // libvirt and QEMU write overlays and consoles themselves, under their own umask.
        // SAFETY: umask only sets the process's file creation mask; it cannot fail.
        unsafe { libc::umask(0o077) };
        // Before anything records a metric (recovery, the VM manager's start).
        crate::metrics::install();
        // Parts that follow reloads read `live`; parts built from sections only a
        // restart changes (hosts, images, users, recorders, access) keep `fleet`.
        let (updater, live) = crate::config::live(fleet.clone());
        let dirs = StateDir::prepare(&fleet.daemon.state_dir)?;
        let store = Store::open(&dirs.db_path()).await?;
        info!(state_dir = %dirs.root().display(), instance = %dirs.instance_id(), "paddock starting");
        let (shutdown, shutdown_rx) = watch::channel(false);

        rustls::crypto::ring::default_provider().install_default().ok();
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().map_err(DaemonError::HttpClient)?;
        let recorder = Recorder::open(
            &dirs.recorder_db_path(),
            RecorderConfig {
                base_path: "/recorder".into(),
                // Submissions need a daemon API token (maintainer or admin); the daemon's own
                // results go in-process (`Destination::Embedded`), never over HTTP.
                authenticator: Some(Arc::new(recorder_auth::ApiTokens { store: store.clone(), fleet: fleet.clone() })),
                private_reads: !fleet.daemon.public_reads,
                body_limit: fleet.limits.result_body_bytes,
                max_steps: fleet.limits.result_steps,
                max_tags: fleet.limits.result_tags,
                retention: fleet.retention.map(|r| crate::recorder::Retention {
                    keep_last: r.keep_last,
                    max_age: r.max_age,
                    failure_max_age: r.failure_max_age,
                    every: r.every,
                }),
                ..RecorderConfig::default()
            },
        )
        .await
        .map_err(DaemonError::Recorder)?;
        let destinations = fleet
            .recorders
            .iter()
            .map(|r| {
                let dest = match &r.target {
                    crate::config::RecorderTarget::Embedded => Destination::Embedded(recorder.clone()),
                    crate::config::RecorderTarget::Paddock { url, token } => {
                        Destination::Paddock { client: http.clone(), url: url.clone(), token: token.clone() }
                    }
                    crate::config::RecorderTarget::PonyBuild { url } => Destination::PonyBuild { client: http.clone(), url: url.clone() },
                };
                (r.name.clone(), dest)
            })
            .collect();
        let forwarder = Forwarder::new(store.clone(), destinations, Backoff::default(), Clock::system()).with_artifacts_from(dirs.logs());
        let waker = forwarder.waker();
        let forwarder_health = forwarder.health();
        let recorder_names: Vec<String> = forwarder_names(&fleet);
        forwarder.spawn(shutdown_rx.clone());
        recorder.spawn_retention(shutdown_rx.clone());
        if let Some(policy) = fleet.retention {
            run_dirs::spawn(store.clone(), dirs.logs(), policy, Clock::system(), shutdown_rx.clone());
        }

        // Local hosts' console files are written by QEMU or virtlogd without back-pressure.
        crate::vm::console_cap::ConsoleCap::new(dirs.consoles(), fleet.limits.console_bytes).spawn(shutdown_rx.clone());
        // The VM manager reaps whatever a previous daemon of this instance left
        // (except VMs on hold) before any run starts.
        let vms = VmManager::start(
            ManagerConfig::from_fleet(&fleet, dirs.instance_id(), Readiness::SshBanner { poll: Duration::from_millis(200) }),
            fleet.hosts.clone(),
            store.clone(),
        )
        .await
        .map_err(DaemonError::Vms)?;
        let client_key = ClientKey::load_or_create(dirs.root()).map_err(DaemonError::Key)?;
        let ca = FleetCa::load_or_create(dirs.root()).map_err(DaemonError::Ca)?;
        // The templates listing computes an image's current key from what its seeds hand over.
        let template_seeds =
            crate::vm::template::list::SeedInputs { authorized_keys: vec![client_key.public_line()], ca_key: Some(ca.public_line()) };
        let mut executor_config = ExecutorConfig::new(dirs.logs(), recorder_names);
        executor_config.ca_public_line = Some(ca.public_line());
        executor_config.output_caps =
            crate::steps::OutputCaps { result_bytes: fleet.limits.step_output_bytes, log_bytes: fleet.limits.step_log_bytes };
        executor_config.run_log_bytes = fleet.limits.run_log_bytes;
        executor_config.artifact_op_timeout = fleet.limits.artifact_timeout;
        executor_config.step_kill_after = fleet.limits.step_kill_after_bytes;
        let executor = Arc::new(
            Executor::new(live.clone(), store.clone(), executor_config, waker).with_vms(vms.clone(), Arc::new(client_key.clone())),
        );
        let machines = VmMachines { vms: vms.clone(), store: store.clone(), fleet: fleet.clone(), client: client_key };
        let access = Access::start(fleet.clone(), store.clone(), ca, Arc::new(machines), AccessConfig::new(Clock::system()))
            .await
            .map_err(DaemonError::Access)?;
        let (mut coordinator, runs) = Coordinator::new(live.clone(), store.clone(), executor);
        coordinator.recover().await.map_err(DaemonError::Recover)?;
        let (fire_tx, fire_rx) = mpsc::channel(64);
        tokio::spawn(coordinator.run(fire_rx));
        let mut schedules = reload::Schedules::new(store.clone(), Clock::system(), fire_tx);
        schedules.start_all(&fleet);

        // Until the VM manager reports, hosts show as not yet known to be up.
        let initial: Vec<HostStatus> =
            fleet.hosts.iter().map(|h| HostStatus { name: h.name.clone(), up: false, last_error: None, vms_running: 0 }).collect();
        let (hosts_tx, hosts_rx) = watch::channel(initial);
        tokio::spawn(report_hosts(vms.clone(), hosts_tx, shutdown_rx.clone()));
        let mut api = ApiState::new(live.clone(), store.clone(), runs.clone(), hosts_rx);
        api.access = Some(access);
        api.vms = Some(vms.clone());
        api.template_seeds = Some(template_seeds);
        api.instance_id = Some(dirs.instance_id().to_string());
        api.owners.push(("forwarder", forwarder_health));
        api.owners.push(("vm-manager", vms.health()));
        api.owners.push(("coordinator", runs.health()));
        tokio::spawn(check_hosts(fleet.clone()));
        api.public_reads = fleet.daemon.public_reads;
        api.max_follows = fleet.limits.live_streams;
        api.max_follows_per_client = fleet.limits.live_streams_per_client;
        let app = app(Arc::new(api)).merge(crate::recorder::nest_under("/recorder", recorder.clone()));
        let addr = options.listen.unwrap_or(fleet.daemon.listen);
        let listener = TcpListener::bind(addr).await.map_err(|source| DaemonError::Listen { addr, source })?;
        let addr = listener.local_addr().map_err(|source| DaemonError::Listen { addr, source })?;
        let mut rx = shutdown_rx.clone();
        let limits = fleet.limits;
        let server = tokio::spawn(async move {
            crate::listener::serve(listener, app, limits.listener(), async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .await
        });
        info!(%addr, "paddock listening");

        if options.demo {
            for job in &fleet.jobs {
                match runs.trigger(&job.name, None, Trigger::Manual { by: "demo".into() }).await {
                    Ok(ids) => info!(job = %job.name, runs = ?ids, "demo run started"),
                    Err(e) => error!(job = %job.name, error = %e, "demo run could not start"),
                }
            }
        }
        Ok(Daemon { addr, runs, store, recorder, vms, fleet: updater, schedules, shutdown, server })
    }

    /// The fleet in force (it changes on a successful [`Daemon::reload`]).
    pub fn fleet(&self) -> Arc<Fleet> {
        self.fleet.current()
    }

    /// Re-reads `fleet.toml` from the file it came from and, if it is valid
    /// and changes nothing but `[[jobs]]`, puts it in force; otherwise the
    /// running fleet stays and the error says why, with file, line and key.
    pub async fn reload(&mut self) -> Result<Reloaded, ReloadError> {
        reload::reload(&self.fleet, &mut self.schedules).await
    }

    /// Stops accepting work, waits for the HTTP server to close, tears down the idle
    /// ready-pool clones on every host and ends the VM manager's owner
    /// (`VmManager::shutdown`): runs' VMs, held VMs and persistent machines stay for the next
    /// start to adopt or reap. The clones' removal is waited for at most
    /// [`SHUTDOWN_CALLS`] libvirt call deadlines.
    pub async fn stop(self) -> Result<(), DaemonError> {
        let _ = self.shutdown.send(true);
        let served = self.server.await;
        let limit = self.fleet.current().daemon.libvirt_timeout.saturating_mul(SHUTDOWN_CALLS);
        self.vms.shutdown(limit).await;
        match served {
            Ok(r) => r.map_err(DaemonError::Serve),
            Err(_) => Ok(()),
        }
    }
}

/// How many libvirt call deadlines (`daemon.libvirt_timeout`) a stop waits for the ready
/// pools' clones to go: a clone's removal is a destroy, an undefine and up to two volume
/// deletions, and the clones go at once.
const SHUTDOWN_CALLS: u32 = 4;

/// Every recorder a result is queued for, the embedded one included.
fn forwarder_names(fleet: &Fleet) -> Vec<String> {
    fleet.recorders.iter().map(|r| r.name.clone()).collect()
}

/// `paddock host check` on every configured host, logged: an operator sees at
/// start what a host lacks (no passt, a missing image, the wrong accelerator).
async fn check_hosts(fleet: Arc<Fleet>) {
    use crate::hosts::check::{self, Level};
    let (images, known) = (fleet.images.clone(), crate::checksums::Checksums::in_state_dir(&fleet.daemon.state_dir));
    let Ok(files) = tokio::task::spawn_blocking(move || check::local_files_with(&images, &known)).await else { return };
    for host in &fleet.hosts {
        let uri = host.uri.clone();
        let probe = tokio::task::spawn_blocking(move || crate::libvirt::probe(&uri)).await;
        let probe = match probe {
            Ok(p) => p.map_err(|e| crate::libvirt::error_chain(&e)),
            Err(e) => Err(e.to_string()),
        };
        let lines = check::assess(&host.uri, probe.as_ref().map_err(Clone::clone), Some(host), &fleet.images, &files);
        for l in &lines {
            let fix = l.fix.as_deref().unwrap_or("");
            match l.level {
                Level::Ok => tracing::debug!(host = %host.name, topic = %l.topic, "{}", l.text),
                Level::Warn => tracing::warn!(host = %host.name, topic = %l.topic, fix, "{}", l.text),
                Level::Fail => tracing::error!(host = %host.name, topic = %l.topic, fix, "{}", l.text),
            }
        }
        info!(host = %host.name, verdict = %check::verdict(&lines), "host check");
    }
}

/// Feeds the API's view of host health from the VM manager, every two seconds.
async fn report_hosts(vms: VmManager, tx: watch::Sender<Vec<HostStatus>>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Ok(snap) = vms.snapshot().await {
            let hosts = snap
                .hosts
                .iter()
                .map(|h| HostStatus {
                    name: h.name.clone(),
                    up: h.up,
                    last_error: h.down_reason.clone(),
                    vms_running: snap.vms.iter().filter(|v| v.host == h.name).count(),
                })
                .collect();
            tx.send_replace(hosts);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
