//! Images in hosts' storage pools: which version of an image's files a host
//! holds, the blocking upload of the current version (over the libvirt
//! connection, checksum-verified), and the image as a VM on that host boots it
//! (paths of the volumes on the host instead of local paths).
//!
//! A version is recognised by each file's size and mtime: cheap enough to
//! check at every launch and on a timer; the SHA-256 is computed only when
//! they change, by the upload.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::config::{Boot, Image};
use crate::hosts::images::{ImageFile, image_files, sha256_file, volume_name, volume_prefix};
use crate::libvirt::{error_chain, storage};

/// What a file looked like when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub len: u64,
    pub mtime: SystemTime,
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp { len: m.len(), mtime: m.modified().ok()? })
    }
}

/// The stamps of an image's files, in [`image_files`] order; `None` when one is unreadable.
pub fn stamps(image: &Image) -> Option<Vec<FileStamp>> {
    image_files(image).iter().map(|f| FileStamp::of(&f.path)).collect()
}

/// One uploaded file of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolFile {
    /// `disk`, `kernel` or `initrd`.
    pub role: &'static str,
    pub sha256: String,
    pub volume: String,
    /// The volume's path on the host.
    pub path: String,
    /// Every version's volume name starts with this.
    pub prefix: String,
    /// Whether this upload sent it (false: the host had it already).
    pub sent: bool,
}

/// An image version present in a host's pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolImage {
    /// The local files' stamps this version was read with.
    pub stamps: Vec<FileStamp>,
    pub files: Vec<PoolFile>,
    /// For disk images: the base's format and virtual size, for overlays.
    pub disk: Option<(String, u64)>,
}

impl PoolImage {
    pub fn volumes(&self) -> Vec<String> {
        self.files.iter().map(|f| f.volume.clone()).collect()
    }

    fn path(&self, role: &str) -> PathBuf {
        self.files.iter().find(|f| f.role == role).map(|f| PathBuf::from(&f.path)).unwrap_or_default()
    }

    /// `image` with its files replaced by this version's volumes on the host.
    pub fn boot_image(&self, image: &Image) -> Image {
        let mut out = image.clone();
        out.boot = match &image.boot {
            Boot::Disk { .. } => Boot::Disk { base: self.path("disk") },
            Boot::Kernel { cmdline, .. } => {
                Boot::Kernel { kernel: self.path("kernel"), initrd: self.path("initrd"), cmdline: cmdline.clone() }
            }
        };
        out
    }
}

/// Makes `pool` on `uri` hold the current version of `image`'s files.
/// Blocks (hashing, streaming): run on a blocking thread.
pub fn upload(uri: &str, pool: &str, image: &Image) -> Result<PoolImage, String> {
    // Stamps first: a file changing during the upload then shows as a newer version.
    let stamps = stamps(image).ok_or_else(|| format!("cannot read the files of image {}", image.name))?;
    let mut files = Vec::new();
    for f in image_files(image) {
        files.push(upload_file(uri, pool, &f)?);
    }
    let disk = match &image.boot {
        Boot::Disk { base } => Some(super::overlay::base_info(base).map_err(|e| error_chain(&e))?),
        Boot::Kernel { .. } => None,
    };
    Ok(PoolImage { stamps, files, disk })
}

fn upload_file(uri: &str, pool: &str, f: &ImageFile) -> Result<PoolFile, String> {
    let sha256 = sha256_file(&f.path).map_err(|e| format!("reading {}: {e}", f.path.display()))?;
    let volume = volume_name(f, &sha256);
    let up = storage::put_volume(uri, pool, &volume, &f.path, &sha256).map_err(|e| error_chain(&e))?;
    Ok(PoolFile { role: f.role, sha256, volume, path: up.path, prefix: volume_prefix(f), sent: up.sent })
}
