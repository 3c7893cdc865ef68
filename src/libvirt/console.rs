//! A guest's serial console, read over the libvirt connection
//! (`virDomainOpenConsole`) and copied into a file on the daemon's machine, so
//! boot diagnostics, host-key learning and console tails work the same for a
//! remote host as for a local one. The domain XML names no file: its serial
//! port is a `pty` on whichever host runs it.
//!
//! Implementation note: a console stream is non-blocking and read from
//! libvirt's default event loop (see [`watch`]); it ends when the guest stops
//! or the connection closes. The domain is started paused and resumed only once
//! the stream is open, so no byte of the boot is missed.

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

/// Starts `dom` paused, attaches its console to a copier writing into
/// `sink`, then resumes it. On any failure the domain is left stopped.
pub(super) fn start_with_console(conn: &Connect, dom: &Domain, sink: &ConsoleSink) -> Result<(), virt::error::Error> {
    dom.create_with_flags(virt::sys::VIR_DOMAIN_START_PAUSED)?;
    let attach = || -> Result<(), virt::error::Error> {
        let stream = Stream::new(conn, virt::sys::VIR_STREAM_NONBLOCK)?;
        // FORCE: a console left open by an earlier connection (a daemon that
        // died) is taken over rather than refused.
        dom.open_console(None, &stream, virt::sys::VIR_DOMAIN_CONSOLE_FORCE)?;
        if let Some(file) = open(&sink.path) {
            watch(stream, Copy { file, kept: 0, max: sink.max_bytes, cut: false })?;
        }
        dom.resume()
    };
    attach().inspect_err(|_| {
        let _ = dom.destroy();
    })
}

/// Attaches a copier to the console of `dom`, which is already running (a VM adopted after
/// a restart): the copy is appended to `sink`'s file, so what was read before the restart
/// stays, and the cap counts it.
pub(super) fn reattach_console(conn: &Connect, dom: &Domain, sink: &ConsoleSink) -> Result<(), virt::error::Error> {
    let stream = Stream::new(conn, virt::sys::VIR_STREAM_NONBLOCK)?;
    // FORCE: the dead daemon's console connection may still be open on the host.
    dom.open_console(None, &stream, virt::sys::VIR_DOMAIN_CONSOLE_FORCE)?;
    match open_append(&sink.path) {
        Some((file, kept)) => watch(stream, Copy { file, kept, max: sink.max_bytes, cut: kept >= sink.max_bytes }),
        None => stream.abort(),
    }
}

/// Where one console's bytes go.
struct Copy {
    file: std::fs::File,
    kept: u64,
    max: u64,
    cut: bool,
}

impl Copy {
    fn write(&mut self, chunk: &[u8]) {
        if self.cut {
            return;
        }
        let take = chunk.len().min(self.max.saturating_sub(self.kept) as usize);
        if self.file.write_all(&chunk[..take]).is_err() {
            self.cut = true;
            return;
        }
        self.kept += take as u64;
        if take < chunk.len() {
            self.cut = true;
            let _ = write!(self.file, "\n[paddock: console cut at {} bytes; later output dropped]\n", self.max);
        }
    }
}

/// The state a stream callback owns: the stream itself (taken out when it ends) and the copy.
struct Watch {
    stream: Option<Stream>,
    copy: Copy,
}

/// Copies `stream` into `copy` from libvirt's event loop: a blocking `recv`
/// on its own thread was seen to deliver console bytes in bursts tens of
/// seconds apart, stalling guests whose kernels wait on their serial port.
///
/// Implementation note: the callback is registered through `virt::sys`
/// directly, with a free function of our own, so that the stream can be
/// released from inside its own callback once it ends (as `virsh console`
/// does); the `virt` crate's callback wrapper would need the stream to outlive it.
fn watch(stream: Stream, copy: Copy) -> Result<(), virt::error::Error> {
    let ptr = unsafe { stream.as_ptr() };
    let opaque = Box::into_raw(Box::new(Watch { stream: Some(stream), copy })) as *mut std::os::raw::c_void;
    let events = (virt::sys::VIR_STREAM_EVENT_READABLE | virt::sys::VIR_STREAM_EVENT_ERROR | virt::sys::VIR_STREAM_EVENT_HANGUP) as i32;
    let r = unsafe { virt::sys::virStreamEventAddCallback(ptr, events, Some(on_event), opaque, Some(on_free)) };
    if r < 0 {
        // Not registered: libvirt did not take the opaque, so it is ours to free.
        unsafe { on_free(opaque) };
        return Err(virt::error::Error::last_error());
    }
    Ok(())
}

unsafe extern "C" fn on_event(st: virt::sys::virStreamPtr, events: std::os::raw::c_int, opaque: *mut std::os::raw::c_void) {
    // SAFETY: `opaque` is the `Watch` registered with this callback; libvirt
    // frees it (through `on_free`) only when the callback is removed below.
    let w = unsafe { &mut *(opaque as *mut Watch) };
    let mut ended = events & (virt::sys::VIR_STREAM_EVENT_ERROR | virt::sys::VIR_STREAM_EVENT_HANGUP) as i32 != 0;
    if events & virt::sys::VIR_STREAM_EVENT_READABLE as i32 != 0 {
        let mut buf = [0u8; 16 << 10];
        loop {
            let n = unsafe { virt::sys::virStreamRecv(st, buf.as_mut_ptr() as *mut std::os::raw::c_char, buf.len()) };
            match n {
                n if n > 0 => w.copy.write(&buf[..n as usize]),
                // Nothing more for now (non-blocking stream).
                -2 => break,
                // 0: the guest is gone; -1: the connection is.
                _ => {
                    ended = true;
                    break;
                }
            }
        }
    }
    if ended {
        let stream = w.stream.take();
        // Frees `w` (on_free); nothing of it is touched after this.
        unsafe { virt::sys::virStreamEventRemoveCallback(st) };
        if let Some(stream) = stream {
            // Ending a stream whose peer is gone may fail; nothing is left to do then.
            let _ = stream.abort();
        }
    }
}

unsafe extern "C" fn on_free(opaque: *mut std::os::raw::c_void) {
    // SAFETY: made by `Box::into_raw` in `watch`, freed once.
    drop(unsafe { Box::from_raw(opaque as *mut Watch) });
}

/// The console copy opened for appending, with the bytes it already holds.
fn open_append(path: &Path) -> Option<(std::fs::File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path) {
        Ok(f) => {
            let kept = f.metadata().map(|m| m.len()).unwrap_or(0);
            Some((f, kept))
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not open a console copy");
            None
        }
    }
}

fn open(path: &Path) -> Option<std::fs::File> {
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    use std::os::unix::fs::OpenOptionsExt;
    // A console can hold what a build printed: readable by the daemon's user only.
    // Emptied, then written appending: `vm::console_cap` may cut the copy in place.
    let opened = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|_| std::fs::OpenOptions::new().append(true).open(path));
    match opened {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not open a console copy");
            None
        }
    }
}
