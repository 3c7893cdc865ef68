//! The one path every warm-start template is built by (issue 18): its domain is rendered,
//! defined and started, logged into with the template's own host key, checked, its memory
//! saved (the domain stops) and the domain undefined; a build that fails anywhere leaves no
//! domain behind, and the registry knows of the build (its room on the host, the reconciler's
//! live set) exactly while it runs.
//!
//! What differs between the three kinds of template is handed in as a [`Blueprint`]: where
//! the frozen disk lives (a file of the template's folder, none for a kernel image, a volume
//! in the host's pool), how the identity reaches the guest (a seed, or the kernel command
//! line), where the console goes, what must be true in the guest before the save, and where
//! the host writes the memory image and how the saved XML comes back. Each kind prepares its
//! own parts first and finishes its own way: `warm.rs` (`build_template`: a local folder, for
//! disk and kernel images), `kernel.rs`, `pool.rs`.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::super::Attempt;
use super::WarmError;
use crate::config::Image;
use crate::libvirt::domain_xml::Handover;
use crate::libvirt::warm::WarmOp;
use crate::libvirt::{self, ConsoleSink, ConsoleXml, DiskSpec, DomainSpec, Mark};
use crate::vm::login::{Pace, Polled, Probe};
use crate::vm::seed::Identity;
use crate::vm::template::{self, pool as tpool};

/// What a template build boots, and how its memory is saved.
pub(super) struct Blueprint<'a> {
    pub(super) domain: &'a str,
    /// The SSH port its XML forwards (the launch's own; clones get theirs).
    pub(super) port: u16,
    /// The image as this host sees it (on a pool host: naming its base volume).
    pub(super) image: &'a Image,
    /// The template's own identity: the login checks its host key.
    pub(super) identity: &'a Identity,
    /// The frozen disk: a file, a pool volume, or none (a kernel image).
    pub(super) disk: Option<DiskSpec>,
    pub(super) handover: Handover<'a>,
    pub(super) console: BuildConsole<'a>,
    pub(super) settle: Settle,
    /// The pause between login attempts.
    pub(super) poll: Duration,
    pub(super) save: SaveTo<'a>,
}

