//! The dashboard in headless Chromium.
