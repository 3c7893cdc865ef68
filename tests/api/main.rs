//! The daemon's face end to end: router tests without a socket, the `paddock`
//! CLI against a server on port 0, and the dashboard in headless Chromium.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod common;
mod dashboard;
mod machines;
mod router;
mod templates;
