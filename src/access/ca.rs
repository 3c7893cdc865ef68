//! The fleet's SSH certificate authority: its ed25519 key on disk and the
//! OpenSSH user certificates it signs for grants.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Algorithm, Certificate, LineEnding, PrivateKey, PublicKey};

/// Errors of the CA, one per failing step.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot create the key directory {path}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot generate the CA's ed25519 key")]
    Generate { source: ssh_key::Error },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read the CA key {path}")]
    Read { path: PathBuf, source: ssh_key::Error },
    #[error("the CA key {path} is encrypted; paddock needs an unencrypted key")]
    Encrypted { path: PathBuf },
    #[error("the CA key {path} is readable by others (mode {mode:o}); it must be 0600")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("cannot sign certificate {key_id}")]
    Sign { key_id: String, source: ssh_key::Error },
}

/// What one certificate says.
#[derive(Debug, Clone)]
pub struct CertSpec<'a> {
    pub key: &'a PublicKey,
    /// The one principal the certificate names: the granted VM's (guests with a per-VM
    /// identity accept only their own), or the login user for guests without one.
    pub principal: &'a str,
    /// Whether agent, X11 and port forwarding and `~/.ssh/rc` are permitted
    /// (`[access] allow_forwarding`); `permit-pty` always is.
    pub forwarding: bool,
    pub key_id: String,
    pub serial: u64,
    pub valid_after: DateTime<Utc>,
    pub valid_before: DateTime<Utc>,
}

/// The fleet CA; cheap to clone.
#[derive(Clone)]
pub struct FleetCa {
    key: Arc<PrivateKey>,
    path: PathBuf,
}

impl std::fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private material.
        f.debug_struct("FleetCa").field("path", &self.path).field("public", &self.public_line()).finish()
    }
}

impl FleetCa {
    /// Where the CA key lives under a state directory.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join("keys").join("fleet_ca")
    }

    /// Loads `state_dir/keys/fleet_ca`, creating it (mode 0600, the directory
    /// 0700, and `fleet_ca.pub` beside it) on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<FleetCa, CaError> {
        let path = Self::path_in(state_dir);
        if path.exists() {
            return Self::load(&path);
        }
        let dir = path.parent().expect("CA path has a parent");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| CaError::CreateDir { path: dir.to_owned(), source })?;
        let mut rng = ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng);
        let mut key = PrivateKey::random(&mut rng, Algorithm::Ed25519).map_err(|source| CaError::Generate { source })?;
        key.set_comment("paddock fleet CA");
        let pem = key.to_openssh(LineEnding::LF).map_err(|source| CaError::Generate { source })?;
        // create_new + mode: never readable by others, not even for a moment, and
        // two daemons racing on one state directory cannot replace each other's CA.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| CaError::Write { path: path.clone(), source })?;
        file.write_all(pem.as_bytes()).and_then(|()| file.sync_all()).map_err(|source| CaError::Write { path: path.clone(), source })?;
        let ca = FleetCa { key: Arc::new(key), path };
        let pub_path = ca.path.with_extension("pub");
        fs::write(&pub_path, format!("{}\n", ca.public_line())).map_err(|source| CaError::Write { path: pub_path, source })?;
        Ok(ca)
    }

    /// Loads an existing CA key, refusing one others could read.
    pub fn load(path: &Path) -> Result<FleetCa, CaError> {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_err(|source| CaError::Write { path: path.to_owned(), source })?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CaError::Permissions { path: path.to_owned(), mode });
        }
        let key = PrivateKey::read_openssh_file(path).map_err(|source| CaError::Read { path: path.to_owned(), source })?;
        if key.is_encrypted() {
            return Err(CaError::Encrypted { path: path.to_owned() });
        }
        Ok(FleetCa { key: Arc::new(key), path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// The `ssh-ed25519 AAAA… paddock fleet CA` line for `TrustedUserCAKeys`
    /// (and the bundled guest's `paddock.ca=` kernel argument).
    pub fn public_line(&self) -> String {
        self.key.public_key().to_openssh().expect("encoding a public key cannot fail")
    }

    /// Signs an OpenSSH user certificate for `spec.key`.
    pub fn issue(&self, spec: &CertSpec<'_>) -> Result<Certificate, CaError> {
        let err = |source| CaError::Sign { key_id: spec.key_id.clone(), source };
        let mut rng = ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng);
        let after = spec.valid_after.timestamp().max(0) as u64;
        let before = spec.valid_before.timestamp().max(0) as u64;
        let mut b = Builder::new_with_random_nonce(&mut rng, spec.key.key_data().clone(), after, before).map_err(err)?;
        b.serial(spec.serial).map_err(err)?;
        b.cert_type(CertType::User).map_err(err)?;
        b.key_id(spec.key_id.clone()).map_err(err)?;
        b.valid_principal(spec.principal).map_err(err)?;
        // A terminal, so an interactive login behaves normally; forwarding and user rc
        // files (what `ssh-keygen -s` also grants by default) only when the policy says so.
        b.extension("permit-pty", "").map_err(err)?;
        if spec.forwarding {
            for ext in ["permit-X11-forwarding", "permit-agent-forwarding", "permit-port-forwarding", "permit-user-rc"] {
                b.extension(ext, "").map_err(err)?;
            }
        }
        b.comment(spec.key_id.clone()).map_err(err)?;
        b.sign(self.key.as_ref()).map_err(err)
    }
}

