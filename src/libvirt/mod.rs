//! The libvirt adapter: one actor thread per host owns its connection; the rest
//! of paddock talks to it through async methods on [`HostHandle`].
//!
//! Implementation note: every `virt` call blocks (an RPC to libvirtd) and
//! libvirt's last error is thread-local, so each host gets a dedicated OS thread
//! that owns its `virt::connect::Connect` and is fed by a closed command enum
//! with oneshot reply channels. The thread also watches its connection (every
//! [`HEALTH_INTERVAL`]): a dead connection makes the host `Down` and is
//! re-opened with exponential backoff. This is the only module that calls `virt`.
//!
//! Every call has a deadline ([`HostOptions::call_timeout`]). A call that gets
//! no answer in time marks the host `Down` with the reason and replaces its
//! actor: the stuck thread is abandoned (it drops whatever it still had queued
//! once its call returns, since it is no longer the current generation) and a
//! fresh one reconnects. While a host is down, calls fail at once instead of
//! queueing behind a stuck thread, so a frozen libvirtd costs each caller at
//! most one deadline and never blocks other hosts.

pub mod console;
pub mod domain_xml;
mod facts;
pub mod machine;
pub mod probe;
pub mod storage;
pub mod warm;
pub mod warm_pool;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tracing::{info, warn};
use virt::connect::Connect;
use virt::domain::Domain;

pub use console::ConsoleSink;
pub use domain_xml::{ConsoleXml, DiskSpec, DomainSpec, Mark, PADDOCK_NS};
pub use facts::{HostFacts, check_host};
pub use probe::{Emulator, HostProbe, Pool, Volume, probe};

/// How often an idle actor checks that its connection is alive (and retries a dead one).
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The default deadline of one libvirt call (see [`HostOptions`]).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The default deadline of opening a connection: the first one to a remote
/// host may start its session daemon over SSH.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of one host's actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostOptions {
    /// How long one call (or the first connection) may take before the host
    /// is marked down and its actor replaced.
    pub call_timeout: Duration,
    /// How long the first connection may take (see [`HostHandle::wait_connected`]).
    pub connect_timeout: Duration,
}

impl Default for HostOptions {
    fn default() -> HostOptions {
        HostOptions { call_timeout: DEFAULT_CALL_TIMEOUT, connect_timeout: DEFAULT_CONNECT_TIMEOUT }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("host {host} is down (last error: {reason})")]
    Down { host: String, reason: String },
    #[error("connecting to {uri}")]
    Connect { uri: String, source: virt::error::Error },
    #[error("reading the capabilities of host {host}")]
    Facts { host: String, source: virt::error::Error },
    #[error("defining domain {name} on host {host}")]
    Define { host: String, name: String, source: virt::error::Error },
    #[error("starting domain {name} on host {host}")]
    Start { host: String, name: String, source: virt::error::Error },
    #[error("attaching to the console of domain {name} on host {host}")]
    Console { host: String, name: String, source: virt::error::Error },
    #[error("asking domain {name} on host {host} to shut down")]
    Shutdown { host: String, name: String, source: virt::error::Error },
    #[error("destroying domain {name} on host {host}")]
    Destroy { host: String, name: String, source: virt::error::Error },
    #[error("undefining domain {name} on host {host}")]
    Undefine { host: String, name: String, source: virt::error::Error },
    #[error("looking up domain {name} on host {host}")]
    Lookup { host: String, name: String, source: virt::error::Error },
    #[error("listing domains on host {host}")]
    List { host: String, source: virt::error::Error },
    #[error("reading host details over {uri}")]
    Probe { uri: String, source: virt::error::Error },
    #[error("the actor thread of host {host} has stopped")]
    ActorGone { host: String },
    #[error("libvirt call `{call}` on host {host} got no answer within {after:?}")]
    Timeout { host: String, call: &'static str, after: Duration },
    #[error("{what} on host {host}")]
    Warm { host: String, what: String, source: virt::error::Error },
    #[error("{what} on host {host}")]
    Machine { host: String, what: String, source: virt::error::Error },
    #[error("bad argument: {what}")]
    BadArgument { what: String },
}

/// Whether a host's connection is usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostStatus {
    /// Not connected yet.
    Connecting,
    Up(HostFacts),
    /// The connection failed or was lost; it is being re-opened with backoff.
    Down {
        reason: String,
        since: chrono::DateTime<chrono::Utc>,
    },
}

