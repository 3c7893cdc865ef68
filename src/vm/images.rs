//! Images in hosts' storage pools: which version of an image's files a host
//! holds, the blocking upload of the current version (over the libvirt
//! connection, checksum-verified), and the image as a VM on that host boots it
//! (paths of the volumes on the host instead of local paths).
//!
//! A version is recognised by each file's size and mtime: cheap enough to
//! check at every launch and on a timer; the SHA-256 is computed only when
//! they change, by the upload. Both the files' hashes and the read-back check of
//! a volume already on the host are remembered in the state dir's
//! [`Checksums`], so a daemon start with nothing changed neither hashes the disk
//! nor reads its volume back over the host's link.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::checksums::Checksums;
use crate::config::{Boot, Image};
use crate::hosts::images::{ImageFile, image_files, volume_name, volume_prefix};
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

/// Whether `version` was read from `image`'s files as they are now.
pub fn is_current(version: &PoolImage, image: &Image) -> bool {
    let files = image_files(image);
    files.len() == version.sources.len()
        && files.iter().zip(&version.sources).all(|(f, s)| f.path == *s)
        && stamps(image).is_some_and(|s| s == version.stamps)
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
    /// The local files it was read from, and their stamps then.
    pub sources: Vec<PathBuf>,
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
pub fn upload(uri: &str, pool: &str, image: &Image, known: &Checksums) -> Result<PoolImage, String> {
    // Stamps first: a file changing during the upload then shows as a newer version.
    let stamps = stamps(image).ok_or_else(|| format!("cannot read the files of image {}", image.name))?;
    let sources = image_files(image).into_iter().map(|f| f.path).collect();
    let mut files = Vec::new();
    for f in image_files(image) {
        files.push(upload_file(uri, pool, &f, known)?);
    }
    let disk = match &image.boot {
        Boot::Disk { base } => Some(super::overlay::base_info(base).map_err(|e| error_chain(&e))?),
        Boot::Kernel { .. } => None,
    };
    Ok(PoolImage { sources, stamps, files, disk })
}

fn upload_file(uri: &str, pool: &str, f: &ImageFile, known: &Checksums) -> Result<PoolFile, String> {
    let sha256 = known.file(&f.path).map_err(|e| format!("reading {}: {e}", f.path.display()))?.sha256;
    let volume = volume_name(f, &sha256);
    let up = storage::put_volume_with(uri, pool, &volume, &f.path, &sha256, known).map_err(|e| error_chain(&e))?;
    Ok(PoolFile { role: f.role, sha256, volume, path: up.path, prefix: volume_prefix(f), sent: up.sent })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::domain_xml::tests::image as test_image;

    #[test]
    fn a_version_is_current_until_a_file_changes_or_moves() {
        let dir = tempfile::tempdir().unwrap();
        let (k, i) = (dir.path().join("k"), dir.path().join("i"));
        std::fs::write(&k, b"kernel").unwrap();
        std::fs::write(&i, b"initrd").unwrap();
        let boot = Boot::Kernel { kernel: k.clone(), initrd: i.clone(), cmdline: "quiet".into() };
        let image = test_image("t", crate::config::Os::Linux, crate::config::Arch::X86_64, boot);
        let file = |role, path: &str| PoolFile {
            role,
            sha256: String::new(),
            volume: format!("v-{role}"),
            path: path.into(),
            prefix: String::new(),
            sent: true,
        };
        let version = PoolImage {
            sources: vec![k.clone(), i.clone()],
            stamps: stamps(&image).unwrap(),
            files: vec![file("kernel", "/pool/k"), file("initrd", "/pool/i")],
            disk: None,
        };
        assert!(is_current(&version, &image));
        let Boot::Kernel { kernel, initrd, cmdline } = version.boot_image(&image).boot else { panic!() };
        assert_eq!((kernel, initrd, cmdline.as_str()), (PathBuf::from("/pool/k"), PathBuf::from("/pool/i"), "quiet"));

        let mut moved = image.clone();
        moved.boot = Boot::Kernel { kernel: i.clone(), initrd: k.clone(), cmdline: String::new() };
        assert!(!is_current(&version, &moved), "other files, same stamps");
        std::fs::write(&i, b"a longer initrd").unwrap();
        assert!(!is_current(&version, &image), "a changed file");
        std::fs::remove_file(&i).unwrap();
        assert!(!is_current(&version, &image), "a missing file");
    }
}
