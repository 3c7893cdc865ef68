//! Donated hosts: the onboarding check (`paddock host check`), image files and
//! their volume names on hosts, and each host's admin and health state (drain,
//! quarantine, launch history).
//!
//! Nothing here calls libvirt: probes and uploads go through `crate::libvirt`.

pub mod check;
pub mod health;
pub mod images;

pub use check::{CheckLine, Level, Verdict, assess};
pub use health::{Block, HostHealth};
pub use images::{ImageFile, image_files, volume_name};
