//! Disposable disks: a qcow2 overlay per VM over the image's base disk, in
//! `state_dir/overlays/`. **The base is only ever opened read-only as a backing file.**

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("creating the overlay directory {}", dir.display())]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("running qemu-img to inspect {}", base.display())]
    InfoSpawn { base: PathBuf, source: std::io::Error },
    #[error("qemu-img cannot read the base disk {}: {stderr}", base.display())]
    Info { base: PathBuf, stderr: String },
    #[error("running qemu-img to create {}", overlay.display())]
    CreateSpawn { overlay: PathBuf, source: std::io::Error },
    #[error("qemu-img failed to create {} over {}: {stderr}", overlay.display(), base.display())]
    Create { overlay: PathBuf, base: PathBuf, stderr: String },
    #[error("removing {}", path.display())]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("listing {}", dir.display())]
    List { dir: PathBuf, source: std::io::Error },
}

/// The overlay directory under a state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("overlays")
}

/// The overlay file of VM `name`.
pub fn path_for(state_dir: &Path, name: &str) -> PathBuf {
    dir(state_dir).join(format!("{name}.qcow2"))
}

/// The format qemu-img detects for `base` (e.g. `raw`, `qcow2`).
pub fn base_format(base: &Path) -> Result<String, OverlayError> {
    Ok(base_info(base)?.0)
}

/// The format and virtual size (bytes) qemu-img reads from `base`.
pub fn base_info(base: &Path) -> Result<(String, u64), OverlayError> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(base)
        .output()
        .map_err(|source| OverlayError::InfoSpawn { base: base.into(), source })?;
    if !out.status.success() {
        return Err(OverlayError::Info { base: base.into(), stderr: String::from_utf8_lossy(&out.stderr).trim().into() });
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| OverlayError::Info { base: base.into(), stderr: e.to_string() })?;
    let fmt = v["format"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| OverlayError::Info { base: base.into(), stderr: "no format in qemu-img info".into() })?;
    let size = v["virtual-size"]
        .as_u64()
        .ok_or_else(|| OverlayError::Info { base: base.into(), stderr: "no virtual-size in qemu-img info".into() })?;
    Ok((fmt, size))
}
/// Creates a qcow2 overlay at `overlay` backed by `base`.
pub fn create(base: &Path, overlay: &Path) -> Result<(), OverlayError> {
    if let Some(parent) = overlay.parent() {
        std::fs::create_dir_all(parent).map_err(|source| OverlayError::Dir { dir: parent.into(), source })?;
    }
    let fmt = base_format(base)?;
    // An absolute backing path: the overlay must not depend on the daemon's cwd.
    let base_abs = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", &fmt, "-b"])
        .arg(&base_abs)
        .arg(overlay)
        .output()
        .map_err(|source| OverlayError::CreateSpawn { overlay: overlay.into(), source })?;
    if !out.status.success() {
        return Err(OverlayError::Create {
            overlay: overlay.into(),
            base: base.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    Ok(())
}

/// Removes an overlay; a missing file is fine.
pub fn remove(path: &Path) -> Result<(), OverlayError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(OverlayError::Remove { path: path.into(), source }),
    }
}

/// The VM a file of the overlay directory belongs to: `<vm>.qcow2` (its overlay) or
/// `<vm>-seed.iso` (its cloud-init seed, see `vm::seed`).
pub fn owner(path: &Path) -> String {
    let name = path.file_name().and_then(|s| s.to_str()).unwrap_or_default();
    name.strip_suffix(super::seed::SEED_SUFFIX).or_else(|| name.strip_suffix(".qcow2")).unwrap_or(name).to_string()
}

/// Every overlay and seed file in the state directory.
pub fn list(state_dir: &Path) -> Result<Vec<PathBuf>, OverlayError> {
    let d = dir(state_dir);
    let entries = match std::fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => return Err(OverlayError::List { dir: d, source }),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| OverlayError::List { dir: d.clone(), source })?;
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "qcow2")
            || p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(super::seed::SEED_SUFFIX))
        {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn sha(p: &Path) -> String {
        hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
    }

    fn qemu_io(file: &Path, cmd: &str) -> String {
        let out = Command::new("qemu-io").args(["-f", "qcow2", "-c", cmd]).arg(file).output().unwrap();
        assert!(out.status.success(), "qemu-io {cmd}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes through the overlay the way a guest would (QEMU's block layer) and
    /// checks the base's bytes did not change while the overlay sees the write.
    #[test]
    fn writes_land_in_the_overlay_and_never_in_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let st = Command::new("qemu-img").args(["create", "-q", "-f", "raw"]).arg(&base).arg("4M").status().unwrap();
        assert!(st.success());
        let before = sha(&base);
        let ov = path_for(dir.path(), "paddock-test-1");
        create(&base, &ov).unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![ov.clone()]);
        qemu_io(&ov, "write -P 0xab 0 64k");
        assert!(qemu_io(&ov, "read -P 0xab 0 64k").contains("read 65536/65536"));
        assert_eq!(sha(&base), before, "the base disk was written");
        remove(&ov).unwrap();
        remove(&ov).unwrap();
        assert!(list(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn owners_of_overlays_and_seeds() {
        assert_eq!(owner(Path::new("/s/overlays/paddock-ab-1.qcow2")), "paddock-ab-1");
        assert_eq!(owner(Path::new("/s/overlays/paddock-ab-1-seed.iso")), "paddock-ab-1");
    }

    #[test]
    fn a_missing_base_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = create(&dir.path().join("nope.qcow2"), &path_for(dir.path(), "x")).unwrap_err();
        assert!(err.to_string().contains("nope.qcow2"), "{err}");
    }
}
