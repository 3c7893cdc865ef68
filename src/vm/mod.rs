//! paddock's VMs: the lifecycle state machine, placement over hosts, SSH port
//! forwards, disposable overlays, boot readiness, reconciliation, and the
//! `VmManager` that owns them all.

pub mod console_cap;
pub mod images;
pub mod login;
mod manager;
pub mod overlay;
pub mod placement;
pub mod ports;
pub mod readiness;
pub mod reconcile;
pub mod seed;
mod state;
pub mod template;

pub use manager::{
    Drained, HostSnapshot, LaunchError, LaunchRequest, LaunchStage, ManagerConfig, PoolListing, READY_POOL_RUN, ReadyVm, Snapshot, Started,
    VmEnded, VmManager, VmSnapshot,
};
pub use readiness::Readiness;
pub use reconcile::{LiveSet, ReconcileReport, reconcile};
pub use state::VmState;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("no configured host can ever run image {image} ({arch}): {why}")]
    NoHost { image: String, arch: String, why: String },
    /// An infrastructure failure: the run never got a usable VM.
    #[error("launching image {image} failed after {attempts} attempt(s)")]
    LaunchFailed {
        image: String,
        attempts: u32,
        /// Boxed, so that `VmError` stays small.
        #[source]
        error: Box<LaunchError>,
        console_tail: String,
    },
    /// Every host that could take the image is waiting for an upload of it that hangs.
    #[error("image {image} cannot reach a host: {why}")]
    UploadHung { image: String, why: String },
    #[error("no host named {host}")]
    UnknownHost { host: String },
    #[error("no VM named {name}")]
    NotFound { name: String },
    #[error("VM {name} is {state}")]
    WrongState { name: String, state: VmState },
    #[error("VM {name} was destroyed before it became ready")]
    Cancelled { name: String },
    #[error("removing VM {name} failed: {error}")]
    Teardown { name: String, error: String },
    #[error("cannot ask the host of VM {name} about it: {error}")]
    Host { name: String, error: String },
    #[error("the VM manager has stopped")]
    ManagerGone,
    #[error("VM store")]
    Store(#[from] crate::store::StoreError),
}