/// The certificate as the one line OpenSSH reads from `-o CertificateFile=`.
pub fn cert_line(cert: &Certificate) -> String {
    cert.to_openssh().expect("encoding a signed certificate cannot fail")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn created_once_with_mode_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = FleetCa::load_or_create(dir.path()).unwrap();
        let meta = fs::metadata(dir.path().join("keys/fleet_ca")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.path().join("keys")).unwrap().permissions().mode() & 0o777, 0o700);
        let pub_file = fs::read_to_string(dir.path().join("keys/fleet_ca.pub")).unwrap();
        assert_eq!(pub_file.trim(), ca.public_line());
        assert!(ca.public_line().starts_with("ssh-ed25519 AAAA"));
        // A second start reads the same key instead of making a new one.
        let again = FleetCa::load_or_create(dir.path()).unwrap();
        assert_eq!(again.public_line(), ca.public_line());
    }

    #[test]
    fn a_world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        FleetCa::load_or_create(dir.path()).unwrap();
        let path = dir.path().join("keys/fleet_ca");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = FleetCa::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, CaError::Permissions { mode: 0o644, .. }), "{err}");
    }

    #[test]
    fn issued_certificate_verifies_against_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = FleetCa::load_or_create(dir.path()).unwrap();
        let mut rng = ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng);
        let user = PrivateKey::random(&mut rng, Algorithm::Ed25519).unwrap();
        let now = Utc::now();
        let cert = ca
            .issue(&CertSpec {
                key: user.public_key(),
                principal: "paddock-0123abcd-vm1",
                forwarding: false,
                key_id: "paddock:alice:g1".into(),
                serial: 7,
                valid_after: now - chrono::Duration::seconds(60),
                valid_before: now + chrono::Duration::hours(1),
            })
            .unwrap();
        assert_eq!(cert.valid_principals(), ["paddock-0123abcd-vm1".to_string()]);
        let exts: Vec<&String> = cert.extensions().keys().collect();
        assert_eq!(exts, ["permit-pty"]);
        let forwarding = ca
            .issue(&CertSpec {
                key: user.public_key(),
                principal: "root",
                forwarding: true,
                key_id: "paddock:alice:g1".into(),
                serial: 7,
                valid_after: now - chrono::Duration::seconds(60),
                valid_before: now + chrono::Duration::hours(1),
            })
            .unwrap();
        assert_eq!(forwarding.extensions().len(), 5);
        let cert = forwarding;
        assert_eq!(cert.serial(), 7);
        assert_eq!(cert.valid_principals(), ["root".to_string()]);
        assert_eq!(cert.cert_type(), CertType::User);
        let fp = ca.public_key().fingerprint(Default::default());
        cert.validate_at(now.timestamp() as u64, [&fp]).unwrap();
        assert!(cert.validate_at((now + chrono::Duration::hours(2)).timestamp() as u64, [&fp]).is_err());
    }
}
