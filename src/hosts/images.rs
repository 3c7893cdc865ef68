//! The files an image is made of, their checksums, and the name of the storage
//! volume each becomes on a host: `paddock-<image>-<role>-<sha256 prefix>`, so a
//! changed file gets a new volume and an old one is recognisable as stale.

use std::path::{Path, PathBuf};

use crate::config::{Boot, Image};

/// One file of an image: its base disk, or its kernel and initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    pub image: String,
    /// `disk`, `kernel` or `initrd`.
    pub role: &'static str,
    pub path: PathBuf,
}

pub fn image_files(image: &Image) -> Vec<ImageFile> {
    let f = |role, path: &PathBuf| ImageFile { image: image.name.clone(), role, path: path.clone() };
    match &image.boot {
        Boot::Disk { base } => vec![f("disk", base)],
        Boot::Kernel { kernel, initrd, .. } => vec![f("kernel", kernel), f("initrd", initrd)],
    }
}

/// The SHA-256 of a file, as lowercase hex (read in full; [`crate::checksums::Checksums::file`]
/// remembers it across daemon starts).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    crate::checksums::sha256_of(path)
}

/// The volume name for `file` with content hash `sha256`.
pub fn volume_name(file: &ImageFile, sha256: &str) -> String {
    format!("{}{}", volume_prefix(file), &sha256[..sha256.len().min(16)])
}

/// What every version of `file`'s volume starts with.
pub fn volume_prefix(file: &ImageFile) -> String {
    format!("paddock-{}-{}-", file.image, file.role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_carry_image_role_and_hash() {
        let f = ImageFile { image: "tiny".into(), role: "initrd", path: "/x".into() };
        let name = volume_name(&f, "0123456789abcdef0123");
        assert_eq!(name, "paddock-tiny-initrd-0123456789abcdef");
        assert!(name.starts_with(&volume_prefix(&f)));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
