//! The checksum cache: SHA-256s of image files and of volumes already read back, kept in
//! `state_dir/checksums/` so that a daemon start does not hash the same 300 MB disk again, nor
//! read an unchanged volume back over a pool host's SSH link.
//!
//! An entry is found by a key that names everything a change of content changes: for a local
//! file its path, size, mtime, ctime, device and inode (ctime moves on every write and cannot
//! be set back by `touch`); for a volume its host, pool, name, path, size and the mtime and
//! ctime its host reports. A changed file is a new key, so its entry is never found again
//! (old entries are pruned, [`MAX_ENTRIES`] kept). One small file per entry, written to a
//! temporary name and renamed: concurrent writers (the host check and an upload, or two daemon
//! processes of one state dir one after the other) never see half an entry, and a lost write
//! only costs a hash.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};

/// How many entries the cache keeps; the oldest go first.
pub const MAX_ENTRIES: usize = 256;

/// An entry file is a key line and a hash line; anything longer is not one of ours.
const MAX_ENTRY_BYTES: u64 = 8 * 1024;

/// Where checksums are remembered; [`Checksums::none`] (the default) remembers nothing.
#[derive(Debug, Clone, Default)]
pub struct Checksums {
    dir: Option<PathBuf>,
}

/// A file's SHA-256 and whether this call read the file to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    pub sha256: String,
    pub computed: bool,
}

impl Checksums {
    /// The cache of a daemon's state directory.
    pub fn in_state_dir(state_dir: &Path) -> Checksums {
        Checksums { dir: Some(state_dir.join("checksums")) }
    }

    /// No cache: every file is hashed, every volume read back.
    pub fn none() -> Checksums {
        Checksums { dir: None }
    }

    /// The SHA-256 of the file at `path` (lowercase hex): from the cache when the file's
    /// size, times and inode are those it had when it was hashed. Blocks on disk reads.
    pub fn file(&self, path: &Path) -> std::io::Result<Hashed> {
        // One reader per file at a time: the host check, the template key and the upload all
        // ask at a daemon's start, and the later ones then find the first one's entry.
        let lock = self.dir.as_ref().map(|_| file_lock(path));
        let _held = lock.as_ref().map(|l| l.lock().unwrap_or_else(|e| e.into_inner()));
        let before = file_key(path)?;
        if let Some(sha256) = self.get(&before) {
            return Ok(Hashed { sha256, computed: false });
        }
        let sha256 = sha256_of(path)?;
        // A file that changed while it was read is hashed again next time.
        if file_key(path).is_ok_and(|after| after == before) {
            self.put(&before, &sha256);
        }
        Ok(Hashed { sha256, computed: true })
    }

    /// The hash remembered under `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let path = self.entry(key)?;
        let mut text = String::new();
        std::fs::File::open(&path).ok()?.take(MAX_ENTRY_BYTES).read_to_string(&mut text).ok()?;
        let (stored, rest) = text.split_once('\n')?;
        let sha = rest.trim_end_matches('\n');
        (stored == key && sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then(|| sha.to_string())
    }

    /// Remembers `sha256` under `key`. Best effort: a cache that cannot be written costs
    /// only the next hash.
    pub fn put(&self, key: &str, sha256: &str) {
        let (Some(dir), Some(path)) = (self.dir.as_ref(), self.entry(key)) else { return };
        let made = std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(dir);
        if key.contains('\n') || made.is_err() {
            return;
        }
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), rand::random::<u64>()));
        if std::fs::write(&tmp, format!("{key}\n{sha256}\n")).is_ok() && std::fs::rename(&tmp, &path).is_ok() {
            prune(dir);
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    fn entry(&self, key: &str) -> Option<PathBuf> {
        let name = hex::encode(&Sha256::digest(key.as_bytes())[..16]);
        self.dir.as_ref().map(|d| d.join(name))
    }
}

/// The in-process lock of `path`'s hashing.
fn file_lock(path: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    locks.entry(path.to_path_buf()).or_default().clone()
}

/// The cache key of a local file as it is now.
fn file_key(path: &Path) -> std::io::Result<String> {
    let m = std::fs::metadata(path)?;
    Ok(format!(
        "file path={:?} len={} mtime={}.{:09} ctime={}.{:09} dev={} ino={}",
        path,
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.dev(),
        m.ino()
    ))
}

/// The SHA-256 of a file, as lowercase hex (always read).
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Keeps the newest [`MAX_ENTRIES`] entries of `dir`.
fn prune(dir: &Path) {
    let Ok(read) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = read
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if entries.len() <= MAX_ENTRIES {
        return;
    }
    entries.sort();
    for (_, p) in &entries[..entries.len() - MAX_ENTRIES] {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_file_is_hashed_once_and_a_touch_or_a_write_hashes_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Checksums::in_state_dir(&dir.path().join("state"));
        let f = dir.path().join("disk");
        std::fs::write(&f, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(cache.file(&f).unwrap(), Hashed { sha256: abc.into(), computed: true });
        assert_eq!(cache.file(&f).unwrap(), Hashed { sha256: abc.into(), computed: false });
        // Another instance on the same state dir (the next daemon start) finds it too.
        let next = Checksums::in_state_dir(&dir.path().join("state"));
        assert!(!next.file(&f).unwrap().computed);

        // A touch changes the times: hashed again (same content, same hash).
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(later).unwrap();
        assert_eq!(cache.file(&f).unwrap(), Hashed { sha256: abc.into(), computed: true });
        // Appending changes size, mtime and ctime: a new hash.
        std::io::Write::write_all(&mut std::fs::OpenOptions::new().append(true).open(&f).unwrap(), b"d").unwrap();
        let h = cache.file(&f).unwrap();
        assert!(h.computed);
        assert_eq!(h.sha256, "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589");
        // Rewriting in place with the same size and the old mtime still moves ctime.
        let meta = std::fs::metadata(&f).unwrap();
        std::fs::write(&f, b"abce").unwrap();
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(meta.modified().unwrap()).unwrap();
        let h = cache.file(&f).unwrap();
        assert!(h.computed, "a same-size rewrite with its mtime set back must not hit the cache");
        assert_ne!(h.sha256, "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589");

        // No cache: always read.
        assert!(Checksums::none().file(&f).unwrap().computed);
        assert!(Checksums::none().file(&f).unwrap().computed);
    }

    #[test]
    fn entries_are_checked_against_their_key_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Checksums::in_state_dir(dir.path());
        let sha = "a".repeat(64);
        cache.put("k1", &sha);
        assert_eq!(cache.get("k1"), Some(sha.clone()));
        assert_eq!(cache.get("k2"), None);
        // A damaged entry is no entry.
        let path = cache.entry("k1").unwrap();
        std::fs::write(&path, "k1\nnot-a-hash\n").unwrap();
        assert_eq!(cache.get("k1"), None);
        std::fs::write(&path, format!("k0\n{sha}\n")).unwrap();
        assert_eq!(cache.get("k1"), None, "an entry under another key");
        for i in 0..MAX_ENTRIES + 10 {
            cache.put(&format!("key {i}"), &sha);
        }
        let n = std::fs::read_dir(dir.path().join("checksums")).unwrap().count();
        assert!(n <= MAX_ENTRIES, "{n} entries");
        assert_eq!(cache.get(&format!("key {}", MAX_ENTRIES + 9)), Some(sha));
    }
}