impl HostStatus {
    pub fn is_up(&self) -> bool {
        matches!(self, HostStatus::Up(_))
    }
}

/// A domain found on a host, with paddock's mark when it carries one.
#[derive(Debug, Clone)]
pub struct DomainInfo {
    pub name: String,
    pub active: bool,
    pub mark: Option<Mark>,
}

type Reply<T> = oneshot::Sender<Result<T, LibvirtError>>;

enum Command {
    Define {
        xml: String,
        name: String,
        reply: Reply<()>,
    },
    /// With a console sink the domain starts paused, its console is attached, then it resumes.
    Start {
        name: String,
        console: Option<ConsoleSink>,
        reply: Reply<()>,
    },
    /// Copies the console of a running domain into the sink (appending), from now on.
    AttachConsole {
        name: String,
        sink: ConsoleSink,
        reply: Reply<()>,
    },
    Shutdown {
        name: String,
        reply: Reply<()>,
    },
    Destroy {
        name: String,
        reply: Reply<()>,
    },
    Undefine {
        name: String,
        reply: Reply<()>,
    },
    /// `Ok(None)` when no such domain exists.
    IsActive {
        name: String,
        reply: Reply<Option<bool>>,
    },
    List {
        reply: Reply<Vec<DomainInfo>>,
    },
    /// A warm-start call (`warm.rs`).
    Warm {
        op: warm::WarmOp,
        reply: Reply<String>,
    },
    /// A persistent-machine call (`machine.rs`).
    Machine {
        op: machine::MachineOp,
        reply: Reply<machine::Inspection>,
    },
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Define { .. } => "define",
            Command::Start { .. } => "start",
            Command::AttachConsole { .. } => "attach_console",
            Command::Shutdown { .. } => "shutdown",
            Command::Destroy { .. } => "destroy",
            Command::Undefine { .. } => "undefine",
            Command::IsActive { .. } => "is_active",
            Command::List { .. } => "list",
            Command::Warm { op, .. } => op.call(),
            Command::Machine { op, .. } => op.call(),
        }
    }

    /// Answers the command with `err` without running it.
    fn refuse(self, err: LibvirtError) {
        match self {
            Command::Define { reply, .. }
            | Command::Start { reply, .. }
            | Command::AttachConsole { reply, .. }
            | Command::Shutdown { reply, .. }
            | Command::Destroy { reply, .. }
            | Command::Undefine { reply, .. } => drop(reply.send(Err(err))),
            Command::IsActive { reply, .. } => drop(reply.send(Err(err))),
            Command::List { reply } => drop(reply.send(Err(err))),
            Command::Warm { reply, .. } => drop(reply.send(Err(err))),
            Command::Machine { reply, .. } => drop(reply.send(Err(err))),
        }
    }
}

/// A handle to one host's actor; cheap to clone. The actor stops when the
/// last handle is dropped.
#[derive(Clone)]
pub struct HostHandle {
    name: String,
    uri: String,
    shared: Arc<Shared>,
    status: watch::Receiver<HostStatus>,
}

/// What the handles of one host share: the current actor's channel and generation.
struct Shared {
    options: HostOptions,
    /// The current actor's command channel (replaced with the actor).
    tx: Mutex<mpsc::Sender<Command>>,
    /// The current actor's generation; an actor whose number differs is abandoned.
    generation: Arc<AtomicU64>,
    status: Arc<watch::Sender<HostStatus>>,
}

static EVENT_LOOP: Once = Once::new();

