//! paddock: a VM-fleet orchestrator for CI labs.
//!
//! See `ARCHITECTURE.md` for the map of modules and their invariants.

pub mod config;
pub mod store;
pub mod libvirt;
pub mod vm;
