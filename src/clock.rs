//! Wall-clock time that follows tokio's clock, so that schedule tests can run
//! under `tokio::time::pause()` and still see calendar dates move.
//!
//! Implementation note: `chrono::Utc::now()` ignores tokio's paused clock. A
//! `Clock` remembers one (wall time, tokio instant) pair and adds tokio's
//! elapsed time to it; in production the two advance together anyway.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: DateTime<Utc>,
    at: Instant,
}

impl Clock {
    /// A clock reading the real time.
    pub fn system() -> Clock {
        Clock { wall: Utc::now(), at: Instant::now() }
    }

    /// A clock that reads `start` now and advances with tokio's (possibly paused) clock.
    pub fn starting_at(start: DateTime<Utc>) -> Clock {
        Clock { wall: start, at: Instant::now() }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = Instant::now().saturating_duration_since(self.at);
        self.wall + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }

    /// Sleeps until the wall time `t` (returns at once if it has passed).
    pub async fn sleep_until(&self, t: DateTime<Utc>) {
        let wait = (t - self.now()).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
    }
}
