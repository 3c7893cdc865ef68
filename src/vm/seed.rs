//! Per-VM identity: a host key generated for each VM (pinned before it boots) and the
//! VM's own SSH principal, handed to the guest in a cloud-init NoCloud seed — a small
//! ISO 9660 image labelled `cidata` holding `user-data` and `meta-data`, the standard
//! that cloud-init (Linux) and cloudbase-init (Windows) read.
//!
//! The seed is written next to the VM's overlay (`state_dir/overlays/<vm>-seed.iso`,
//! mode 0600) so reconciliation reaps an orphaned one exactly like an overlay; on a pool
//! host it goes up through libvirt storage like the overlay does.
//!
//! Implementation note: the ISO is made by Debian's `xorriso` (`-as mkisofs`), run with
//! a deadline. A seed is two small text files; xorriso is maintained, packaged everywhere
//! libvirt is, and already what labs use (`cloud-localds` calls genisoimage, which is
//! unmaintained). The pure-Rust ISO writers we looked at were young and would add a
//! dependency tree for 30 ms of work.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

use crate::config::Os;

/// How long xorriso may take for a seed (it takes ~30 ms).
const ISO_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("generating a host key for VM {vm}")]
    Generate { vm: String, source: ssh_key::Error },
    #[error("encoding the host key of VM {vm}")]
    Encode { vm: String, source: ssh_key::Error },
    #[error("writing {}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("running xorriso to make {} (is the `xorriso` package installed?)", path.display())]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("xorriso did not make {} within {ISO_DEADLINE:?}", path.display())]
    Timeout { path: PathBuf },
    #[error("xorriso failed to make {}: {stderr}", path.display())]
    Iso { path: PathBuf, stderr: String },
}

/// One VM's identity: what it proves to paddock (its host key) and what a certificate
/// must name to log in to it (its principal).
#[derive(Clone)]
pub struct Identity {
    host_key: PrivateKey,
    /// The only principal the guest accepts in a user certificate: the VM's name.
    pub principal: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private half.
        f.debug_struct("Identity").field("host_key", &self.public_line()).field("principal", &self.principal).finish()
    }
}

impl Identity {
    /// A fresh ed25519 host key for VM `name`, whose principal is its name.
    pub fn generate(name: &str) -> Result<Identity, SeedError> {
        let mut rng = ssh_key::rand_core::UnwrapErr(ssh_key::getrandom::SysRng);
        let mut key = PrivateKey::random(&mut rng, Algorithm::Ed25519).map_err(|source| SeedError::Generate { vm: name.into(), source })?;
        key.set_comment(name);
        Ok(Identity { host_key: key, principal: name.to_string() })
    }

    /// A fixed key (tests and snapshots).
    #[cfg(test)]
    pub(crate) fn from_seed(name: &str, seed: [u8; 32]) -> Identity {
        let pair = ssh_key::private::Ed25519Keypair::from_seed(&seed);
        let mut key = PrivateKey::from(pair);
        key.set_comment(name);
        Identity { host_key: key, principal: name.to_string() }
    }

    /// The public host key paddock pins for this VM.
    pub fn public_key(&self) -> &PublicKey {
        self.host_key.public_key()
    }

    /// `ssh-ed25519 AAAA... <vm>`.
    pub fn public_line(&self) -> String {
        self.host_key.public_key().to_openssh().unwrap_or_default()
    }

    /// The OpenSSH private key file text (only ever handed to the VM itself: its seed or
    /// its kernel command line).
    pub fn private_pem(&self) -> Result<String, SeedError> {
        self.host_key
            .to_openssh(LineEnding::LF)
            .map(|p| p.to_string())
            .map_err(|source| SeedError::Encode { vm: self.principal.clone(), source })
    }
}

