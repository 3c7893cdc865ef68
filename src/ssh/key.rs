//! The daemon's own SSH identity: its ed25519 key on disk, and an optional certificate.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ssh_key::{Algorithm, Certificate, LineEnding, PrivateKey, PublicKey};

/// Errors while loading or creating the client key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot create key directory {path}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot generate an ed25519 key")]
    Generate { source: ssh_key::Error },
    #[error("cannot encode the key for {path}")]
    Encode { path: PathBuf, source: ssh_key::Error },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read the private key {path}")]
    Read { path: PathBuf, source: ssh_key::Error },
    #[error("the private key {path} is encrypted; paddock needs an unencrypted key")]
    Encrypted { path: PathBuf },
}

/// The daemon's SSH client key, created on first use.
#[derive(Clone)]
pub struct ClientKey {
    key: Arc<PrivateKey>,
    path: PathBuf,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private material.
        f.debug_struct("ClientKey")
            .field("path", &self.path)
            .field("fingerprint", &self.key.public_key().fingerprint(Default::default()).to_string())
            .finish()
    }
}

impl ClientKey {
    /// Where the key lives under a state directory.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join("keys").join("client_ed25519")
    }

    /// Loads `state_dir/keys/client_ed25519`, creating it (mode 0600, its
    /// directory 0700, plus a `.pub` beside it) when absent.
    pub fn load_or_create(state_dir: &Path) -> Result<ClientKey, KeyError> {
        let path = Self::path_in(state_dir);
        if path.exists() {
            return Self::load(&path);
        }
        let dir = path.parent().expect("key path has a parent");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| KeyError::CreateDir { path: dir.to_owned(), source })?;
        let mut rng = ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng);
        let mut key = PrivateKey::random(&mut rng, Algorithm::Ed25519).map_err(|source| KeyError::Generate { source })?;
        key.set_comment("paddock");
        let pem = key.to_openssh(LineEnding::LF).map_err(|source| KeyError::Encode { path: path.clone(), source })?;
        // create_new + mode: the file is never readable by others, not even briefly,
        // and two daemons racing cannot overwrite each other's key.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| KeyError::Write { path: path.clone(), source })?;
        file.write_all(pem.as_bytes()).and_then(|()| file.sync_all()).map_err(|source| KeyError::Write { path: path.clone(), source })?;
        let pub_path = path.with_extension("pub");
        let line = public_line(key.public_key());
        fs::write(&pub_path, format!("{line}\n")).map_err(|source| KeyError::Write { path: pub_path, source })?;
        Ok(ClientKey { key: Arc::new(key), path })
    }

    /// Loads an existing unencrypted OpenSSH private key.
    pub fn load(path: &Path) -> Result<ClientKey, KeyError> {
        let key = PrivateKey::read_openssh_file(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        if key.is_encrypted() {
            return Err(KeyError::Encrypted { path: path.to_owned() });
        }
        Ok(ClientKey { key: Arc::new(key), path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn private_key(&self) -> Arc<PrivateKey> {
        self.key.clone()
    }

    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// The `ssh-ed25519 AAAA… paddock` line for authorized_keys.
    pub fn public_line(&self) -> String {
        public_line(self.key.public_key())
    }

    /// Plain public-key authentication with this key.
    pub fn auth(&self) -> Auth {
        Auth::Key(self.key.clone())
    }

    /// Authentication with this key and a certificate signed for it.
    pub fn auth_with_certificate(&self, cert: Certificate) -> Auth {
        Auth::Certificate { key: self.key.clone(), cert: Box::new(cert) }
    }
}

fn public_line(key: &PublicKey) -> String {
    key.to_openssh().expect("encoding a public key cannot fail")
}

/// How paddock proves who it is to a guest.
#[derive(Clone)]
pub enum Auth {
    Key(Arc<PrivateKey>),
    /// An OpenSSH user certificate (from the fleet CA) for `key`.
    Certificate {
        key: Arc<PrivateKey>,
        cert: Box<Certificate>,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Key(_) => f.write_str("Auth::Key"),
            Auth::Certificate { cert, .. } => write!(f, "Auth::Certificate({})", cert.key_id()),
        }
    }
}

impl Auth {
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::Key(_) => "public key",
            Auth::Certificate { .. } => "certificate",
        }
    }
}
