//! Image volumes in hosts' `image_pool`s: uploading each image's current
//! version, noticing changed files, and removing old versions no live VM
//! boots from.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::checksums::Checksums;
use crate::config::Image;
use crate::libvirt::error_chain;
use crate::libvirt::storage;
use crate::store::HostVolume;
use crate::vm::images::{self, PoolImage};

use super::Cmd;
use super::owner::Owner;

/// One image in one host's pool.
#[derive(Default)]
pub(super) struct PoolSlot {
    /// The version there, once uploaded.
    pub(super) current: Option<PoolImage>,
    /// An upload or a removal of old versions is running: never both at once,
    /// so a removal cannot take a volume an upload is writing.
    pub(super) busy: bool,
    /// Old versions should be removed once `busy` clears.
    pub(super) sweep_wanted: bool,
    /// After a failed upload, the next try waits until then.
    pub(super) retry_at: Option<Instant>,
    /// The upload running now missed `upload_timeout`: why (naming host, image and
    /// deadline). Launches no other host can take fail with it.
    pub(super) hung: Option<String>,
}

/// How often image files are checked for changes (size and mtime).
const IMAGE_CHECK: Duration = Duration::from_secs(5);

impl Owner {
    /// Whether host `i` can boot `image` as it is now: always for hosts that
    /// read files by path; for pool hosts, when the uploaded version was read
    /// from the same files with the size and mtime they have now.
    pub(super) fn image_present(&self, i: usize, image: &Image) -> bool {
        if self.hosts[i].config.image_pool.is_none() {
            return true;
        }
        let Some(current) = self.pools.get(&(i, image.name.clone())).and_then(|p| p.current.as_ref()) else { return false };
        images::is_current(current, image)
    }

