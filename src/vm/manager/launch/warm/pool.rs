//! A warm launch attempt on a host with an `image_pool` (issue 18): the template is volumes
//! in that pool (`vm::template::pool`), built by the host's own libvirt, and each clone's
//! overlay is a volume there backed by the template's disk. The daemon writes no file the
//! host reads: the save file's header is rewritten in place over a libvirt stream, the
//! restore names the save volume's path on the host, and the clone's console is a pty read
//! over the connection like any guest's on a pool host. Identity and login are as local.

use std::path::PathBuf;

use tokio::time::Instant;

use super::super::Booted;
use super::build::{Blueprint, BuildConsole, SaveTo, Settle};
use super::{Phases, WarmError};
use crate::config::Boot;
use crate::libvirt::DiskSpec;
use crate::libvirt::domain_xml::Handover;
use crate::libvirt::storage;
use crate::libvirt::warm_pool;
use crate::vm::seed::{self, Identity, SeedSpec};
use crate::vm::template::Template;
use crate::vm::template::pool::{self as tpool, PoolTemplate, PoolTemplateError};

impl super::super::Attempt {
    /// A blocking storage call on this attempt's host within the host's call deadline.
    pub(super) async fn on_pool<T: Send + 'static>(
        &self,
        step: &'static str,
        f: impl FnOnce(&str, &str) -> Result<T, PoolTemplateError> + Send + 'static,
    ) -> Result<T, WarmError> {
        let (uri, pool) = (self.host.uri.clone(), self.pool.as_ref().map(|(p, _)| p.clone()).unwrap_or_default());
        let after = self.handle.options().call_timeout;
        let what = format!("{step} on host {}", self.host.name);
        let fail = |source| WarmError::Pool { vm: self.name.clone(), host: self.host.name.clone(), step, source };
        match tokio::time::timeout(after, tokio::task::spawn_blocking(move || f(&uri, &pool))).await {
            Ok(Ok(r)) => r.map_err(fail),
            Ok(Err(e)) => Err(fail(PoolTemplateError::Storage(storage::StorageError::Task { what, reason: e.to_string() }))),
            Err(_) => Err(fail(PoolTemplateError::Storage(storage::StorageError::Timeout { what, after }))),
        }
    }

    /// Restores a clone of the image's template in the host's pool, building it first if
    /// it is missing or stale. The clone's overlay volume is removed again if this fails.
    pub(super) async fn warm_boot_pool(&self, domain_type: &'static str) -> Result<Booted, WarmError> {
        let image = self.image.name.clone();
        let key = self.template_key().await?;
        let instance = self.mark.instance.clone();
        let base = tpool::base_name(&instance, &image, &key);
        // One build or restore at a time per template, as for local ones.
        let lock = self.templates.lock(&PathBuf::from(format!("pool:{}/{base}", self.host.name)));
        let guard = lock.lock().await;
        let (i2, b2) = (instance.clone(), base.clone());
        let found = self.on_pool("reading the template's manifest", move |u, p| tpool::load(u, p, &i2, &b2)).await?;
        let tpl = match found {
            Some(t) => t,
            None => {
                let t = self.build_pool_template(&base, &key, domain_type).await?;
                let (i2, im, keep) = (instance.clone(), image.clone(), base.clone());
                match self.on_pool("removing superseded templates", move |u, p| Ok(tpool::remove_superseded(u, p, &i2, &im, &keep)?)).await
                {
                    Ok(removed) => {
                        for r in removed {
                            tracing::info!(template = %r, host = %self.host.name, "superseded template removed from the pool");
                        }
                    }
                    Err(e) => tracing::warn!(host = %self.host.name, error = %crate::error::chain(&e), "superseded templates stay"),
                }
                t
            }
        };
        let vol = self.pool_overlay.clone().expect("may_start_warm checked the overlay volume");
        let restored = self.restore_pool_clone(&tpl, &vol).await;
        drop(guard);
        let restored = match restored {
            Ok(at) => {
                let mut phases = Phases::since(at);
                phases.mark("header+restore");
                self.after_restore(at, key, phases).await
            }
            Err(e) => Err(e),
        };
        if restored.is_err() {
            let _ = self.handle.destroy(&self.name).await;
            let _ = self.handle.undefine(&self.name).await;
            let v = vol.clone();
            let _ = self.on_pool("removing the clone's overlay volume", move |u, p| Ok(storage::delete_volume(u, p, &v)?)).await;
        }
        restored
    }

    /// The clone's overlay volume on the template's disk, its XML into the save header, and
    /// the restore (under the template's lock). When the restore began.
    async fn restore_pool_clone(&self, tpl: &PoolTemplate, vol: &str) -> Result<Instant, WarmError> {
        let capacity = self.pool.as_ref().and_then(|(_, v)| v.disk.as_ref()).map(|(_, size)| *size).unwrap_or(0);
        let (v, disk) = (vol.to_string(), tpl.disk.clone());
        let overlay = self
            .on_pool("creating the clone's overlay volume", move |u, p| Ok(storage::create_overlay(u, p, &v, &disk, "qcow2", capacity)?))
            .await?;
        // `template::clone_xml` finds the template's disk as `Template::disk()`, a file of a
        // template folder: the pool template's disk volume path is put in its place first.
        let stand_in =
            Template { dir: PathBuf::from("/paddock-pool-template"), key: tpl.key.clone(), domain: tpl.domain.clone(), port: tpl.port };
        let saved = tpl.saved_xml.replace(&format!("file='{}'", tpl.disk), &format!("file='{}'", stand_in.disk().display()));
        let xml = self
            .clone_xml(&saved, &stand_in, Some(std::path::Path::new(&overlay)))
            .map_err(|source| WarmError::Template { image: self.image.name.clone(), source })?;
        let started = Instant::now();
        let (save_vol, scratch) = (tpl.volume(tpool::SAVE), tpool::scratch(&self.state_dir, &self.name));
        self.on_pool("writing the clone's XML into the save header", move |u, p| tpool::rewrite_header(u, p, &save_vol, &xml, &scratch))
            .await?;
        self.restore(&tpl.save).await?;
        Ok(started)
    }

    /// Boots the image once on this host from volumes of its pool, waits until SSH answers
    /// and cloud-init is done, saves its memory into the template's save volume, and
    /// writes the manifest last. On failure nothing of it stays.
    async fn build_pool_template(&self, base: &str, key: &str, domain_type: &'static str) -> Result<PoolTemplate, WarmError> {
        let image = self.image.name.clone();
        let domain = tpool::domain_name(&self.mark.instance, key);
        tracing::info!(image = %image, host = %self.host.name, template = %base, "building the warm-start template in the host's pool");
        // Holds room on this host while it boots, as a local build does.
        let built = self.building(&domain, self.boot_and_save_pool(base, key, &domain, domain_type)).await;
        let console = self.state_dir.join("consoles").join(format!("{domain}.log"));
        match built {
            Ok(t) => {
                let _ = std::fs::remove_file(&console);
                tracing::info!(image = %image, host = %self.host.name, template = %base, "warm-start template ready in the host's pool");
                Ok(t)
            }
            Err(e) => {
                let b = base.to_string();
                if let Err(r) = self.on_pool("removing the cut-short template", move |u, p| Ok(tpool::remove(u, p, &b)?)).await {
                    tracing::warn!(template = %base, error = %crate::error::chain(&r), "the cut-short template's volumes stay for reconciliation");
                }
                Err(e)
            }
        }
    }

    async fn boot_and_save_pool(&self, base: &str, key: &str, domain: &str, domain_type: &'static str) -> Result<PoolTemplate, WarmError> {
        let step = |s: String| WarmError::Build { image: self.image.name.clone(), step: s };
        let Some((_, version)) = &self.pool else { return Err(step("no pool version".into())) };
        let (format, size) = version.disk.clone().ok_or_else(|| step("no base format recorded for the image's disk".into()))?;
        let boot_image = version.boot_image(&self.image);
        let Boot::Disk { base: base_vol } = &boot_image.boot else { return Err(step("not a disk image".into())) };
        let vol = |role: &str| format!("{base}{role}");

        // Any leftover of an earlier try of the same template goes first.
        let b = base.to_string();
        self.on_pool("clearing an earlier try", move |u, p| Ok(tpool::remove(u, p, &b)?)).await?;

        // The seed, staged privately, goes up as a volume; no local copy stays.
        let identity = Identity::generate(domain).map_err(|e| step(crate::error::chain(&e)))?;
        let spec = SeedSpec {
            name: domain,
            os: self.image.os,
            user: &self.image.user,
            authorized_keys: &self.authorized_keys,
            ca_key: self.ca_key.as_deref(),
            identity: &identity,
        };
        let local = seed::path_for(&self.state_dir, domain);
        if let Some(dir) = local.parent() {
            std::fs::create_dir_all(dir).map_err(|e| step(format!("creating {}: {e}", dir.display())))?;
        }
        seed::write(&spec, &local).await.map_err(|e| step(crate::error::chain(&e)))?;
        let bytes = std::fs::read(&local).map_err(|e| step(format!("reading {}: {e}", local.display())));
        let _ = std::fs::remove_file(&local);
        let (seed_vol, scratch) = (vol(tpool::SEED), tpool::scratch(&self.state_dir, domain));
        let bytes = bytes?;
        let seed_path =
            self.on_pool("uploading the template's seed", move |u, p| Ok(warm_pool::put_bytes(u, p, &seed_vol, &bytes, &scratch)?)).await?;

        let (disk_vol, backing) = (vol(tpool::DISK), base_vol.display().to_string());
        let disk = self
            .on_pool("creating the template's disk volume", move |u, p| {
                Ok(storage::create_overlay(u, p, &disk_vol, &backing, &format, size)?)
            })
            .await?;
        let save_vol = vol(tpool::SAVE);
        let save = self.on_pool("creating the template's save volume", move |u, p| Ok(warm_pool::create_empty(u, p, &save_vol)?)).await?;

        let (seed_path, console) = (PathBuf::from(seed_path), self.state_dir.join("consoles").join(format!("{domain}.log")));
        let blueprint = Blueprint {
            domain,
            port: self.port,
            image: &boot_image,
            identity: &identity,
            disk: Some(DiskSpec { path: PathBuf::from(&disk), format: "qcow2".into() }),
            handover: Handover::Seed(&seed_path),
            console: BuildConsole::Copied(&console),
            settle: Settle::CloudInit,
            poll: std::time::Duration::from_millis(500),
            save: SaveTo::Volume { path: &save, volume: &vol(tpool::SAVE) },
        };
        let saved_xml = self.boot_and_save(blueprint, domain_type).await?;
        let tpl = PoolTemplate {
            base: base.to_string(),
            image: self.image.name.clone(),
            key: key.to_string(),
            domain: domain.to_string(),
            port: self.port,
            saved_xml,
            disk,
            save,
        };
        // The manifest last: only now is the template finished.
        let (mv, text, scratch) = (vol(tpool::MANIFEST), tpool::manifest_json(&tpl), tpool::scratch(&self.state_dir, domain));
        self.on_pool("writing the template's manifest", move |u, p| Ok(warm_pool::put_bytes(u, p, &mv, text.as_bytes(), &scratch)?))
            .await?;
        Ok(tpl)
    }
}
