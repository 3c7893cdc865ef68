//! Image files onto a host through libvirt's storage API: a volume is created
//! in a pool, filled over a libvirt stream (so it works over `qemu+ssh://`
//! with no other tooling), read back and checked against the file's SHA-256.
//! Old versions (same prefix, other name) are removed when asked, and disk
//! overlays are created as qcow2 volumes backed by an uploaded base.
//!
//! Every call blocks and opens its own connection: run on a blocking thread,
//! through [`with_deadline`] so that a frozen host costs its caller at most a
//! deadline (the blocking thread itself is left to finish when the host answers).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use virt::connect::Connect;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use crate::checksums::Checksums;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("connecting to {uri}")]
    Connect { uri: String, source: virt::error::Error },
    #[error("no storage pool {pool} on {uri}")]
    Pool { uri: String, pool: String, source: virt::error::Error },
    #[error("reading {path}")]
    File { path: String, source: std::io::Error },
    #[error("creating volume {volume} in pool {pool}")]
    Create { pool: String, volume: String, source: virt::error::Error },
    #[error("streaming volume {volume}")]
    Stream { volume: String, source: virt::error::Error },
    #[error("volume {volume} has sha256 {found}, the file {want}")]
    Mismatch { volume: String, found: String, want: String },
    #[error("deleting volume {volume}")]
    Delete { volume: String, source: virt::error::Error },
    #[error("{what} got no answer within {after:?}")]
    Timeout { what: String, after: std::time::Duration },
    #[error("{what}: the blocking task failed: {reason}")]
    Task { what: String, reason: String },
}

/// Runs blocking storage work `f` on a blocking thread with a deadline.
pub async fn with_deadline<T: Send + 'static>(
    what: impl Into<String>,
    after: std::time::Duration,
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    let what = what.into();
    match tokio::time::timeout(after, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(StorageError::Task { what, reason: e.to_string() }),
        Err(_) => Err(StorageError::Timeout { what, after }),
    }
}

/// Where a file ended up on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub path: String,
    /// False when the right volume was already there.
    pub sent: bool,
    /// Whether this call read the volume back to check it (false: its checksum was known
    /// for its current size and times).
    pub read_back: bool,
    /// Old versions that were removed.
    pub removed: Vec<String>,
}

/// Makes volume `name` in `pool` hold `file` (whose SHA-256 is `sha256`),
/// verified by reading it back; removes other volumes starting with `prefix`.
pub fn ensure_volume(uri: &str, pool: &str, name: &str, prefix: &str, file: &Path, sha256: &str) -> Result<Uploaded, StorageError> {
    let mut up = put_volume(uri, pool, name, file, sha256)?;
    up.removed = remove_volumes(uri, pool, prefix, &[name.to_string()])?;
    Ok(up)
}

/// Makes volume `name` in `pool` hold `file` (whose SHA-256 is `sha256`),
/// verified by reading it back. Other versions are left alone: VMs may still
/// boot from them (see [`remove_volumes`]).
pub fn put_volume(uri: &str, pool: &str, name: &str, file: &Path, sha256: &str) -> Result<Uploaded, StorageError> {
    put_volume_with(uri, pool, name, file, sha256, &Checksums::none())
}

/// As [`put_volume`], but a volume already there is not read back when `known` holds its
/// checksum for the size and times the host reports for it now (read back once, it is
/// remembered; any write to it on the host moves its ctime and so reads it again).
pub fn put_volume_with(uri: &str, pool: &str, name: &str, file: &Path, sha256: &str, known: &Checksums) -> Result<Uploaded, StorageError> {
    let (conn, p) = open_pool(uri, pool)?;
    let size = std::fs::metadata(file).map_err(|source| StorageError::File { path: file.display().to_string(), source })?.len();
    let mut sent = false;
    let mut read_back = false;
    let mut content = |v: &StorageVol| -> Result<String, StorageError> {
        let key = volume_key(uri, pool, name, v, size);
        if let Some(sha) = key.as_deref().and_then(|k| known.get(k)) {
            return Ok(sha);
        }
        read_back = true;
        let sha = read_sha(&conn, v, name, size)?;
        // Reading moves only the atime: the key from before still names this content.
        if let Some(k) = key {
            known.put(&k, &sha);
        }
        Ok(sha)
    };
    let vol = match p.lookup_storage_vol_by_name(name) {
        Ok(v) if v.info().is_ok_and(|i| i.capacity == size) && content(&v)? == sha256 => v,
        existing => {
            if let Ok(v) = existing {
                v.delete(0).map_err(|source| StorageError::Delete { volume: name.into(), source })?;
            }
            let xml = format!(
                "<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity><target><format type='raw'/></target></volume>"
            );
            let v = StorageVol::create_xml(&p, &xml, 0).map_err(|source| StorageError::Create {
                pool: pool.into(),
                volume: name.into(),
                source,
            })?;
            send(&conn, &v, name, file, size)?;
            let found = content(&v)?;
            if found != sha256 {
                let _ = v.delete(0);
                return Err(StorageError::Mismatch { volume: name.into(), found, want: sha256.into() });
            }
            sent = true;
            v
        }
    };
    let path = vol.path().map_err(|source| StorageError::Stream { volume: name.into(), source })?;
    Ok(Uploaded { path, sent, read_back, removed: Vec::new() })
}