    /// Starts uploading `image` to every up pool host that may run it and
    /// lacks its current version.
    pub(super) fn distribute(&mut self, image: &Image) {
        self.images.insert(image.name.clone(), image.clone());
        let Some(tx) = self.tx.upgrade() else { return };
        let now = Instant::now();
        for i in 0..self.hosts.len() {
            let config = &self.hosts[i].config;
            let Some(pool) = config.image_pool.clone() else { continue };
            if !config.limits.allows_image(&image.name) || !self.hosts[i].handle.status().is_up() || self.image_present(i, image) {
                continue;
            }
            let (uri, host_name) = (config.uri.clone(), config.name.clone());
            let deadline = self.cfg.upload_timeout;
            let slot = self.pools.entry((i, image.name.clone())).or_default();
            if slot.busy || slot.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            slot.busy = true;
            info!(host = %host_name, image = %image.name, %pool, "putting the image's current version into the host's pool");
            let (img, tx) = (image.clone(), tx.clone());
            let known = Checksums::in_state_dir(&self.cfg.state_dir);
            tokio::spawn(async move {
                let name = img.name.clone();
                let mut task = tokio::task::spawn_blocking(move || images::upload(&uri, &pool, &img, &known));
                let joined = match tokio::time::timeout(deadline, &mut task).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        // The blocking call cannot be stopped: the slot stays busy (no second
                        // upload of the same volumes) until it returns, but launches stop waiting.
                        let reason = format!("uploading image {name} to host {host_name} did not finish within {deadline:?}");
                        let _ = tx.send(Cmd::UploadHung { host: i, image: name.clone(), reason });
                        task.await
                    }
                };
                let result = joined.unwrap_or_else(|e| Err(format!("upload task: {e}")));
                let _ = tx.send(Cmd::ImageUploaded { host: i, image: name, result });
            });
        }
    }

    /// An upload into host `host`'s pool missed its deadline: recorded, and queued launches
    /// of the image that no other host can take fail with `reason` at the next pass.
    pub(super) async fn upload_hung(&mut self, host: usize, image: String, reason: String) {
        let host_name = self.hosts[host].config.name.clone();
        warn!(host = %host_name, %image, %reason, "an upload into the host's pool hangs");
        let _ = self.store.record_event("image_upload_failed", &host_name, &reason).await;
        self.pools.entry((host, image)).or_default().hung = Some(reason);
        self.dirty = true;
    }

    /// Why a launch of `image` that must wait can never be placed while uploads hang: every
    /// host that could ever take it is a pool host whose upload of the image missed its deadline.
    pub(super) fn hung_upload(&self, image: &Image, views: &[crate::vm::placement::HostView]) -> Option<String> {
        let mut reasons = Vec::new();
        for (i, v) in views.iter().enumerate() {
            let could = v.allowed && v.runs_arch != Some(false) && crate::vm::placement::Usage::default().fits(image, &v.capacity);
            if !could {
                continue;
            }
            match self.pools.get(&(i, image.name.clone())).and_then(|p| p.hung.as_ref()) {
                Some(r) if !v.image_present => reasons.push(r.clone()),
                _ => return None,
            }
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    pub(super) async fn image_uploaded(&mut self, host: usize, image: String, result: Result<PoolImage, String>) {
        let host_name = self.hosts[host].config.name.clone();
        let pool = self.hosts[host].config.image_pool.clone().unwrap_or_default();
        let key = (host, image.clone());
        match result {
            Ok(version) => {
                for f in &version.files {
                    let row = HostVolume {
                        host: host_name.clone(),
                        image: image.clone(),
                        role: f.role.into(),
                        sha256: f.sha256.clone(),
                        pool: pool.clone(),
                        volume: f.volume.clone(),
                        path: f.path.clone(),
                    };
                    if let Err(e) = self.store.put_host_volume(&row).await {
                        warn!(host = %host_name, error = %error_chain(&e), "could not record an image volume");
                    }
                }
                let sent: Vec<&str> = version.files.iter().filter(|f| f.sent).map(|f| f.volume.as_str()).collect();
                if !sent.is_empty() {
                    info!(host = %host_name, %image, volumes = %sent.join(", "), "image uploaded and verified");
                    let _ = self.store.record_event("image_uploaded", &host_name, &format!("image {image}: {}", sent.join(", "))).await;
                }
                let slot = self.pools.entry(key).or_default();
                slot.busy = false;
                slot.retry_at = None;
                slot.hung = None;
                slot.current = Some(version);
                self.sweep(host, &image);
                self.dirty = true;
            }
            Err(error) => {
                warn!(host = %host_name, %image, %error, "could not put the image into the host's pool; retrying later");
                let _ = self.store.record_event("image_upload_failed", &host_name, &format!("image {image}: {error}")).await;
                let slot = self.pools.entry(key).or_default();
                slot.busy = false;
                slot.hung = None;
                slot.retry_at = Some(Instant::now() + self.cfg.upload_retry);
            }
        }
    }

    /// Every `IMAGE_CHECK`, re-distributes every image seen, so a changed file
    /// is uploaded again.
    pub(super) fn recheck_images(&mut self) {
        if self.last_image_check.elapsed() < IMAGE_CHECK {
            return;
        }
        self.last_image_check = Instant::now();
        let images: Vec<Image> = self.images.values().cloned().collect();
        for image in images {
            self.distribute(&image);
        }
    }

    /// A removal of old versions ended; one asked for meanwhile starts now.
    pub(super) fn sweep_done(&mut self, host: usize, image: &str) {
        let slot = self.pools.entry((host, image.to_string())).or_default();
        slot.busy = false;
        if std::mem::take(&mut slot.sweep_wanted) {
            self.sweep(host, image);
        }
    }

    /// Removes versions of `image` in host `host`'s pool other than the
    /// current one and those live VMs there boot from.
    pub(super) fn sweep(&mut self, host: usize, image: &str) {
        let Some(tx) = self.tx.upgrade() else { return };
        let Some(pool) = self.hosts[host].config.image_pool.clone() else { return };
        let mut keep: Vec<String> = self.vms.values().filter(|vm| vm.host == host).flat_map(|vm| vm.volumes.clone()).collect();
        let slot = self.pools.entry((host, image.to_string())).or_default();
        let Some(current) = &slot.current else { return };
        if slot.busy {
            slot.sweep_wanted = true;
            return;
        }
        slot.busy = true;
        keep.extend(current.volumes());
        let prefixes: Vec<String> = current.files.iter().map(|f| f.prefix.clone()).collect();
        let (uri, host_name, image) = (self.hosts[host].config.uri.clone(), self.hosts[host].config.name.clone(), image.to_string());
        tokio::spawn(async move {
            let (h, i) = (host_name.clone(), image.clone());
            let done = tokio::task::spawn_blocking(move || {
                for prefix in prefixes {
                    match storage::remove_volumes(&uri, &pool, &prefix, &keep) {
                        Ok(removed) if !removed.is_empty() => {
                            info!(host = %h, image = %i, removed = %removed.join(", "), "old image versions removed")
                        }
                        Ok(_) => {}
                        Err(e) => warn!(host = %h, image = %i, error = %error_chain(&e), "could not remove old image versions"),
                    }
                }
            });
            let _ = done.await;
            let _ = tx.send(Cmd::SweepDone { host, image });
        });
    }
}
