//! A host's admin and health state: drained by an admin or quarantined by
//! paddock after failed launches, and the launch history that decides it.

use chrono::{DateTime, Utc};

/// Why a host takes no new VMs (running ones finish).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    /// An admin asked for it (`paddock host drain`).
    Drained { reason: String, by: String, at: DateTime<Utc> },
    /// Launches kept failing there; an admin must resume it.
    Quarantined { reason: String, at: DateTime<Utc> },
}

impl Block {
    pub fn kind(&self) -> &'static str {
        match self {
            Block::Drained { .. } => "drained",
            Block::Quarantined { .. } => "quarantined",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Block::Drained { reason, .. } | Block::Quarantined { reason, .. } => reason,
        }
    }

    pub fn since(&self) -> DateTime<Utc> {
        match self {
            Block::Drained { at, .. } | Block::Quarantined { at, .. } => *at,
        }
    }
}

/// Launch counts of one host since the daemon's store began.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostHealth {
    pub launches: u64,
    pub failures: u64,
    /// Failed launches since the last good one.
    pub consecutive_failures: u32,
    /// Mean boot time of good launches, in milliseconds.
    pub mean_boot_ms: Option<u64>,
    pub last_boot_ms: Option<u64>,
}
