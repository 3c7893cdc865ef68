//! Build runs: the run state machine, the coordinator that owns every run, and
//! the result document each finished run produces.

mod state;

pub use state::{Outcome, RunState};