/// What goes into one VM's seed besides its identity.
#[derive(Debug, Clone)]
pub struct SeedSpec<'a> {
    /// The VM's name: its hostname and cloud-init instance id.
    pub name: &'a str,
    pub os: Os,
    /// The image's login user (root on Linux, an administrator on Windows).
    pub user: &'a str,
    /// `authorized_keys` lines: paddock's own login key.
    pub authorized_keys: &'a [String],
    /// The fleet CA's public key line, trusted for user certificates naming the principal.
    pub ca_key: Option<&'a str>,
    pub identity: &'a Identity,
}

/// The seed file of VM `name` under a state directory (beside its overlay).
pub fn path_for(state_dir: &Path, name: &str) -> PathBuf {
    super::overlay::dir(state_dir).join(format!("{name}{SEED_SUFFIX}"))
}

/// How a seed's file name ends; what comes before it is the VM's name.
pub const SEED_SUFFIX: &str = crate::libvirt::storage::SEED_SUFFIX;

/// `meta-data`: the instance id (a new VM is a new instance, so cloud-init runs its
/// per-instance modules), the hostname, and for cloudbase-init the public keys.
pub fn meta_data(spec: &SeedSpec<'_>) -> String {
    let mut m = json!({ "instance-id": spec.name, "local-hostname": spec.name });
    if spec.os == Os::Windows {
        // cloudbase-init takes SSH keys from the metadata, not from cloud-config.
        m["public-keys"] = json!(spec.authorized_keys.iter().map(|k| k.trim()).collect::<Vec<_>>());
        m["admin-username"] = json!(spec.user);
    }
    pretty(&m)
}

/// `user-data`: a `#cloud-config` document (written as JSON, which is YAML).
pub fn user_data(spec: &SeedSpec<'_>) -> Result<String, SeedError> {
    let doc = match spec.os {
        Os::Windows => windows_config(spec)?,
        Os::Linux | Os::Macos => posix_config(spec)?,
    };
    Ok(format!("#cloud-config\n{}", pretty(&doc)))
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("JSON values always serialise");
    s.push('\n');
    s
}

/// The sshd settings every seeded guest gets: certificates from the fleet CA log in only
/// if they name this VM's principal; no passwords.
fn sshd_conf(ca_path: &str, principals_path: &str, with_ca: bool) -> String {
    let mut conf =
        String::from("# paddock: written from this VM's cloud-init seed\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n");
    if with_ca {
        conf.push_str(&format!("TrustedUserCAKeys {ca_path}\nAuthorizedPrincipalsFile {principals_path}\n"));
    }
    conf
}

fn posix_config(spec: &SeedSpec<'_>) -> Result<Value, SeedError> {
    let id = spec.identity;
    let mut files = vec![json!({
        "path": "/etc/ssh/sshd_config.d/50-paddock.conf",
        "permissions": "0644",
        "content": sshd_conf("/etc/ssh/paddock_ca.pub", "/etc/ssh/auth_principals/%u", spec.ca_key.is_some()),
    })];
    if let Some(ca) = spec.ca_key {
        files.push(json!({ "path": "/etc/ssh/paddock_ca.pub", "permissions": "0644", "content": format!("{}\n", ca.trim()) }));
        // Only this VM's principal: a certificate for another VM is refused here.
        files.push(json!({
            "path": format!("/etc/ssh/auth_principals/{}", spec.user),
            "permissions": "0644",
            "content": format!("{}\n", id.principal),
        }));
    }
    Ok(json!({
        "hostname": spec.name,
        "preserve_hostname": false,
        "users": [],
        "disable_root": false,
        "ssh_pwauth": false,
        "ssh_deletekeys": true,
        "ssh_genkeytypes": [],
        "ssh_keys": { "ed25519_private": id.private_pem()?, "ed25519_public": id.public_line() },
        "ssh_authorized_keys": spec.authorized_keys.iter().map(|k| k.trim()).collect::<Vec<_>>(),
        "write_files": files,
    }))
}

