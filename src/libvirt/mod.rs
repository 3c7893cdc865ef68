//! The libvirt adapter: one actor thread per host owns its connection; the rest
//! of paddock talks to it through async methods on [`HostHandle`].
//!
//! Implementation note: every `virt` call blocks (an RPC to libvirtd) and
//! libvirt's last error is thread-local, so each host gets a dedicated OS thread
//! that owns its `virt::connect::Connect` and is fed by a closed command enum
//! with oneshot reply channels. The thread also watches its connection (every
//! [`HEALTH_INTERVAL`]): a dead connection makes the host `Down` and is
//! re-opened with exponential backoff. This is the only module that calls `virt`.

pub mod domain_xml;
mod facts;
pub mod probe;
pub mod storage;

use std::sync::Once;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tracing::{info, warn};
use virt::connect::Connect;
use virt::domain::Domain;

pub use domain_xml::{DiskSpec, DomainSpec, Mark, PADDOCK_NS};
pub use facts::{HostFacts, check_host};
pub use probe::{Emulator, HostProbe, Pool, Volume, probe};

/// How often an idle actor checks that its connection is alive (and retries a dead one).
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

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
    Start {
        name: String,
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
}

/// A handle to one host's actor; cheap to clone. The actor stops when the
/// last handle is dropped.
#[derive(Clone)]
pub struct HostHandle {
    name: String,
    uri: String,
    tx: mpsc::Sender<Command>,
    status: watch::Receiver<HostStatus>,
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
        init_libvirt();
        let (tx, rx) = mpsc::channel();
        let (status_tx, status) = watch::channel(HostStatus::Connecting);
        let actor = Actor {
            name: name.to_string(),
            uri: uri.to_string(),
            conn: None,
            status: status_tx,
            backoff: BACKOFF_FIRST,
            next_attempt: Instant::now(),
        };
        std::thread::Builder::new().name(format!("libvirt-{name}")).spawn(move || actor.run(rx)).expect("spawning a libvirt host thread");
        HostHandle { name: name.to_string(), uri: uri.to_string(), tx, status }
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

    /// Waits until the first connection attempt has finished (either way) and returns the status.
    pub async fn wait_connected(&self) -> HostStatus {
        let mut rx = self.status.clone();
        let status = rx.wait_for(|s| !matches!(s, HostStatus::Connecting)).await.map(|s| s.clone());
        status.unwrap_or(HostStatus::Down { reason: "actor stopped".into(), since: chrono::Utc::now() })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, LibvirtError> {
        let (reply, rx) = oneshot::channel();
        let gone = || LibvirtError::ActorGone { host: self.name.clone() };
        self.tx.send(make(reply)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub async fn define(&self, name: &str, xml: String) -> Result<(), LibvirtError> {
        self.call(|reply| Command::Define { xml, name: name.to_string(), reply }).await
    }

    pub async fn start(&self, name: &str) -> Result<(), LibvirtError> {
        self.call(|reply| Command::Start { name: name.to_string(), reply }).await
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
}

struct Actor {
    name: String,
    uri: String,
    conn: Option<Connect>,
    status: watch::Sender<HostStatus>,
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
        self.try_connect();
        loop {
            match rx.recv_timeout(HEALTH_INTERVAL) {
                Ok(cmd) => {
                    self.ensure_connected();
                    self.handle(cmd);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => self.health_check(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        // Dropping `conn` closes it.
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
                        self.status.send_replace(HostStatus::Up(facts));
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
        if !was_down {
            warn!(host = %self.name, uri = %self.uri, %reason, "host down");
        }
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.status.send_replace(HostStatus::Down { reason, since: chrono::Utc::now() });
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
            let err = self.down_error();
            match cmd {
                Command::Define { reply, .. }
                | Command::Start { reply, .. }
                | Command::Shutdown { reply, .. }
                | Command::Destroy { reply, .. }
                | Command::Undefine { reply, .. } => drop(reply.send(Err(err))),
                Command::IsActive { reply, .. } => drop(reply.send(Err(err))),
                Command::List { reply } => drop(reply.send(Err(err))),
            }
            return;
        };
        let host = self.name.clone();
        let failed = match cmd {
            Command::Define { xml, name, reply } => {
                let r = conn.define_domain_xml(&xml).map(drop).map_err(|source| LibvirtError::Define { host, name, source });
                send(reply, r)
            }
            Command::Start { name, reply } => {
                let r = lookup(&conn, &host, &name)
                    .and_then(|d| d.create().map(drop).map_err(|source| LibvirtError::Start { host, name, source }));
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
