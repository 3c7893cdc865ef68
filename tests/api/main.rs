//! The daemon's face end to end: router tests without a socket, the `paddock`
//! CLI against a server on port 0, and the dashboard in headless Chromium.

mod cli;
mod common;
mod dashboard;
mod router;
