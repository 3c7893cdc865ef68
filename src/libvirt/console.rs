//! A guest's serial console, read over the libvirt connection
//! (`virDomainOpenConsole`) and copied into a file on the daemon's machine, so
//! boot diagnostics, host-key learning and console tails work the same for a
//! remote host as for a local one. The domain XML names no file: its serial
//! port is a `pty` on whichever host runs it.
//!
//! Implementation note: a console stream is read with blocking `recv` calls,
//! so each console gets its own small thread, which ends when the stream does
//! (the guest stopped, the connection closed). The domain is started paused and
//! resumed only once the stream is open, so no byte of the boot is missed.

use std::io::Write;
use std::path::{Path, PathBuf};

use virt::connect::Connect;
use virt::domain::Domain;
use virt::stream::Stream;

/// Where a console goes and how much of it is kept.
#[derive(Debug, Clone)]
pub struct ConsoleSink {
    /// The file on the daemon's machine the console is copied into (truncated first).
    pub path: PathBuf,
    /// Bytes kept; past this the copy ends with one marker line and the rest is read and dropped.
    pub max_bytes: u64,
}

/// The default cap on a console copy: a boot log is kilobytes; a guest
/// printing without end must not fill the daemon's disk.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 20;

impl ConsoleSink {
    pub fn new(path: impl Into<PathBuf>) -> ConsoleSink {
        ConsoleSink { path: path.into(), max_bytes: DEFAULT_MAX_BYTES }
    }
}

/// Starts `dom` paused, attaches its console to a copier thread writing into
/// `sink`, then resumes it. On any failure the domain is left stopped.
pub(super) fn start_with_console(conn: &Connect, dom: &Domain, sink: &ConsoleSink) -> Result<(), virt::error::Error> {
    dom.create_with_flags(virt::sys::VIR_DOMAIN_START_PAUSED)?;
    let attach = || -> Result<(), virt::error::Error> {
        let stream = Stream::new(conn, 0)?;
        // FORCE: a console left open by an earlier connection (a daemon that
        // died) is taken over rather than refused.
        dom.open_console(None, &stream, virt::sys::VIR_DOMAIN_CONSOLE_FORCE)?;
        spawn_copier(dom.name().unwrap_or_default(), stream, sink.clone());
        dom.resume()
    };
    attach().inspect_err(|_| {
        let _ = dom.destroy();
    })
}

fn spawn_copier(name: String, stream: Stream, sink: ConsoleSink) {
    let spawned = std::thread::Builder::new().name(format!("console-{name}")).spawn(move || copy(stream, &sink));
    if let Err(e) = spawned {
        tracing::warn!(vm = %name, error = %e, "could not start a console reader");
    }
}

fn copy(stream: Stream, sink: &ConsoleSink) {
    let Some(mut file) = open(&sink.path) else {
        return;
    };
    let mut kept: u64 = 0;
    let mut cut = false;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match stream.recv(&mut buf) {
            Ok(n) if n > 0 => {
                let chunk = &buf[..n as usize];
                if cut {
                    continue;
                }
                let room = sink.max_bytes.saturating_sub(kept) as usize;
                let take = chunk.len().min(room);
                if file.write_all(&chunk[..take]).is_err() {
                    break;
                }
                kept += take as u64;
                if take < chunk.len() {
                    cut = true;
                    let _ = write!(file, "\n[paddock: console cut at {} bytes; later output dropped]\n", sink.max_bytes);
                }
            }
            // 0: the guest is gone (end of stream); an error: the connection is.
            _ => break,
        }
    }
    // Ending a stream whose peer is gone may fail; nothing is left to do then.
    let _ = stream.abort();
}

fn open(path: &Path) -> Option<std::fs::File> {
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    use std::os::unix::fs::OpenOptionsExt;
    // A console can hold what a build printed: readable by the daemon's user only.
    match std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not open a console copy");
            None
        }
    }
}
