//! Storage calls of warm-start templates kept in a host's pool (issue 18): an empty volume
//! for libvirt to save a guest's memory into, a byte range of a volume read or written in
//! place over a libvirt stream (the save file's header, never the memory image behind it),
//! a small volume written whole and read back (a template's manifest), and a pool's
//! volumes with their backing files.
//!
//! Like `storage.rs`, every call blocks and opens its own connection: run it through
//! [`super::storage::with_deadline`].

use std::path::Path;

use virt::storage_vol::StorageVol;
use virt::stream::Stream;

use super::storage::{self, StorageError};

/// One volume of a pool: its name, path on the host, last change and backing file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolVolume {
    pub name: String,
    pub path: String,
    pub modified: Option<std::time::SystemTime>,
    /// The `<backingStore><path>` of a qcow2 overlay.
    pub backing: Option<String>,
    /// Bytes it takes on the host (`<allocation>`; 0 when the pool does not say).
    pub allocation: u64,
}

/// Creates an empty raw volume `name` in `pool` (for libvirt to save a domain into); its
/// path on the host. An existing volume of that name is an error.
pub fn create_empty(uri: &str, pool: &str, name: &str) -> Result<String, StorageError> {
    let (_conn, p) = storage::open_pool(uri, pool)?;
    let xml = format!("<volume><name>{name}</name><capacity unit='bytes'>0</capacity><target><format type='raw'/></target></volume>");
    let v =
        StorageVol::create_xml(&p, &xml, 0).map_err(|source| StorageError::Create { pool: pool.into(), volume: name.into(), source })?;
    v.path().map_err(|source| StorageError::Stream { volume: name.into(), source })
}

/// Bytes `offset..offset + len` of volume `name` (fewer when the volume ends first).
pub fn read_range(uri: &str, pool: &str, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, StorageError> {
    let (conn, p) = storage::open_pool(uri, pool)?;
    let err = |source| StorageError::Stream { volume: name.into(), source };
    let v = p.lookup_storage_vol_by_name(name).map_err(err)?;
    let stream = Stream::new(&conn, 0).map_err(err)?;
    v.download(&stream, offset, len, 0).map_err(err)?;
    let mut out = Vec::with_capacity(len.min(1 << 20) as usize);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = stream.recv(&mut buf).map_err(err)?;
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
        // The stream is bounded by `len`; a host that sends more is not believed.
        if out.len() as u64 > len {
            let _ = stream.abort();
            return Err(StorageError::Mismatch { volume: name.into(), found: format!("more than {len} bytes"), want: format!("{len}") });
        }
    }
    stream.finish().map_err(err)?;
    Ok(out)
}

/// Writes `bytes` into volume `name` at `offset`, in place: the rest of the volume stays.
pub fn write_at(uri: &str, pool: &str, name: &str, offset: u64, bytes: &[u8]) -> Result<(), StorageError> {
    let (conn, p) = storage::open_pool(uri, pool)?;
    let err = |source| StorageError::Stream { volume: name.into(), source };
    let v = p.lookup_storage_vol_by_name(name).map_err(err)?;
    let stream = Stream::new(&conn, 0).map_err(err)?;
    v.upload(&stream, offset, bytes.len() as u64, 0).map_err(err)?;
    let mut off = 0;
    while off < bytes.len() {
        let sent = stream.send(&bytes[off..]).map_err(err)?;
        off += sent.max(0) as usize;
    }
    stream.finish().map_err(err)
}

/// Makes volume `name` in `pool` hold exactly `bytes` (staged in `scratch`, a private
/// file of the daemon, sent, read back and checked); its path on the host.
pub fn put_bytes(uri: &str, pool: &str, name: &str, bytes: &[u8], scratch: &Path) -> Result<String, StorageError> {
    use sha2::Digest;
    let file = |source| StorageError::File { path: scratch.display().to_string(), source };
    std::fs::write(scratch, bytes).map_err(file)?;
    let sha = hex::encode(sha2::Sha256::digest(bytes));
    let up = storage::put_volume(uri, pool, name, scratch, &sha);
    let _ = std::fs::remove_file(scratch);
    Ok(up?.path)
}

/// The volumes of `pool` whose names start with `prefix`.
pub fn volumes(uri: &str, pool: &str, prefix: &str) -> Result<Vec<PoolVolume>, StorageError> {
    let (_conn, p) = storage::open_pool(uri, pool)?;
    let mut out = Vec::new();
    for v in p.list_all_volumes(0).unwrap_or_default() {
        let Ok(name) = v.name() else { continue };
        if !name.starts_with(prefix) {
            continue;
        }
        let xml = v.xml_desc(0).unwrap_or_default();
        let path = v.path().unwrap_or_default();
        out.push(PoolVolume { name, path, modified: storage::mtime(&xml), backing: backing_path(&xml), allocation: allocation(&xml) });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The volume's own `<allocation unit='bytes'>N</allocation>` (the first one: a backing
/// store's comes after it).
fn allocation(xml: &str) -> u64 {
    let Some(at) = xml.find("<allocation") else { return 0 };
    let rest = &xml[at..];
    let (Some(open), Some(close)) = (rest.find('>'), rest.find("</allocation>")) else { return 0 };
    let unit_bytes = !rest[..open].contains("unit=") || rest[..open].contains("'bytes'") || rest[..open].contains("\"bytes\"");
    match (unit_bytes, rest.get(open + 1..close)) {
        (true, Some(n)) => n.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

/// `<backingStore><path>P</path>` of a volume's XML.
fn backing_path(xml: &str) -> Option<String> {
    let bs = xml.find("<backingStore>")?;
    let rest = &xml[bs..];
    let start = rest.find("<path>")? + "<path>".len();
    let end = rest[start..].find("</path>")? + start;
    Some(rest[start..end].trim().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_overlays_backing_file_is_read_from_its_xml() {
        let xml = "<volume><target><path>/p/a.qcow2</path></target><backingStore><path>/p/t.disk.qcow2</path><format type='qcow2'/></backingStore></volume>";
        assert_eq!(super::backing_path(xml).as_deref(), Some("/p/t.disk.qcow2"));
        assert_eq!(super::backing_path("<volume><target><path>/p/a</path></target></volume>"), None);
    }

    #[test]
    fn a_volumes_allocation_is_its_own_in_bytes() {
        let xml = "<volume><capacity unit='bytes'>1073741824</capacity><allocation unit='bytes'>200704</allocation><backingStore><allocation unit='bytes'>9</allocation></backingStore></volume>";
        assert_eq!(super::allocation(xml), 200704);
        assert_eq!(super::allocation("<volume><allocation unit='KiB'>4</allocation></volume>"), 0);
        assert_eq!(super::allocation("<volume/>"), 0);
    }
}