/// Where a template's console goes while it is built.
pub(super) enum BuildConsole<'a> {
    /// A file of the template's folder that QEMU writes (a host sharing the daemon's files).
    File(&'a Path),
    /// A pty copied over the connection into this file (a pool host, maybe another machine).
    Copied(&'a Path),
}

/// What must be true in the guest before it is saved.
pub(super) enum Settle {
    /// cloud-init has finished (a disk image): a clone must not redo the first boot.
    CloudInit,
    /// The kernel's VMGENID driver is bound and the guest agent answers (a kernel image):
    /// what each clone's identity push relies on (`kernel.rs`).
    VmGenId,
}

impl Settle {
    /// The command run over the template's login, and the words its failures use.
    fn command(&self) -> (&'static str, &'static str, &'static str) {
        match self {
            Settle::CloudInit => (
                "cloud-init status --wait >/dev/null 2>&1; sync",
                "waiting for cloud-init",
                "cloud-init did not finish before the boot timeout",
            ),
            Settle::VmGenId => {
                (super::kernel::VMGENID_PROBE, "looking for the VMGENID driver", "the VMGENID probe did not finish before the boot timeout")
            }
        }
    }
}

/// Where the host writes the template's memory image, and where its saved XML is read back.
pub(super) enum SaveTo<'a> {
    /// A file of the template's folder, read back by the daemon itself.
    File(&'a Path),
    /// A volume of the host's pool: its path on the host and its name (read back over the
    /// connection).
    Volume { path: &'a str, volume: &'a str },
}

impl Attempt {
    /// Runs `build`, the build of the template whose domain is `domain`, with the registry
    /// knowing of it meanwhile (it holds room on this host and reconciliation leaves its domain
    /// alone); if it fails, its domain is destroyed and undefined. The rest of a failed build
    /// (files, volumes) is its caller's to remove.
    pub(super) async fn building<T>(&self, domain: &str, build: impl Future<Output = Result<T, WarmError>>) -> Result<T, WarmError> {
        self.templates.building_at(domain, &self.host.name, &self.image);
        let built = build.await;
        self.templates.building(domain, false);
        if built.is_err() {
            let _ = self.handle.destroy(domain).await;
            let _ = self.handle.undefine(domain).await;
        }
        built
    }

    /// Boots `bp`'s domain, logs in with its identity's host key, waits for what `bp.settle`
    /// says, saves its memory where `bp.save` says and undefines it: the domain XML libvirt
    /// saved. Every wait ends at the image's boot timeout, counted from the start.
    pub(super) async fn boot_and_save(&self, bp: Blueprint<'_>, domain_type: &'static str) -> Result<String, WarmError> {
        let step = |s: String| WarmError::Build { image: self.image.name.clone(), step: s };
        let lv = |e: libvirt::LibvirtError| step(crate::error::chain(&e));
        let mark =
            Mark { run_id: format!("template:{}", self.image.name), instance: self.mark.instance.clone(), created_at: chrono::Utc::now() };
        let xml = libvirt::domain_xml::render_with(
            &DomainSpec {
                name: bp.domain,
                image: bp.image,
                host: &self.host,
                domain_type,
                mark: &mark,
                ssh_port: bp.port,
                disk: bp.disk,
                console: match bp.console {
                    BuildConsole::File(path) => ConsoleXml::File(path),
                    BuildConsole::Copied(_) => ConsoleXml::Pty,
                },
                authorized_keys: &self.authorized_keys,
                ca_key: self.ca_key.as_deref(),
            },
            &bp.handover,
        );
        self.handle.define(bp.domain, xml).await.map_err(lv)?;
        match bp.console {
            BuildConsole::File(_) => self.handle.start(bp.domain).await,
            BuildConsole::Copied(path) => self.handle.start_with_console(bp.domain, ConsoleSink::new(path)).await,
        }
        .map_err(lv)?;
        let deadline = Instant::now() + self.boot_timeout;
        let login = self.login.as_ref().ok_or_else(|| step("no login".into()))?;
        let pace = Pace { every: bp.poll, probe: Probe::Banner };
        let session = match self.poll_login(login, bp.domain, bp.port, bp.identity.public_key(), deadline, pace).await {
            Polled::Session(s, _) => s,
            Polled::Answered(e) => return Err(step(format!("login refused: {}", crate::error::chain(&e)))),
            Polled::Timeout => return Err(step(format!("no login within {:?}", self.boot_timeout))),
            Polled::Stopped => return Err(step("the template stopped while booting".into())),
        };
        let (command, doing, late) = bp.settle.command();
        let left = deadline.saturating_duration_since(Instant::now());
        let out = match tokio::time::timeout(left, session.exec_collect(command, Vec::new())).await {
            Ok(Ok((stdout, _, _))) => stdout,
            Ok(Err(e)) => return Err(step(format!("{doing}: {}", crate::error::chain(&e)))),
            Err(_) => return Err(step(late.into())),
        };
        session.disconnect().await;
        match bp.settle {
            Settle::CloudInit => {}
            Settle::VmGenId => self.ready_to_clone(&out, bp.domain, deadline).await.map_err(step)?,
        }
        let path = match bp.save {
            SaveTo::File(file) => file.display().to_string(),
            SaveTo::Volume { path, .. } => path.to_string(),
        };
        self.handle.warm(WarmOp::Save { name: bp.domain.to_string(), path }).await.map_err(lv)?;
        self.handle.undefine(bp.domain).await.map_err(lv)?;
        match bp.save {
            SaveTo::File(file) => template::read_save_xml(file).map_err(|e| step(crate::error::chain(&e))),
            SaveTo::Volume { volume, .. } => {
                let (v, scratch) = (volume.to_string(), tpool::scratch(&self.state_dir, bp.domain));
                self.on_pool("reading the saved domain XML", move |u, p| tpool::read_saved_xml(u, p, &v, &scratch)).await
            }
        }
    }
}