/// What a volume's checksum is remembered under: host, pool, name, path, size and the
/// modification and change times its host reports (`None` when it reports none: such a
/// volume is always read back).
fn volume_key(uri: &str, pool: &str, name: &str, v: &StorageVol, size: u64) -> Option<String> {
    let xml = v.xml_desc(0).ok()?;
    let (mtime, ctime) = (timestamp(&xml, "mtime")?, timestamp(&xml, "ctime")?);
    let path = v.path().ok()?;
    Some(format!("volume uri={uri:?} pool={pool:?} name={name:?} path={path:?} size={size} mtime={mtime} ctime={ctime}"))
}

/// Removes the versions of a file in `pool`: volumes named `prefix` followed
/// by a 16-digit hex hash, except those in `keep`. (The exact shape matters:
/// image `a`'s prefix `paddock-a-disk-` also begins image `a-disk`'s names.)
pub fn remove_volumes(uri: &str, pool: &str, prefix: &str, keep: &[String]) -> Result<Vec<String>, StorageError> {
    let (_conn, p) = open_pool(uri, pool)?;
    let mut removed = Vec::new();
    for old in p.list_all_volumes(0).unwrap_or_default() {
        let Ok(n) = old.name() else { continue };
        let version = n.strip_prefix(prefix).is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit()));
        if version && !keep.contains(&n) {
            old.delete(0).map_err(|source| StorageError::Delete { volume: n.clone(), source })?;
            removed.push(n);
        }
    }
    Ok(removed)
}

/// Creates a qcow2 volume `name` of `capacity` bytes (the base's virtual
/// size) in `pool`, backed by the volume at `backing` (of format
/// `backing_format`); returns its path on the host. The host's libvirt writes
/// the file, so this works on remote hosts too.
pub fn create_overlay(
    uri: &str,
    pool: &str,
    name: &str,
    backing: &str,
    backing_format: &str,
    capacity: u64,
) -> Result<String, StorageError> {
    let (_conn, p) = open_pool(uri, pool)?;
    let xml = format!(
        "<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity><target><format type='qcow2'/></target>\
         <backingStore><path>{backing}</path><format type='{backing_format}'/></backingStore></volume>"
    );
    let v =
        StorageVol::create_xml(&p, &xml, 0).map_err(|source| StorageError::Create { pool: pool.into(), volume: name.into(), source })?;
    v.path().map_err(|source| StorageError::Stream { volume: name.into(), source })
}

/// Deletes volume `name` from `pool`; a volume that is not there is fine.
pub fn delete_volume(uri: &str, pool: &str, name: &str) -> Result<(), StorageError> {
    let (_conn, p) = open_pool(uri, pool)?;
    let _ = p.refresh(0);
    match p.lookup_storage_vol_by_name(name) {
        Ok(v) => v.delete(0).map_err(|source| StorageError::Delete { volume: name.into(), source }),
        Err(_) => Ok(()),
    }
}

/// An overlay volume (`<vm>-overlay.qcow2`) in a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayVolume {
    pub volume: String,
    /// The VM it belongs to (the name without `-overlay.qcow2`).
    pub vm: String,
    /// Its last change, when the pool reports timestamps (directory pools do).
    pub modified: Option<std::time::SystemTime>,
}

