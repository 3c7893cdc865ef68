//! paddock: a VM-fleet orchestrator for CI labs.
//!
//! See `ARCHITECTURE.md` for the map of modules and their invariants.

pub mod access;
pub mod api;
pub mod checksums;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dashboard;
pub mod error;
pub mod hosts;
pub mod libvirt;
pub mod listener;
pub mod machines;
pub mod metrics;
pub mod outbox;
pub mod recorder;
pub mod runs;
pub mod scheduler;
pub mod ssh;
pub mod steps;
pub mod store;
pub mod supervisor;
pub mod vm;
