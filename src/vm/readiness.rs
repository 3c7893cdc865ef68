//! Boot readiness: polling a guest's forwarded SSH port for a banner, and
//! reading what the guest printed on its serial console.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// How a launch decides that a VM is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Poll the forwarded port until it sends an `SSH-` banner.
    SshBanner { poll: Duration },
    /// Ready as soon as the domain runs. For libvirt's `test:///` driver, whose
    /// domains run no guest; chosen explicitly in the manager's config.
    DomainRunning,
}

/// One probe: connect, and read the first bytes the server sends.
pub async fn probe_banner(addr: SocketAddr, timeout: Duration) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        // passt opens its side of a forwarded connection to the guest only once the
        // client sends something, so a silent probe never sees the server's banner.
        // Sending ours first is what any SSH client does anyway.
        s.write_all(b"SSH-2.0-paddock-probe\r\n").await.ok()?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        // The banner may come in pieces; four bytes are enough to know.
        while n < 4 {
            let got = s.read(&mut buf[n..]).await.ok()?;
            if got == 0 {
                return None;
            }
            n += got;
        }
        Some(buf[..n].starts_with(b"SSH-"))
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// Polls `addr` until it answers with an SSH banner or `deadline` passes.
/// `still_running` is asked between probes so that a crashed guest fails fast.
pub async fn wait_for_banner<F, Fut>(
    addr: SocketAddr,
    deadline: Instant,
    poll: Duration,
    mut still_running: F,
) -> Result<Duration, WaitError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WaitError::Timeout);
        }
        if probe_banner(addr, left.min(Duration::from_secs(3))).await {
            return Ok(start.elapsed());
        }
        if !still_running().await {
            return Err(WaitError::Stopped);
        }
        tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    Timeout,
    /// The domain stopped running while we waited.
    Stopped,
}

/// At most this many bytes of a console file are read for its tail: the guest writes the
/// file, so one endless line must not make a reason, a run log or a result document large.
pub const CONSOLE_TAIL_BYTES: u64 = 16 * 1024;

/// The last `max_lines` lines of the console log, from at most its last
/// [`CONSOLE_TAIL_BYTES`] bytes (empty when there is none). A line cut by that window
/// starts the tail with what is left of it.
pub fn console_tail(path: &Path, max_lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(CONSOLE_TAIL_BYTES);
    let mut bytes = Vec::with_capacity((len - from) as usize);
    if file.seek(SeekFrom::Start(from)).is_err() || file.take(CONSOLE_TAIL_BYTES).read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

/// The host key a guest printed between `PADDOCK-HOSTKEY-BEGIN` and
/// `PADDOCK-HOSTKEY-END` on its console, parsed as an OpenSSH public key.
pub fn host_key_from_console(console: &str) -> Option<ssh_key::PublicKey> {
    let begin = console.find("PADDOCK-HOSTKEY-BEGIN")?;
    let rest = &console[begin + "PADDOCK-HOSTKEY-BEGIN".len()..];
    let end = rest.find("PADDOCK-HOSTKEY-END")?;
    rest[..end].lines().map(|l| l.trim().trim_end_matches('\r')).find_map(|l| ssh_key::PublicKey::from_openssh(l).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn banner_is_seen_and_silence_is_not() {
        let ssh = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = ssh.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = ssh.accept().await.unwrap();
                // Split the banner to check that partial reads are handled.
                s.write_all(b"SS").await.unwrap();
                s.flush().await.unwrap();
                s.write_all(b"H-2.0-OpenSSH_9.2\r\n").await.unwrap();
            }
        });
        let waited = wait_for_banner(addr, Instant::now() + Duration::from_secs(5), Duration::from_millis(50), || async { true }).await;
        assert!(waited.is_ok());

        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let haddr = http.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = http.accept().await.unwrap();
                s.write_all(b"HTTP/1.1 400 Bad\r\n\r\n").await.unwrap();
            }
        });
        assert!(!probe_banner(haddr, Duration::from_secs(2)).await);
        let r = wait_for_banner(haddr, Instant::now() + Duration::from_millis(300), Duration::from_millis(50), || async { true }).await;
        assert_eq!(r, Err(WaitError::Timeout));
        let r = wait_for_banner(haddr, Instant::now() + Duration::from_secs(5), Duration::from_millis(50), || async { false }).await;
        assert_eq!(r, Err(WaitError::Stopped));
    }

    #[test]
    fn host_key_between_markers() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA/XDHqQ4zGgrAo2cLdmgWGXXbEazbp/V20Cd7HR/aap root@guest";
        let console = format!("[    1.0] booting\r\nPADDOCK-HOSTKEY-BEGIN\r\n{key}\r\nPADDOCK-HOSTKEY-END\r\nlogin:");
        let got = host_key_from_console(&console).unwrap();
        assert_eq!(got.key_data(), ssh_key::PublicKey::from_openssh(key).unwrap().key_data());
        assert!(host_key_from_console("PADDOCK-HOSTKEY-BEGIN\nnot a key\nPADDOCK-HOSTKEY-END").is_none());
        assert!(host_key_from_console(key).is_none());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        std::fs::write(&p, "a\nb\nc\nd\n").unwrap();
        assert_eq!(console_tail(&p, 2), "c\nd");
        assert_eq!(console_tail(&dir.path().join("none"), 2), "");
        // One endless line (a hostile guest) gives a tail of at most the window.
        let long = dir.path().join("long.log");
        std::fs::write(&long, format!("first\n{}", "x".repeat(1 << 20))).unwrap();
        let tail = console_tail(&long, 40);
        assert_eq!(tail.len() as u64, CONSOLE_TAIL_BYTES, "the tail is the window's bytes only");
        assert!(!tail.contains("first"));
    }
}
