//! Access for named users: requests, the policy that approves them, grants
//! with a VM and OpenSSH user certificates from the fleet CA, key installation
//! for guests that do not trust the CA, expiry, and the audit trail.

pub mod ca;
pub mod keys;
pub mod machines;
pub mod policy;
mod service;
mod state;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use ca::{CaError, CertSpec, FleetCa};
pub use service::{Access, AccessConfig, OwnerHealth};
pub use state::GrantState;

use crate::config::Image;
use crate::store::{GrantRow, StoreError};

/// What a grant is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A fresh VM of this image, booted for the grant.
    Image(String),
    /// The held VM of this failed run.
    Run(String),
}

/// Where a grant's user logs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// One request for access and, once approved, its grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub user: String,
    pub target: Target,
    pub duration: Duration,
    pub reason: String,
    pub state: GrantState,
    pub decided_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub vm_name: Option<String>,
    pub endpoint: Option<Endpoint>,
    /// The VM was booted for this grant alone and goes at its end.
    pub vm_owned: bool,
    /// For a held run: when the run's own hold ends.
    pub run_hold_until: Option<DateTime<Utc>>,
    pub keys_installed: bool,
    pub cleaned_at: Option<DateTime<Utc>>,
    /// Why it waits, was refused, or failed.
    pub detail: Option<String>,
}

impl Grant {
    /// The image of an image grant, or the run id of a run grant, for messages.
    pub fn subject_text(&self) -> String {
        match &self.target {
            Target::Image(i) => format!("image {i}"),
            Target::Run(r) => format!("run {r}"),
        }
    }

    pub(crate) fn to_row(&self) -> GrantRow {
        let (image, run_id) = match &self.target {
            Target::Image(i) => (Some(i.clone()), None),
            Target::Run(r) => (None, Some(r.clone())),
        };
        GrantRow {
            id: self.id.clone(),
            user: self.user.clone(),
            image,
            run_id,
            duration_s: self.duration.as_secs() as i64,
            reason: self.reason.clone(),
            state: self.state.as_str().into(),
            decided_by: self.decided_by.clone(),
            created_at: self.created_at,
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            vm_name: self.vm_name.clone(),
            detail: self.detail.clone(),
            ssh_host: self.endpoint.as_ref().map(|e| e.host.clone()),
            ssh_port: self.endpoint.as_ref().map(|e| e.port),
            login_user: self.endpoint.as_ref().map(|e| e.user.clone()),
            vm_owned: self.vm_owned,
            run_hold_until: self.run_hold_until,
            keys_installed: self.keys_installed,
            cleaned_at: self.cleaned_at,
        }
    }

    pub(crate) fn from_row(r: GrantRow) -> Result<Grant, StoreError> {
        let target = match (r.image, r.run_id) {
            (Some(i), None) => Target::Image(i),
            (None, Some(run)) => Target::Run(run),
            _ => return Err(StoreError::Corrupt(format!("grant {} names neither one image nor one run", r.id))),
        };
        let state =
            GrantState::parse(&r.state).ok_or_else(|| StoreError::Corrupt(format!("grant {} has unknown state `{}`", r.id, r.state)))?;
        let endpoint = match (r.ssh_host, r.ssh_port, r.login_user) {
            (Some(host), Some(port), Some(user)) => Some(Endpoint { host, port, user }),
            _ => None,
        };
        Ok(Grant {
            id: r.id,
            user: r.user,
            target,
            duration: Duration::from_secs(r.duration_s.max(0) as u64),
            reason: r.reason,
            state,
            decided_by: r.decided_by,
            created_at: r.created_at,
            starts_at: r.starts_at,
            ends_at: r.ends_at,
            vm_name: r.vm_name,
            endpoint,
            vm_owned: r.vm_owned,
            run_hold_until: r.run_hold_until,
            keys_installed: r.keys_installed,
            cleaned_at: r.cleaned_at,
            detail: r.detail,
        })
    }
}

