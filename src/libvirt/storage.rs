//! Image files onto a host through libvirt's storage API: a volume is created
//! in a pool, filled over a libvirt stream (so it works over `qemu+ssh://`
//! with no other tooling), read back and checked against the file's SHA-256.
//! Old versions (same prefix, other name) are removed.
//!
//! Every call blocks and opens its own connection: run on a blocking thread.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use virt::connect::Connect;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

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
}

/// Where a file ended up on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub path: String,
    /// False when the right volume was already there.
    pub sent: bool,
    /// Old versions that were removed.
    pub removed: Vec<String>,
}

/// Makes volume `name` in `pool` hold `file` (whose SHA-256 is `sha256`),
/// verified by reading it back; removes other volumes starting with `prefix`.
pub fn ensure_volume(uri: &str, pool: &str, name: &str, prefix: &str, file: &Path, sha256: &str) -> Result<Uploaded, StorageError> {
    super::init_libvirt();
    let conn = Connect::open(Some(uri)).map_err(|source| StorageError::Connect { uri: uri.into(), source })?;
    let p = conn.lookup_storage_pool_by_name(pool).map_err(|source| StorageError::Pool { uri: uri.into(), pool: pool.into(), source })?;
    let _ = p.refresh(0);
    let size = std::fs::metadata(file).map_err(|source| StorageError::File { path: file.display().to_string(), source })?.len();
    let mut sent = false;
    let vol = match p.lookup_storage_vol_by_name(name) {
        Ok(v) if v.info().is_ok_and(|i| i.capacity == size) && read_sha(&conn, &v, name, size)? == sha256 => v,
        existing => {
            if let Ok(v) = existing {
                v.delete(0).map_err(|source| StorageError::Delete { volume: name.into(), source })?;
            }
            let xml = format!(
                "<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity><target><format type='raw'/></target></volume>"
            );
            let v = StorageVol::create_xml(&p, &xml, 0)
                .map_err(|source| StorageError::Create { pool: pool.into(), volume: name.into(), source })?;
            send(&conn, &v, name, file, size)?;
            let found = read_sha(&conn, &v, name, size)?;
            if found != sha256 {
                let _ = v.delete(0);
                return Err(StorageError::Mismatch { volume: name.into(), found, want: sha256.into() });
            }
            sent = true;
            v
        }
    };
    let mut removed = Vec::new();
    for old in p.list_all_volumes(0).unwrap_or_default() {
        let Ok(n) = old.name() else { continue };
        if n.starts_with(prefix) && n != name {
            old.delete(0).map_err(|source| StorageError::Delete { volume: n.clone(), source })?;
            removed.push(n);
        }
    }
    let path = vol.path().map_err(|source| StorageError::Stream { volume: name.into(), source })?;
    Ok(Uploaded { path, sent, removed })
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
