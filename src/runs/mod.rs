//! Build runs: the run state machine, the coordinator that owns every run, the
//! executor that carries one run from VM to result, and the result document.

mod coordinator;
mod execute;
mod handle;
pub mod result;
mod state;
pub mod transition;

pub use coordinator::Coordinator;
pub use execute::{Executor, ExecutorConfig};
pub use handle::{RunsError, RunsHandle, Trigger};
pub use state::{Outcome, RunState};
pub use transition::TransitionError;

#[cfg(test)]
mod tests;
