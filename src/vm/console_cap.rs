//! Keeps every VM console file in `state_dir/consoles/` within `limits.console`.
//!
//! A host without an `image_pool` shares the daemon's filesystem, and its guests' serial
//! consoles are `file`s that QEMU (or libvirt's virtlogd, which opens them with `O_APPEND`
//! and rotates them into `<file>.N` at its own size) writes without back-pressure: a guest
//! printing forever would fill the disk. Once a second this keeper looks at the folder:
//! rotated copies are removed, and a file past the cap is cut to its newest half (from a line
//! start) after one line saying how many bytes were cut, so the console tail paddock keeps
//! with a failed run is still the guest's last words.
//!
//! Implementation note: the file is cut in place (read the tail, truncate, write marker and
//! tail back through an `O_APPEND` handle), because its writer keeps it open. The writer
//! appends (`O_APPEND`: virtlogd always, QEMU with `append='on'`), so its next bytes land
//! after what the keeper wrote, never in a hole; bytes written between the tail's read and the
//! truncation are lost, which only ever happens to a console already being cut. The keeper
//! holds no VM state: it survives a restart of the VM manager's owner and needs no adoption.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::warn;

/// How often the folder is looked at: a file passes its cap by at most what a guest writes in
/// this long (a TCG serial port here: ~0.45 MB/s, so ~90 KB).
pub const INTERVAL: Duration = Duration::from_millis(200);

/// The smallest cap the keeper applies (a smaller setting would cut on every look).
const MIN_CAP: u64 = 4096;

/// What one look at the folder did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Console files cut to their newest half.
    pub cut: usize,
    /// Rotated copies removed.
    pub rotated_removed: usize,
}

/// The keeper of one consoles folder: bytes cut so far per file, for the marker line.
#[derive(Debug)]
pub struct ConsoleCap {
    dir: PathBuf,
    cap: u64,
    /// Per file: guest bytes cut so far, and the length of the marker line the keeper put at
    /// its start (not the guest's, so not counted as cut).
    cut_so_far: HashMap<PathBuf, (u64, u64)>,
}

impl ConsoleCap {
    pub fn new(dir: impl Into<PathBuf>, cap: u64) -> ConsoleCap {
        ConsoleCap { dir: dir.into(), cap: cap.max(MIN_CAP), cut_so_far: HashMap::new() }
    }

    /// Runs a look every [`INTERVAL`] on a blocking thread, until `stop` says `true`.
    pub fn spawn(mut self, mut stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                match tokio::task::spawn_blocking(move || {
                    self.sweep();
                    self
                })
                .await
                {
                    Ok(me) => self = me,
                    Err(e) => {
                        warn!(error = %e, "the console keeper failed; consoles are no longer capped");
                        return;
                    }
                }
            }
        })
    }

    /// One look at the folder.
    pub fn sweep(&mut self) -> Sweep {
        let mut done = Sweep::default();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return done };
        let mut consoles = Vec::new();
        let mut rotated: HashMap<PathBuf, u64> = HashMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if name.ends_with(".log") {
                consoles.push(path);
            } else if let Some((base, n)) = name.rsplit_once('.')
                && base.ends_with(".log")
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
            {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        done.rotated_removed += 1;
                        *rotated.entry(self.dir.join(base)).or_default() += size;
                    }
                    Err(e) => warn!(path = %path.display(), error = %e, "could not remove a rotated console copy"),
                }
            }
        }
        self.cut_so_far.retain(|p, _| consoles.contains(p));
        for path in consoles {
            let dropped = rotated.remove(&path).unwrap_or(0);
            match self.keep(&path, dropped) {
                Ok(true) => done.cut += 1,
                Ok(false) => {}
                Err(e) => warn!(path = %path.display(), error = %e, "could not cut a console file"),
            }
        }
        done
    }

    /// Cuts `path` if it is past the cap or lost `dropped` bytes to rotation.
    fn keep(&mut self, path: &Path, dropped: u64) -> std::io::Result<bool> {
        let size = std::fs::metadata(path)?.len();
        if size <= self.cap && dropped == 0 {
            return Ok(false);
        }
        let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        let mut tail = Vec::new();
        if size > self.cap {
            let keep = self.cap / 2;
            file.seek(SeekFrom::Start(size - keep))?;
            Read::by_ref(&mut file).take(keep).read_to_end(&mut tail)?;
            // From a line start, so the tail reads as the guest wrote it.
            if let Some(nl) = tail.iter().position(|&b| b == b'\n') {
                tail.drain(..=nl);
            }
        } else {
            // Rotated copies only: keep all of what is there.
            file.read_to_end(&mut tail)?;
        }
        let (cut, marker_len) = self.cut_so_far.entry(path.to_path_buf()).or_default();
        *cut += dropped + size.saturating_sub(tail.len() as u64 + *marker_len);
        let marker = format!("[paddock: console cut: {} bytes left out before this line (limits.console = {} bytes)]\n", *cut, self.cap);
        *marker_len = marker.len() as u64;
        file.set_len(0)?;
        let mut append = std::fs::OpenOptions::new().append(true).open(path)?;
        append.write_all(marker.as_bytes())?;
        append.write_all(&tail)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_written_without_end_stays_within_its_cap_and_keeps_its_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("paddock-x-1.log");
        let mut writer = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let mut keeper = ConsoleCap::new(dir.path(), 64 << 10);
        let mut max_seen = 0;
        for i in 0..2000u32 {
            writeln!(writer, "line {i:06} {}", "x".repeat(200)).unwrap();
            if i % 100 == 99 {
                max_seen = max_seen.max(std::fs::metadata(&path).unwrap().len());
                keeper.sweep();
            }
        }
        keeper.sweep();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() as u64 <= 64 << 10, "{} bytes", text.len());
        // 100 lines of 213 bytes between two looks: the margin past the cap.
        assert!(max_seen <= (64 << 10) + 100 * 213, "{max_seen}");
        assert!(text.starts_with("[paddock: console cut: "), "{}", &text[..80]);
        assert!(text.ends_with(&format!("line 001999 {}\n", "x".repeat(200))));
        // The writer's bytes follow the marker, never a hole.
        assert!(!text.contains('\0'));
        let cut: u64 = text["[paddock: console cut: ".len()..].split(' ').next().unwrap().parse().unwrap();
        assert_eq!(cut + (text.len() - text.find('\n').unwrap() - 1) as u64, 2000 * 213);
    }

    #[test]
    fn rotated_copies_are_removed_and_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.log");
        std::fs::write(&path, "newest\n").unwrap();
        std::fs::write(dir.path().join("vm.log.0"), vec![b'a'; 1000]).unwrap();
        std::fs::write(dir.path().join("vm.log.1"), vec![b'b'; 500]).unwrap();
        std::fs::write(dir.path().join("other.txt.1"), "not a console").unwrap();
        let mut keeper = ConsoleCap::new(dir.path(), 1 << 20);
        assert_eq!(keeper.sweep(), Sweep { cut: 1, rotated_removed: 2 });
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "[paddock: console cut: 1500 bytes left out before this line (limits.console = 1048576 bytes)]\nnewest\n");
        assert!(dir.path().join("other.txt.1").exists());
        // Nothing more to do: the file is left alone.
        assert_eq!(keeper.sweep(), Sweep::default());
    }
}