/// Registers libvirt's default event loop (needed for keepalive) and runs it on
/// its own thread. Must happen before the first connection is opened.
fn init_libvirt() {
    EVENT_LOOP.call_once(|| {
        virt::error::clear_error_callback();
        if virt::event::event_register_default_impl().is_ok() {
            std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| {
                    loop {
                        if virt::event::event_run_default_impl().is_err() {
                            // Nothing can be done about a broken event loop but not spin on it.
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                })
                .expect("spawning the libvirt event thread");
        }
    });
}

impl HostHandle {
    /// Starts the actor thread for host `name` at `uri`. It connects in the
    /// background; watch [`HostHandle::status`] or call [`HostHandle::wait_connected`].
    pub fn spawn(name: &str, uri: &str) -> HostHandle {
        HostHandle::spawn_with(name, uri, HostOptions::default())
    }

    /// [`HostHandle::spawn`] with explicit options.
    pub fn spawn_with(name: &str, uri: &str, options: HostOptions) -> HostHandle {
        init_libvirt();
        let (status_tx, status) = watch::channel(HostStatus::Connecting);
        let status_tx = Arc::new(status_tx);
        let generation = Arc::new(AtomicU64::new(0));
        let tx = spawn_actor(name, uri, 0, &generation, &status_tx, Duration::ZERO);
        let shared = Arc::new(Shared { options, tx: Mutex::new(tx), generation, status: status_tx });
        HostHandle { name: name.to_string(), uri: uri.to_string(), shared, status }
    }

    pub fn options(&self) -> HostOptions {
        self.shared.options
    }

    /// Marks the host down with `reason` and replaces the actor of generation
    /// `stuck` (if it is still the current one) with a fresh one.
    fn replace_actor(&self, stuck: u64, reason: String) {
        let mut tx = self.shared.tx.lock().unwrap_or_else(|e| e.into_inner());
        if self.shared.generation.load(Ordering::SeqCst) != stuck {
            return;
        }
        let next = stuck + 1;
        self.shared.generation.store(next, Ordering::SeqCst);
        warn!(host = %self.name, uri = %self.uri, %reason, "host down; replacing its libvirt actor");
        self.shared.status.send_replace(HostStatus::Down { reason, since: chrono::Utc::now() });
        *tx = spawn_actor(&self.name, &self.uri, next, &self.shared.generation, &self.shared.status, BACKOFF_FIRST);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn status(&self) -> HostStatus {
        self.status.borrow().clone()
    }

    pub fn watch_status(&self) -> watch::Receiver<HostStatus> {
        self.status.clone()
    }

    /// Waits until the first connection attempt has finished (either way) and
    /// returns the status. A connection that takes longer than the connect
    /// timeout counts as failed: the host is marked down and its actor replaced.
    pub async fn wait_connected(&self) -> HostStatus {
        let mut rx = self.status.clone();
        let generation = self.shared.generation.load(Ordering::SeqCst);
        let after = self.shared.options.connect_timeout;
        let waited = tokio::time::timeout(after, rx.wait_for(|s| !matches!(s, HostStatus::Connecting))).await;
        match waited {
            Ok(Ok(s)) => s.clone(),
            Ok(Err(_)) => HostStatus::Down { reason: "actor stopped".into(), since: chrono::Utc::now() },
            Err(_) => {
                self.replace_actor(generation, format!("connecting to {} got no answer within {after:?}", self.uri));
                self.status()
            }
        }
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, LibvirtError> {
        // A down host answers at once: its actor may be stuck in a call (or
        // reconnecting to a frozen daemon), and queueing behind it would only
        // turn every caller's wait into a deadline.
        if let HostStatus::Down { reason, .. } = &*self.status.borrow() {
            return Err(LibvirtError::Down { host: self.name.clone(), reason: reason.clone() });
        }
        let (reply, rx) = oneshot::channel();
        let cmd = make(reply);
        let call = cmd.name();
        let gone = || LibvirtError::ActorGone { host: self.name.clone() };
        let generation = {
            let tx = self.shared.tx.lock().unwrap_or_else(|e| e.into_inner());
            tx.send(cmd).map_err(|_| gone())?;
            self.shared.generation.load(Ordering::SeqCst)
        };
        let after = self.shared.options.call_timeout;
        match tokio::time::timeout(after, rx).await {
            Ok(answer) => answer.map_err(|_| gone())?,
            Err(_) => {
                let err = LibvirtError::Timeout { host: self.name.clone(), call, after };
                self.replace_actor(generation, err.to_string());
                Err(err)
            }
        }
    }

    pub async fn define(&self, name: &str, xml: String) -> Result<(), LibvirtError> {
        self.call(|reply| Command::Define { xml, name: name.to_string(), reply }).await
    }

    /// Starts a defined domain without reading its console (libvirt's
    /// `test:///` driver has none).
    pub async fn start(&self, name: &str) -> Result<(), LibvirtError> {
        self.call(|reply| Command::Start { name: name.to_string(), console: None, reply }).await
    }

    /// Starts a defined domain with its console copied into `sink` over this
    /// connection, from the first byte (the domain starts paused until the
    /// console is attached).
    pub async fn start_with_console(&self, name: &str, sink: ConsoleSink) -> Result<(), LibvirtError> {
        self.call(|reply| Command::Start { name: name.to_string(), console: Some(sink), reply }).await
    }

    /// Copies the console of running domain `name` into `sink` from now on, appending to
    /// its file (for a VM adopted after a restart, whose earlier copy ended with it).
    pub async fn attach_console(&self, name: &str, sink: ConsoleSink) -> Result<(), LibvirtError> {
        self.call(|reply| Command::AttachConsole { name: name.to_string(), sink, reply }).await
    }

    /// Asks the guest to power off (ACPI); returns at once.
    pub async fn shutdown(&self, name: &str) -> Result<(), LibvirtError> {
        self.call(|reply| Command::Shutdown { name: name.to_string(), reply }).await
    }

    /// Pulls the plug. A domain that is not running or does not exist is not an error.
    pub async fn destroy(&self, name: &str) -> Result<(), LibvirtError> {
        self.call(|reply| Command::Destroy { name: name.to_string(), reply }).await
    }

    /// Removes the definition (and any NVRAM). A domain that does not exist is not an error.
    pub async fn undefine(&self, name: &str) -> Result<(), LibvirtError> {
        self.call(|reply| Command::Undefine { name: name.to_string(), reply }).await
    }

    /// `None` when no such domain exists.
    pub async fn is_active(&self, name: &str) -> Result<Option<bool>, LibvirtError> {
        self.call(|reply| Command::IsActive { name: name.to_string(), reply }).await
    }

    /// Every domain on the host (running or only defined), with paddock's mark if present.
    pub async fn list(&self) -> Result<Vec<DomainInfo>, LibvirtError> {
        self.call(|reply| Command::List { reply }).await
    }

    /// A warm-start call: save, restore, guest agent (`warm.rs`).
    pub async fn warm(&self, op: warm::WarmOp) -> Result<String, LibvirtError> {
        self.call(|reply| Command::Warm { op, reply }).await
    }

    /// A persistent-machine call: inspect, revert to a snapshot (`machine.rs`).
    pub async fn machine(&self, op: machine::MachineOp) -> Result<machine::Inspection, LibvirtError> {
        self.call(|reply| Command::Machine { op, reply }).await
    }
}

fn spawn_actor(
    name: &str,
    uri: &str,
    generation: u64,
    current: &Arc<AtomicU64>,
    status: &Arc<watch::Sender<HostStatus>>,
    first_delay: Duration,
) -> mpsc::Sender<Command> {
    let (tx, rx) = mpsc::channel();
    let actor = Actor {
        name: name.to_string(),
        uri: uri.to_string(),
        conn: None,
        status: status.clone(),
        generation,
        current: current.clone(),
        backoff: BACKOFF_FIRST,
        next_attempt: Instant::now() + first_delay,
    };
    std::thread::Builder::new().name(format!("libvirt-{name}")).spawn(move || actor.run(rx)).expect("spawning a libvirt host thread");
    tx
}

struct Actor {
    name: String,
    uri: String,
    conn: Option<Connect>,
    status: Arc<watch::Sender<HostStatus>>,
    /// This actor's number; it serves only while `current` holds it.
    generation: u64,
    current: Arc<AtomicU64>,
    backoff: Duration,
    next_attempt: Instant,
}

fn is_no_domain(e: &virt::error::Error) -> bool {
    e.code() == virt::error::ErrorNumberEnum::Known(virt::error::ErrorNumber::NoDomain)
}

fn is_not_running(e: &virt::error::Error) -> bool {
    e.code() == virt::error::ErrorNumberEnum::Known(virt::error::ErrorNumber::OperationInvalid)
}

impl Actor {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        self.ensure_connected();
        loop {
            if self.abandoned() {
                break;
            }
            match rx.recv_timeout(HEALTH_INTERVAL) {
                Ok(cmd) if self.abandoned() => {
                    cmd.refuse(LibvirtError::ActorGone { host: self.name.clone() });
                    break;
                }
                Ok(cmd) => {
                    self.ensure_connected();
                    self.handle(cmd);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => self.health_check(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        // Dropping `rx` answers whatever is still queued with `ActorGone`;
        // dropping `conn` closes it.
    }

    /// Whether a newer actor has replaced this one (after a call of ours timed out).
    fn abandoned(&self) -> bool {
        self.current.load(Ordering::SeqCst) != self.generation
    }

    /// Publishes a status, unless this actor was replaced.
    fn publish(&self, status: HostStatus) {
        if !self.abandoned() {
            self.status.send_replace(status);
        }
    }

    fn try_connect(&mut self) {
        match Connect::open(Some(&self.uri)) {
            Ok(conn) => {
                // Keepalive makes a dead remote connection fail calls instead of
                // hanging; local and test connections may not support it.
                let _ = conn.set_keep_alive(5, 3);
                match facts::read(&conn) {
                    Ok(facts) => {
                        info!(host = %self.name, uri = %self.uri, arch = %facts.arch, "host connected");
                        self.conn = Some(conn);
                        self.backoff = BACKOFF_FIRST;
                        self.publish(HostStatus::Up(facts));
                    }
                    Err(source) => self.mark_down(LibvirtError::Facts { host: self.name.clone(), source }.to_string()),
                }
            }
            Err(source) => {
                let err = LibvirtError::Connect { uri: self.uri.clone(), source };
                self.mark_down(error_chain(&err));
            }
        }
    }

    fn mark_down(&mut self, reason: String) {
        self.conn = None;
        let was_down = matches!(*self.status.borrow(), HostStatus::Down { .. });
        if !was_down && !self.abandoned() {
            warn!(host = %self.name, uri = %self.uri, %reason, "host down");
        }
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.publish(HostStatus::Down { reason, since: chrono::Utc::now() });
    }

    fn ensure_connected(&mut self) {
        if self.conn.is_none() && Instant::now() >= self.next_attempt {
            self.try_connect();
        }
    }

    fn health_check(&mut self) {
        match &self.conn {
            Some(conn) => {
                if !conn.is_alive().unwrap_or(false) {
                    self.mark_down("connection lost".into());
                }
            }
            None => self.ensure_connected(),
        }
    }

    /// After a failed call: a dead connection turns the host down.
    fn after_error(&mut self) {
        if let Some(conn) = &self.conn
            && !conn.is_alive().unwrap_or(false)
        {
            self.mark_down("connection lost during a call".into());
        }
    }

    fn down_error(&self) -> LibvirtError {
        let reason = match &*self.status.borrow() {
            HostStatus::Down { reason, .. } => reason.clone(),
            _ => "not connected".into(),
        };
        LibvirtError::Down { host: self.name.clone(), reason }
    }

    fn handle(&mut self, cmd: Command) {
        let Some(conn) = self.conn.clone() else {
            cmd.refuse(self.down_error());
            return;
        };
        let host = self.name.clone();
        let failed = match cmd {
            Command::Define { xml, name, reply } => {
                let r = conn.define_domain_xml(&xml).map(drop).map_err(|source| LibvirtError::Define { host, name, source });
                send(reply, r)
            }
            Command::Start { name, console, reply } => {
                let r = lookup(&conn, &host, &name).and_then(|d| {
                    let started = match &console {
                        Some(sink) => console::start_with_console(&conn, &d, sink),
                        None => d.create().map(drop),
                    };
                    started.map_err(|source| LibvirtError::Start { host, name, source })
                });
                send(reply, r)
            }
            Command::AttachConsole { name, sink, reply } => {
                let r = lookup(&conn, &host, &name).and_then(|d| {
                    console::reattach_console(&conn, &d, &sink).map_err(|source| LibvirtError::Console { host, name, source })
                });
                send(reply, r)
            }
            Command::Shutdown { name, reply } => {
                let r = lookup(&conn, &host, &name).and_then(|d| match d.shutdown() {
                    Ok(()) => Ok(()),
                    Err(e) if is_not_running(&e) => Ok(()),
                    Err(source) => Err(LibvirtError::Shutdown { host, name, source }),
                });
                send(reply, r)
            }
            Command::Destroy { name, reply } => {
                let r = match conn.lookup_domain_by_name(&name) {
                    Err(e) if is_no_domain(&e) => Ok(()),
                    Err(source) => Err(LibvirtError::Lookup { host, name, source }),
                    Ok(d) => match d.destroy() {
                        Ok(()) => Ok(()),
                        Err(e) if is_not_running(&e) => Ok(()),
                        Err(source) => Err(LibvirtError::Destroy { host, name, source }),
                    },
                };
                send(reply, r)
            }
            Command::Undefine { name, reply } => {
                let r = match conn.lookup_domain_by_name(&name) {
                    Err(e) if is_no_domain(&e) => Ok(()),
                    Err(source) => Err(LibvirtError::Lookup { host, name, source }),
                    Ok(d) => undefine(&d).map_err(|source| LibvirtError::Undefine { host, name, source }),
                };
                send(reply, r)
            }
            Command::IsActive { name, reply } => {
                let r = match conn.lookup_domain_by_name(&name) {
                    Err(e) if is_no_domain(&e) => Ok(None),
                    Err(source) => Err(LibvirtError::Lookup { host: host.clone(), name: name.clone(), source }),
                    Ok(d) => d.is_active().map(Some).map_err(|source| LibvirtError::Lookup { host, name, source }),
                };
                send(reply, r)
            }
            Command::List { reply } => send(reply, list(&conn, &host)),
            Command::Warm { op, reply } => send(reply, warm::run(&conn, &host, op)),
            Command::Machine { op, reply } => send(reply, machine::run(&conn, &host, op)),
        };
        if failed {
            self.after_error();
        }
    }
}

/// Sends `r` and tells whether it was an error.
fn send<T>(reply: Reply<T>, r: Result<T, LibvirtError>) -> bool {
    let failed = r.is_err();
    let _ = reply.send(r);
    failed
}

fn lookup(conn: &Connect, host: &str, name: &str) -> Result<Domain, LibvirtError> {
    conn.lookup_domain_by_name(name).map_err(|source| LibvirtError::Lookup { host: host.to_string(), name: name.to_string(), source })
}

fn undefine(d: &Domain) -> Result<(), virt::error::Error> {
    // NVRAM (UEFI variables) belongs to the disposable VM too; drivers without
    // NVRAM support refuse the flag, so fall back to a plain undefine.
    match d.undefine_flags(virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM) {
        Ok(()) => Ok(()),
        Err(_) => d.undefine(),
    }
}

fn list(conn: &Connect, host: &str) -> Result<Vec<DomainInfo>, LibvirtError> {
    let domains = conn.list_all_domains(0).map_err(|source| LibvirtError::List { host: host.to_string(), source })?;
    let mut out = Vec::with_capacity(domains.len());
    for d in domains {
        // A domain may vanish between listing and lookup; skip it then.
        let Ok(name) = d.name() else { continue };
        let active = d.is_active().unwrap_or(false);
        let mark = d
            .metadata(virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(PADDOCK_NS), 0)
            .ok()
            .and_then(|xml| domain_xml::parse_metadata(&xml));
        out.push(DomainInfo { name, active, mark });
    }
    Ok(out)
}

pub use crate::error::chain as error_chain;