/// cloudbase-init's cloud-config subset: `set_hostname`, `write_files`, `runcmd`. Windows
/// OpenSSH reads keys of administrators from `administrators_authorized_keys` and
/// refuses host keys and key files that others can read, hence the `icacls` lines.
fn windows_config(spec: &SeedSpec<'_>) -> Result<Value, SeedError> {
    let id = spec.identity;
    let dir = "C:/ProgramData/ssh";
    let keys: String = spec.authorized_keys.iter().map(|k| format!("{}\r\n", k.trim())).collect();
    let mut files = vec![
        json!({ "path": format!("{dir}/ssh_host_ed25519_key"), "content": id.private_pem()? }),
        json!({ "path": format!("{dir}/ssh_host_ed25519_key.pub"), "content": format!("{}\r\n", id.public_line()) }),
        json!({ "path": format!("{dir}/administrators_authorized_keys"), "content": keys }),
        json!({
            "path": format!("{dir}/sshd_config_paddock"),
            "content": sshd_conf("__PROGRAMDATA__/ssh/paddock_ca.pub", "__PROGRAMDATA__/ssh/auth_principals/%u", spec.ca_key.is_some()),
        }),
    ];
    if let Some(ca) = spec.ca_key {
        files.push(json!({ "path": format!("{dir}/paddock_ca.pub"), "content": format!("{}\r\n", ca.trim()) }));
        files.push(json!({ "path": format!("{dir}/auth_principals/{}", spec.user), "content": format!("{}\r\n", id.principal) }));
    }
    let acl = |f: &str| format!("icacls.exe \"{dir}/{f}\" /inheritance:r /grant \"Administrators:F\" /grant \"SYSTEM:F\"");
    let runcmd = vec![
        acl("ssh_host_ed25519_key"),
        acl("administrators_authorized_keys"),
        // sshd_config is read top-down and the first value wins: put paddock's lines first.
        format!(
            "powershell -NoProfile -Command \"$c = Get-Content -Raw '{dir}/sshd_config_paddock'; $o = Get-Content -Raw '{dir}/sshd_config'; Set-Content -Path '{dir}/sshd_config' -Value ($c + $o); Restart-Service sshd\""
        ),
    ];
    Ok(json!({ "set_hostname": spec.name, "write_files": files, "runcmd": runcmd }))
}

/// Writes the seed ISO for `spec` at `iso` (mode 0600; the private host key is in it).
/// The two files are staged in a private folder beside it and removed afterwards.
pub async fn write(spec: &SeedSpec<'_>, iso: &Path) -> Result<(), SeedError> {
    let parent = iso.parent().unwrap_or(Path::new("."));
    let stage = parent.join(format!(".{}.stage", spec.name));
    let staged = async {
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&stage)
            .map_err(|source| SeedError::Write { path: stage.clone(), source })?;
        write_private(&stage.join("user-data"), user_data(spec)?.as_bytes())?;
        write_private(&stage.join("meta-data"), meta_data(spec).as_bytes())?;
        make_iso(&stage, iso).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&stage);
    staged?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(iso, std::fs::Permissions::from_mode(0o600)).map_err(|source| SeedError::Write { path: iso.into(), source })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SeedError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SeedError::Write { path: path.into(), source })?;
    f.write_all(bytes).map_err(|source| SeedError::Write { path: path.into(), source })
}

async fn make_iso(stage: &Path, iso: &Path) -> Result<(), SeedError> {
    let _ = std::fs::remove_file(iso);
    let child = tokio::process::Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
        .arg(iso)
        .arg(stage)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SeedError::Spawn { path: iso.into(), source })?;
    let out = tokio::time::timeout(ISO_DEADLINE, child.wait_with_output())
        .await
        .map_err(|_| SeedError::Timeout { path: iso.into() })?
        .map_err(|source| SeedError::Spawn { path: iso.into(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(SeedError::Iso { path: iso.into(), stderr: stderr.chars().take(2000).collect::<String>().trim().into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
