//! The public face of the run coordinator: a cheap, cloneable handle that
//! sends commands to the one task owning every run.

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::store::StoreError;

/// Why a run was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Schedule { scheduled_at: DateTime<Utc>, missed: bool },
    Manual { by: String },
    Rerun { of: String, by: String },
}

impl Trigger {
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Schedule { .. } => "schedule",
            Trigger::Manual { .. } => "manual",
            Trigger::Rerun { .. } => "rerun",
        }
    }
    pub fn requested_by(&self) -> Option<&str> {
        match self {
            Trigger::Schedule { .. } => None,
            Trigger::Manual { by } | Trigger::Rerun { by, .. } => Some(by),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error("no job named `{job}`; known: {known}")]
    UnknownJob { job: String, known: String },
    #[error("job `{job}` does not run on image `{image}`; its images: {known}")]
    UnknownImage { job: String, image: String, known: String },
    #[error("no run `{0}`")]
    UnknownRun(String),
    #[error("run `{id}` is {state} and cannot be cancelled")]
    NotCancellable { id: String, state: String },
    #[error("the run store failed")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transition(#[from] super::transition::TransitionError),
    #[error("the run coordinator has stopped")]
    Stopped,
}

pub(super) enum Command {
    Trigger {
        job: String,
        image: Option<String>,
        trigger: Trigger,
        reply: oneshot::Sender<Result<Vec<String>, RunsError>>,
    },
    Cancel {
        id: String,
        by: String,
        reply: oneshot::Sender<Result<(), RunsError>>,
    },
    /// A run's task ended; `retry` is the run queued to re-run it, for the coordinator to start.
    Finished {
        id: String,
        retry: Option<Box<crate::store::RunRow>>,
    },
    /// Fault injection for the supervisor's test: the coordinator panics, as a bug would.
    InjectPanic,
}

/// Talks to the run coordinator.
#[derive(Clone)]
pub struct RunsHandle {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) health: crate::supervisor::Health,
}

impl RunsHandle {
    /// Starts one run per image of `job` (or only `image`); returns the new run ids.
    /// A scheduled fire for an image whose previous run is still going is skipped
    /// (and recorded as such), so the list may be shorter than the matrix.
    pub async fn trigger(&self, job: &str, image: Option<&str>, trigger: Trigger) -> Result<Vec<String>, RunsError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Trigger { job: job.into(), image: image.map(str::to_string), trigger, reply };
        self.tx.send(cmd).await.map_err(|_| RunsError::Stopped)?;
        rx.await.map_err(|_| RunsError::Stopped)?
    }

    /// How the coordinator has fared: restarts after failures, and the last failure.
    pub fn health(&self) -> crate::supervisor::Health {
        self.health.clone()
    }

    /// Fault injection: makes the coordinator panic, as a bug in it would. The supervisor's
    /// test calls it; no endpoint does.
    pub async fn inject_coordinator_panic(&self) {
        let _ = self.tx.send(Command::InjectPanic).await;
    }

    /// Cancels a queued or running run; its VM is torn down.
    pub async fn cancel(&self, id: &str, by: &str) -> Result<(), RunsError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Cancel { id: id.into(), by: by.into(), reply }).await.map_err(|_| RunsError::Stopped)?;
        rx.await.map_err(|_| RunsError::Stopped)?
    }
}
