//! A run's lifecycle as an explicit enum, with the legal transitions spelled out.

use std::fmt;

/// Where a run is. Persisted as text in the `runs` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Waiting for a host with room.
    Queued,
    /// A host was chosen; the VM is being defined.
    Provisioning,
    /// The VM is starting; waiting for its SSH.
    Booting,
    /// Executing step `k` (0-based).
    Running(u32),
    /// Fetching artifacts.
    Collecting,
    /// Building the result document.
    Reporting,
    /// Finished and successful.
    Done,
    /// Finished, failed, and its VM is kept for a maintainer until the hold ends.
    Held,
    /// Finished and failed (a build failure, an infrastructure failure, or interrupted).
    Failed,
    /// Cancelled through the API or CLI.
    Cancelled,
}

impl RunState {
    /// One of each kind of state (`Running` stands for every step).
    pub const KINDS: [RunState; 10] = [
        RunState::Queued,
        RunState::Provisioning,
        RunState::Booting,
        RunState::Running(0),
        RunState::Collecting,
        RunState::Reporting,
        RunState::Done,
        RunState::Held,
        RunState::Failed,
        RunState::Cancelled,
    ];

    /// The state's kind as a filter names it: its stored text, `running` for any step.
    pub fn kind_name(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Provisioning => "provisioning",
            RunState::Booting => "booting",
            RunState::Running(_) => "running",
            RunState::Collecting => "collecting",
            RunState::Reporting => "reporting",
            RunState::Done => "done",
            RunState::Held => "held",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Done | RunState::Failed | RunState::Cancelled)
    }

    /// Whether the run still occupies (or is about to occupy) a VM and a matrix slot.
    pub fn is_active(self) -> bool {
        !self.is_terminal() && self != RunState::Held
    }

    /// The guard for every transition the coordinator makes.
    pub fn can_become(self, next: RunState) -> bool {
        use RunState::*;
        match (self, next) {
            // Anything not finished can be cancelled or fail.
            (s, Cancelled | Failed) => !s.is_terminal(),
            (Queued, Provisioning) => true,
            (Provisioning, Booting) => true,
            // A failed launch goes back to the queue for another host.
            (Provisioning | Booting, Queued) => true,
            (Booting, Running(0)) => true,
            (Running(a), Running(b)) => b == a + 1,
            (Running(_), Collecting) => true,
            (Booting | Running(_) | Collecting, Reporting) => true,
            (Reporting, Done | Held) => true,
            (Queued | Provisioning | Booting | Running(_) | Collecting | Reporting | Done | Held, _) => false,
            (Failed | Cancelled, _) => false,
        }
    }

    pub fn as_db(self) -> String {
        match self {
            RunState::Running(k) => format!("running:{k}"),
            other => other.to_string(),
        }
    }

    pub fn from_db(s: &str) -> Option<RunState> {
        use RunState::*;
        Some(match s {
            "queued" => Queued,
            "provisioning" => Provisioning,
            "booting" => Booting,
            "collecting" => Collecting,
            "reporting" => Reporting,
            "done" => Done,
            "held" => Held,
            "failed" => Failed,
            "cancelled" => Cancelled,
            other => Running(other.strip_prefix("running:")?.parse().ok()?),
        })
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunState::Queued => f.write_str("queued"),
            RunState::Provisioning => f.write_str("provisioning"),
            RunState::Booting => f.write_str("booting"),
            RunState::Running(k) => write!(f, "running step {}", k + 1),
            RunState::Collecting => f.write_str("collecting"),
            RunState::Reporting => f.write_str("reporting"),
            RunState::Done => f.write_str("done"),
            RunState::Held => f.write_str("held"),
            RunState::Failed => f.write_str("failed"),
            RunState::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// How a finished run ended; the recorder sees this as `success` plus paddock's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A step failed: the build's fault.
    BuildFailure,
    /// The VM could not be booted, reached or kept alive: the lab's fault.
    Infrastructure,
    Cancelled,
    /// The daemon died while the run was in flight.
    Interrupted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::BuildFailure => "build-failure",
            Outcome::Infrastructure => "infrastructure",
            Outcome::Cancelled => "cancelled",
            Outcome::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        [Outcome::Success, Outcome::BuildFailure, Outcome::Infrastructure, Outcome::Cancelled, Outcome::Interrupted]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::RunState::*;
    use super::*;

    #[test]
    fn the_happy_path_is_legal() {
        let path = [Queued, Provisioning, Booting, Running(0), Running(1), Collecting, Reporting, Done];
        for w in path.windows(2) {
            assert!(w[0].can_become(w[1]), "{:?} -> {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn illegal_moves_are_refused() {
        assert!(!Queued.can_become(Running(0)));
        assert!(!Running(0).can_become(Running(2)));
        assert!(!Done.can_become(Failed));
        assert!(!Cancelled.can_become(Queued));
        assert!(!Held.can_become(Running(0)));
        assert!(Held.can_become(Failed));
        assert!(Running(3).can_become(Cancelled));
    }

    #[test]
    fn db_text_round_trips() {
        for s in [Queued, Provisioning, Booting, Running(0), Running(7), Collecting, Reporting, Done, Held, Failed, Cancelled] {
            assert_eq!(RunState::from_db(&s.as_db()), Some(s));
        }
        assert_eq!(RunState::from_db("running:x"), None);
    }
}