/// The per-VM volumes in `pool` (overlays and cloud-init seeds) of VMs whose names start
/// with `vm_prefix`.
pub fn overlay_volumes(uri: &str, pool: &str, vm_prefix: &str) -> Result<Vec<OverlayVolume>, StorageError> {
    let (_conn, p) = open_pool(uri, pool)?;
    let mut found = Vec::new();
    for v in p.list_all_volumes(0).unwrap_or_default() {
        let Ok(name) = v.name() else { continue };
        let owner = name.strip_suffix(OVERLAY_SUFFIX).or_else(|| name.strip_suffix(SEED_SUFFIX));
        let Some(vm) = owner.filter(|vm| vm.starts_with(vm_prefix)) else { continue };
        let modified = v.xml_desc(0).ok().and_then(|xml| mtime(&xml));
        found.push(OverlayVolume { vm: vm.to_string(), volume: name, modified });
    }
    Ok(found)
}

/// What an overlay volume's name ends with after its VM's name.
pub const OVERLAY_SUFFIX: &str = "-overlay.qcow2";

/// What a per-VM cloud-init seed's name ends with after its VM's name (a volume on a pool
/// host, a file beside the overlay on a local one).
pub const SEED_SUFFIX: &str = "-seed.iso";

/// `<timestamps><mtime>1701234567.123456789</mtime>` of a volume's XML.
pub(super) fn mtime(xml: &str) -> Option<std::time::SystemTime> {
    let text = timestamp(xml, "mtime")?;
    let (secs, nanos) = text.trim().split_once('.').unwrap_or((text.trim(), "0"));
    let nanos: u32 = format!("{nanos:0<9}").get(..9)?.parse().ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::new(secs.parse().ok()?, nanos))
}

/// The text of `<timestamps><TAG>` in a volume's XML.
fn timestamp<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let start = xml.find(&open)? + open.len();
    Some(xml[start..start + xml[start..].find(&close)?].trim())
}

pub(super) fn open_pool(uri: &str, pool: &str) -> Result<(Connect, StoragePool), StorageError> {
    super::init_libvirt();
    let conn = Connect::open(Some(uri)).map_err(|source| StorageError::Connect { uri: uri.into(), source })?;
    let p = conn.lookup_storage_pool_by_name(pool).map_err(|source| StorageError::Pool { uri: uri.into(), pool: pool.into(), source })?;
    let _ = p.refresh(0);
    Ok((conn, p))
}

fn send(conn: &Connect, v: &StorageVol, name: &str, file: &Path, size: u64) -> Result<(), StorageError> {
    let err = |source| StorageError::Stream { volume: name.into(), source };
    let stream = Stream::new(conn, 0).map_err(err)?;
    v.upload(&stream, 0, size, 0).map_err(err)?;
    let mut f = std::fs::File::open(file).map_err(|source| StorageError::File { path: file.display().to_string(), source })?;
    let mut buf = vec![0u8; 1 << 18];
    loop {
        let n = f.read(&mut buf).map_err(|source| StorageError::File { path: file.display().to_string(), source })?;
        if n == 0 {
            break;
        }
        let mut off = 0;
        while off < n {
            let sent = stream.send(&buf[off..n]).map_err(err)?;
            off += sent.max(0) as usize;
        }
    }
    stream.finish().map_err(err)
}

fn read_sha(conn: &Connect, v: &StorageVol, name: &str, size: u64) -> Result<String, StorageError> {
    let err = |source| StorageError::Stream { volume: name.into(), source };
    let stream = Stream::new(conn, 0).map_err(err)?;
    v.download(&stream, 0, size, 0).map_err(err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 18];
    loop {
        let n = stream.recv(&mut buf).map_err(err)?;
        if n <= 0 {
            break;
        }
        h.update(&buf[..n as usize]);
    }
    stream.finish().map_err(err)?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_volumes_mtime_is_read_from_its_xml() {
        let xml = "<volume><target><timestamps><atime>1.5</atime><mtime>1701234567.25</mtime></timestamps></target></volume>";
        let t = super::mtime(xml).unwrap();
        assert_eq!(t.duration_since(std::time::UNIX_EPOCH).unwrap(), std::time::Duration::from_millis(1_701_234_567_250));
        assert_eq!(super::mtime("<volume/>"), None);
    }
}
