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
    /// When the login that became this session began: the guest's SSH banner came right
    /// after (the first attempt that got one), so "banner → first byte" counts from here.
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
    /// Logged in: the session and when its attempt began.
    Session(Session, DateTime<Utc>),
    /// The guest answered SSH but refused this login for a reason waiting cannot fix (host
    /// key mismatch, refused credential). The VM is up; the caller's own login reports why.
    Answered(SshError),
    Timeout,
    /// The domain stopped running while we waited.
    Stopped,
}

/// Logs in to `target` until a login works or `deadline` passes; between attempts asks
/// `still_running`, so a crashed guest fails fast, and waits `poll`.
pub async fn poll_login<F, Fut>(
    target: &Target,
    login: &Login,
    host_key: &ssh_key::PublicKey,
    deadline: Instant,
    poll: Duration,
    mut still_running: F,
) -> Polled
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let check = HostKeyCheck::exact(host_key.clone());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Polled::Timeout;
        }
        let config = SshConfig { attempt_timeout: login.config.attempt_timeout.min(left), ..login.config.clone() };
        let began = Utc::now();
        match ssh::connect(target, &login.auth, &check, &config).await {
            Ok(session) => return Polled::Session(session, began),
            Err(e) if !e.is_transient() => return Polled::Answered(e),
            Err(_) => {}
        }
        if !still_running().await {
            return Polled::Stopped;
        }
        tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}