/// A certificate handed to the user; it is not stored (only its record is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub serial: u64,
    /// `SHA256:…` of the user's key it certifies.
    pub key_fingerprint: String,
    /// The public key it certifies, as an OpenSSH line.
    pub key: String,
    /// The certificate as one OpenSSH line (`ssh-ed25519-cert-v01@openssh.com AAAA…`).
    pub certificate: String,
}

/// A grant and, when it became active in this call, what the user needs to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantAnswer {
    pub grant: Grant,
    pub certificates: Vec<IssuedCert>,
    /// A ready command line; `KEY` and `CERT` stand for the user's private key
    /// file and the certificate saved to a file.
    pub ssh_command: Option<String>,
}

/// One `known_hosts` line for a guest's forwarded SSH port: `[host]:port KEYTYPE BASE64`
/// (the comment of the key line is dropped).
pub fn known_hosts_line(host: &str, port: u16, key_line: &str) -> String {
    let key: Vec<&str> = key_line.split_whitespace().take(2).collect();
    format!("[{host}]:{port} {}", key.join(" "))
}

#[cfg(test)]
#[test]
fn known_hosts_line_drops_the_comment() {
    assert_eq!(known_hosts_line("127.0.0.1", 22201, "ssh-ed25519 AAAAC3 paddock-x-1"), "[127.0.0.1]:22201 ssh-ed25519 AAAAC3");
}

/// The `ssh` command for an endpoint; `with_cert` adds the `CertificateFile` option.
pub fn ssh_command(e: &Endpoint, with_cert: bool) -> String {
    let cert = if with_cert { " -o CertificateFile=CERT" } else { "" };
    format!("ssh -p {} -i KEY{cert} {}@{}", e.port, e.user, e.host)
}

/// The VMs grants live on, and commands run in them. Implemented over the VM
/// manager and the SSH client by the daemon; tests pass their own explicitly.
pub trait Machines: Send + Sync + 'static {
    /// Boots a fresh VM of `image` for grant `grant_id`, trusting `ca_line`
    /// when the image trusts the fleet CA, kept at most `until`; returns when its SSH answers.
    fn launch<'a>(
        &'a self,
        grant_id: &'a str,
        image: &'a Image,
        ca_line: &'a str,
        until: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Placed, MachineError>>;
    /// Where an existing VM (a held run's) is reached.
    fn locate<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<Placed, MachineError>>;
    /// Keeps a released VM until `until` (may shorten an earlier hold).
    fn hold<'a>(&'a self, vm: &'a str, until: DateTime<Utc>) -> BoxFuture<'a, Result<(), MachineError>>;
    /// Tears the VM down now.
    fn destroy<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<(), MachineError>>;
    /// Runs key install/removal operations in the VM as the image's login user.
    fn run_ops<'a>(&'a self, vm: &'a str, image: &'a Image, ops: Vec<keys::KeyOp>) -> BoxFuture<'a, Result<(), MachineError>>;
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A VM a grant uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub name: String,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{step} VM {vm}: {message}")]
pub struct MachineError {
    /// e.g. "launching", "holding", "installing keys in".
    pub step: &'static str,
    pub vm: String,
    pub message: String,
}

/// Why an access operation failed; the API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("user `{0}` is not in fleet.toml")]
    UnknownUser(String),
    #[error("no image named `{0}`")]
    UnknownImage(String),
    #[error("no run {0}")]
    UnknownRun(String),
    #[error("no access request {0}")]
    UnknownGrant(String),
    /// The policy or a role forbids it; the text says why.
    #[error("{0}")]
    Forbidden(String),
    /// The request is malformed (zero duration, empty reason).
    #[error("{0}")]
    Invalid(String),
    #[error("access request {id} is {state}; cannot {action} it")]
    WrongState { id: String, state: GrantState, action: &'static str },
    #[error("preparing grant {id} failed: {message}")]
    Provision { id: String, message: String },
    #[error("issuing a certificate for grant {id}")]
    Certificate { id: String, source: CaError },
    #[error("the access store failed")]
    Store(#[from] StoreError),
    #[error("the access service has stopped")]
    Stopped,
}
