//! The state directory's layout: the store, keys, overlays, logs, and the
//! daemon instance id that marks the VMs this daemon creates.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot create {}", path.display())]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot read or write the instance id at {}", path.display())]
    InstanceId { path: PathBuf, source: std::io::Error },
    #[error("cannot restrict the permissions of {}", path.display())]
    Permissions { path: PathBuf, source: std::io::Error },
}

/// Folders QEMU (another user) must pass through to reach the files libvirt hands it: the state
/// directory itself, overlays, consoles and warm-start templates (and each template's folder)
/// are 0711 (enter, not list). Everything else is the daemon's alone: folders 0700, files 0600.
const TRAVERSED: [&str; 4] = ["", "overlays", "consoles", "templates"];

/// Restricts what a previous version (or a hand) left readable: folders to 0700 (0711 for
/// [`TRAVERSED`]), files the daemon owns to 0600. Files in overlays and consoles belong to
/// libvirt and keep their modes.
fn restrict(root: &Path) -> Result<(), StateDirError> {
    use std::os::unix::fs::PermissionsExt;
    // A file gone between the listing and its chmod needs no restricting: SQLite removes a
    // closing connection's `-wal` and `-shm` files (a daemon of the same state dir that has
    // just stopped, in the same process, may still be closing its recorder's).
    let set = |path: &Path, mode: u32| match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(|source| StateDirError::Permissions { path: path.to_owned(), source }),
    };
    fn walk(dir: &Path, visit: &mut dyn FnMut(&Path, bool) -> Result<(), StateDirError>) -> Result<(), StateDirError> {
        let entries = std::fs::read_dir(dir).map_err(|source| StateDirError::Permissions { path: dir.to_owned(), source })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                visit(&path, true)?;
                walk(&path, visit)?;
            } else if kind.is_file() {
                visit(&path, false)?;
            }
        }
        Ok(())
    }
    set(root, 0o711)?;
    for sub in ["overlays", "consoles"] {
        set(&root.join(sub), 0o711)?;
    }
    // A template's frozen disk and seed are read by QEMU as backing files of every clone.
    if let Ok(templates) = std::fs::read_dir(root.join("templates")) {
        set(&root.join("templates"), 0o711)?;
        for t in templates.flatten().filter(|e| e.file_type().is_ok_and(|k| k.is_dir())) {
            set(&t.path(), 0o711)?;
        }
    }
    let entries = std::fs::read_dir(root).map_err(|source| StateDirError::Permissions { path: root.to_owned(), source })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if TRAVERSED.iter().any(|t| !t.is_empty() && name == *t) {
            continue;
        }
        match entry.file_type() {
            Ok(k) if k.is_dir() => {
                set(&path, 0o700)?;
                walk(&path, &mut |p, is_dir| set(p, if is_dir { 0o700 } else { 0o600 }))?;
            }
            Ok(k) if k.is_file() => set(&path, 0o600)?,
            _ => {}
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    instance_id: String,
}

impl StateDir {
    /// Creates the layout if missing, loads (or creates) the instance id, and restricts every
    /// mode (see [`restrict`]).
    pub fn prepare(root: &Path) -> Result<StateDir, StateDirError> {
        for sub in ["", "keys", "overlays", "logs", "consoles"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(|source| StateDirError::Create { path: p.clone(), source })?;
        }
        let id_path = root.join("instance-id");
        let instance_id = match std::fs::read_to_string(&id_path) {
            Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
            Ok(_) | Err(_) => {
                use rand::Rng;
                let id = format!("{:08x}", rand::rng().random::<u32>());
                std::fs::write(&id_path, format!("{id}\n"))
                    .map_err(|source| StateDirError::InstanceId { path: id_path.clone(), source })?;
                id
            }
        };
        restrict(root)?;
        Ok(StateDir { root: root.to_path_buf(), instance_id })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }
    pub fn db_path(&self) -> PathBuf {
        self.root.join("paddock.db")
    }
    /// The embedded recorder's own database (never the daemon's store).
    pub fn recorder_db_path(&self) -> PathBuf {
        self.root.join("recorder.db")
    }
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    pub fn overlays(&self) -> PathBuf {
        self.root.join("overlays")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn consoles(&self) -> PathBuf {
        self.root.join("consoles")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = StateDir::prepare(&dir.path().join("state")).unwrap();
        let b = StateDir::prepare(&dir.path().join("state")).unwrap();
        assert_eq!(a.instance_id(), b.instance_id());
        assert_eq!(a.instance_id().len(), 8);
        assert!(a.overlays().is_dir() && a.logs().is_dir() && a.keys().is_dir());
    }

    #[test]
    fn modes_left_open_are_restricted_at_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        for d in ["keys", "logs/run-1", "overlays", "consoles"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in ["paddock.db", "recorder.db-wal", "logs/run-1/run.log", "keys/id_ed25519", "overlays/vm.qcow2"] {
            std::fs::write(root.join(f), "x").unwrap();
        }
        let open = |p: &str, m: u32| std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        for (p, m) in [
            ("", 0o755),
            ("keys", 0o755),
            ("logs", 0o755),
            ("logs/run-1", 0o777),
            ("paddock.db", 0o644),
            ("recorder.db-wal", 0o666),
            ("logs/run-1/run.log", 0o644),
            ("keys/id_ed25519", 0o644),
            ("overlays/vm.qcow2", 0o644),
        ] {
            open(p, m);
        }
        StateDir::prepare(&root).unwrap();
        let mode = |p: &str| std::fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o777;
        for (p, want) in [
            ("", 0o711),
            ("overlays", 0o711),
            ("consoles", 0o711),
            ("keys", 0o700),
            ("logs", 0o700),
            ("logs/run-1", 0o700),
            ("paddock.db", 0o600),
            ("recorder.db-wal", 0o600),
            ("logs/run-1/run.log", 0o600),
            ("keys/id_ed25519", 0o600),
            ("instance-id", 0o600),
            ("overlays/vm.qcow2", 0o644),
        ] {
            assert_eq!(mode(p), want, "{p}: {:o}", mode(p));
        }
    }
}
