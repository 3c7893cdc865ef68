//! The state directory's layout: the store, keys, overlays, logs, and the
//! daemon instance id that marks the VMs this daemon creates.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot create {}", path.display())]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot read or write the instance id at {}", path.display())]
    InstanceId { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    instance_id: String,
}

impl StateDir {
    /// Creates the layout if missing and loads (or creates) the instance id.
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
}
