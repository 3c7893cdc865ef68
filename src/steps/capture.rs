//! Size-capped output capture: keep the head and the tail of a stream, and say what was cut.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The line put where bytes were cut out.
pub fn cut_marker(cut: u64) -> String {
    format!("\n[paddock: {cut} bytes cut]\n")
}

/// The last `cap` bytes pushed.
#[derive(Debug)]
struct Tail {
    cap: usize,
    buf: VecDeque<u8>,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        if data.len() >= self.cap {
            self.buf.clear();
            self.buf.extend(&data[data.len() - self.cap..]);
            return;
        }
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }
}

/// In-memory head + tail of a stream, at most `cap` bytes of output plus the marker.
#[derive(Debug)]
pub struct Capture {
    head_cap: usize,
    head: Vec<u8>,
    tail: Tail,
    total: u64,
}

impl Capture {
    pub fn new(cap: usize) -> Capture {
        let head_cap = cap / 2;
        Capture { head_cap, head: Vec::new(), tail: Tail { cap: cap - head_cap, buf: VecDeque::new() }, total: 0 }
    }

    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.head_cap - self.head.len();
        if room > 0 {
            let n = room.min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if !data.is_empty() {
            self.tail.push(data);
        }
    }

    /// Every byte seen, cut or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn finish(self) -> Vec<u8> {
        let kept = (self.head.len() + self.tail.buf.len()) as u64;
        let mut out = self.head;
        if self.total > kept {
            out.extend_from_slice(cut_marker(self.total - kept).as_bytes());
        }
        out.extend(self.tail.buf);
        out
    }
}

/// A log file holding the head of a stream as it arrives and, at the end, the marker and the
/// tail (kept in memory meanwhile).
///
/// Implementation note: writes go through a plain `BufWriter<File>` on the async task. They land
/// in the page cache and take microseconds; a `spawn_blocking` per chunk would cost more than it
/// saves and reorder nothing.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    out: BufWriter<File>,
    head_cap: u64,
    head_left: u64,
    tail: Tail,
    total: u64,
}

impl LogFile {
    pub fn create(path: &Path, cap: u64) -> std::io::Result<LogFile> {
        let head = cap / 2;
        let file = File::create(path)?;
        Ok(LogFile {
            path: path.to_owned(),
            out: BufWriter::with_capacity(256 * 1024, file),
            head_cap: head,
            head_left: head,
            tail: Tail { cap: (cap - head) as usize, buf: VecDeque::new() },
            total: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        self.total += data.len() as u64;
        if self.head_left > 0 {
            let n = (self.head_left as usize).min(data.len());
            self.out.write_all(&data[..n])?;
            self.head_left -= n as u64;
            data = &data[n..];
        }
        if !data.is_empty() {
            self.tail.push(data);
        }
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<()> {
        let kept = (self.head_cap - self.head_left) + self.tail.buf.len() as u64;
        if self.total > kept {
            self.out.write_all(cut_marker(self.total - kept).as_bytes())?;
        }
        let (a, b) = self.tail.buf.as_slices();
        self.out.write_all(a)?;
        self.out.write_all(b)?;
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_output_is_kept_whole() {
        let mut c = Capture::new(10);
        c.push(b"abc");
        c.push(b"defg");
        assert_eq!(c.total(), 7);
        assert_eq!(c.finish(), b"abcdefg");
    }

    #[test]
    fn exactly_the_cap_is_not_cut() {
        let mut c = Capture::new(10);
        c.push(b"0123456789");
        assert_eq!(c.finish(), b"0123456789");
    }

    #[test]
    fn large_output_keeps_head_and_tail() {
        let mut c = Capture::new(10);
        for chunk in (0..100u8).collect::<Vec<_>>().chunks(7) {
            c.push(chunk);
        }
        let mut expected = vec![0, 1, 2, 3, 4];
        expected.extend_from_slice(cut_marker(90).as_bytes());
        expected.extend_from_slice(&[95, 96, 97, 98, 99]);
        assert_eq!(c.finish(), expected);
    }

    #[test]
    fn log_file_cuts_like_capture() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut log = LogFile::create(&path, 10).unwrap();
        let mut cap = Capture::new(10);
        for chunk in (0..100u8).collect::<Vec<_>>().chunks(3) {
            log.write(chunk).unwrap();
            cap.push(chunk);
        }
        log.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), cap.finish());

        let mut small = LogFile::create(&path, 10).unwrap();
        small.write(b"hello").unwrap();
        small.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
    }
}
