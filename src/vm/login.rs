//! One handshake on the hot path: a launch whose caller gives a login polls the guest by
//! logging in, so the SSH session that proves the VM ready is the one its first step runs on.
//!
//! Without it the VM manager probed for a banner, dropped that connection, and the executor
//! then opened a second one: a second sshd fork and a second key exchange on an emulated guest
//! CPU (1.4–2.5 s on the Debian image, issue 18). With it the readiness poll *is* the login.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::config::{HostKeyPolicy, Image};
use crate::ssh::{self, Auth, HostKeyCheck, Session, SshConfig, SshError, Target};
use crate::vm::readiness;

/// How a launch's readiness poll logs in: the caller's user, credential and SSH tuning.
#[derive(Clone)]
pub struct Login {
    pub user: String,
    pub auth: Auth,
    pub config: SshConfig,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("user", &self.user).finish_non_exhaustive()
    }
}

/// The session that proved a VM ready, handed to the launch's caller once.
#[derive(Clone, Default)]
pub struct HandedSession {
    slot: Arc<Mutex<Option<Session>>>,
    /// When the readiness poll saw the guest's SSH banner, right before the login that became
    /// this session, so "banner → first byte" counts from here.
    pub banner_at: Option<DateTime<Utc>>,
}

impl HandedSession {
    pub fn new(session: Session, banner_at: DateTime<Utc>) -> HandedSession {
        HandedSession { slot: Arc::new(Mutex::new(Some(session))), banner_at: Some(banner_at) }
    }

    /// The session, the first time only.
    pub fn take(&self) -> Option<Session> {
        self.slot.lock().expect("handed session lock").take()
    }
}

impl std::fmt::Debug for HandedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.slot.lock().map(|s| s.is_some()).unwrap_or(false);
        f.debug_struct("HandedSession").field("held", &held).field("banner_at", &self.banner_at).finish()
    }
}

/// The host key a login into a VM of `image` must see, when it is known before the guest
/// answers: pinned in the config, in a file, or generated for the VM (`pinned`). `None` for a
/// key the guest prints on its console (learned after the banner) or a file that cannot be
/// read (the executor reports that).
pub fn expected_host_key(image: &Image, pinned: Option<&ssh_key::PublicKey>) -> Option<ssh_key::PublicKey> {
    match &image.host_key {
        HostKeyPolicy::Pinned(k) => Some(k.clone()),
        HostKeyPolicy::File(path) => std::fs::read_to_string(path).ok().and_then(|t| ssh_key::PublicKey::from_openssh(t.trim()).ok()),
        HostKeyPolicy::PerVm => pinned.cloned(),
        HostKeyPolicy::Console => None,
    }
}

/// How a login poll ended.
pub enum Polled {
    /// Logged in: the session and when the guest's SSH banner was seen just before.
    Session(Session, DateTime<Utc>),
    /// The guest answered SSH but refused this login for a reason waiting cannot fix (host
    /// key mismatch, refused credential). The VM is up; the caller's own login reports why.
    Answered(SshError),
    Timeout,
    /// The domain stopped running while we waited.
    Stopped,
}

/// The longest a single banner probe may wait for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether a login poll waits for the guest's SSH banner before its first login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A cheap banner probe first, and again after a transient failure: for a guest that is
    /// still booting.
    Banner,
    /// The first login at once: for a guest whose sshd the caller has just seen listening
    /// from inside (a warm clone's identity script, through the guest agent), where a banner
    /// probe would only cost the guest one more sshd start. A transient failure falls back to
    /// probing; "banner → first byte" counts from this first login.
    Skip,
}

/// How a login poll paces itself: its first step, and the pause between tries.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub every: Duration,
    pub probe: Probe,
}

/// Logs in to `target` (after its SSH banner, as `pace.probe` says) until a login works or
/// `deadline` passes; between attempts asks `still_running`, so a crashed guest fails fast,
/// and waits `pace.every`.
///
/// Implementation note: with [`Probe::Banner`] a login is only tried once a cheap banner probe
/// ([`readiness::probe_banner`], one TCP connection, no key exchange) saw the guest's sshd
/// answer. A login tried earlier can hang on passt's forward until the whole SSH attempt
/// timeout (20 s) while the guest has no listener yet; that made the bundled guest's cold
/// trigger → first byte 11.3 s instead of ~4.5 s. A login that fails transiently (sshd
/// restarting) sends the poll back to probing. The session is still the only key exchange.
pub async fn poll_login<F, Fut>(
    target: &Target,
    login: &Login,
    host_key: &ssh_key::PublicKey,
    deadline: Instant,
    pace: Pace,
    mut still_running: F,
) -> Polled
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut banner_at = match pace.probe {
        Probe::Banner => None,
        Probe::Skip => Some(Utc::now()),
    };
    let check = HostKeyCheck::exact(host_key.clone());
    let began = Instant::now();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Polled::Timeout;
        }
        match banner_at {
            None => {
                if readiness::probe_banner(target.addr, left.min(PROBE_TIMEOUT)).await {
                    banner_at = Some(Utc::now());
                    tracing::debug!(addr = %target.addr, after_ms = began.elapsed().as_millis() as u64, "SSH banner seen");
                    // Straight to the login: no poll pause between banner and handshake.
                    continue;
                }
            }
            Some(seen) => {
                let config = SshConfig { attempt_timeout: login.config.attempt_timeout.min(left), ..login.config.clone() };
                match ssh::connect(target, &login.auth, &check, &config).await {
                    Ok(session) => {
                        let login_ms = (Utc::now() - seen).num_milliseconds();
                        tracing::debug!(addr = %target.addr, after_ms = began.elapsed().as_millis() as u64, login_ms, "logged in");
                        return Polled::Session(session, seen);
                    }
                    Err(e) if !e.is_transient() => return Polled::Answered(e),
                    Err(_) => banner_at = None,
                }
            }
        }
        if !still_running().await {
            return Polled::Stopped;
        }
        tokio::time::sleep(pace.every.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}
