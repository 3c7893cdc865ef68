//! Build runs: the run state machine, the coordinator that owns every run, and
//! the result document each finished run produces.

mod handle;
mod state;

pub use handle::{RunsError, RunsHandle, Trigger};
pub use state::{Outcome, RunState};
