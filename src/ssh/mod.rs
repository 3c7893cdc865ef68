//! The SSH adapter: connecting to guests with a pinned host key, running commands with
//! separate live stdout/stderr, and moving files over SFTP. Only this module calls `russh`.

mod key;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::client::{self, Handle, Msg};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use ssh_key::{HashAlg, PublicKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

pub use key::{Auth, ClientKey, KeyError};

/// Everything that can fail while talking SSH to a guest; one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot open a TCP connection to {addr}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("SSH handshake with {addr} failed")]
    Handshake { addr: SocketAddr, source: russh::Error },
    #[error("host key mismatch at {addr}: expected {expected}, the server presented {seen}")]
    HostKeyMismatch { addr: SocketAddr, expected: String, seen: String },
    #[error("{addr} refused {method} authentication for user {user}")]
    AuthRejected { addr: SocketAddr, user: String, method: &'static str },
    #[error("{method} authentication as {user} at {addr} failed")]
    Auth { addr: SocketAddr, user: String, method: &'static str, source: russh::Error },
    #[error("no SSH session with {addr} within {waited:?}")]
    Timeout { addr: SocketAddr, waited: Duration, last: Box<SshError> },
    #[error("cannot open a channel to {user}@{addr} for `{command}`")]
    Channel { addr: SocketAddr, user: String, command: String, source: russh::Error },
    #[error("{user}@{addr} did not run `{command}`: {reason}")]
    Exec { addr: SocketAddr, user: String, command: String, reason: String },
    #[error("SFTP {op} of {path} on {user}@{addr} failed")]
    Sftp { addr: SocketAddr, user: String, op: &'static str, path: String, source: russh_sftp::client::error::Error },
    #[error("{path} on {addr} is {size} bytes, more than the {cap}-byte cap")]
    TooLarge { addr: SocketAddr, path: String, size: u64, cap: u64 },
}

impl SshError {
    /// Whether trying again later may succeed (the guest may still be booting).
    pub fn is_transient(&self) -> bool {
        matches!(self, SshError::Connect { .. } | SshError::Handshake { .. })
    }
}

/// The SHA256 fingerprint OpenSSH prints (`SHA256:…`).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The one host key a guest must present.
#[derive(Debug, Clone)]
pub struct HostKeyCheck {
    pub expected: PublicKey,
}

impl HostKeyCheck {
    pub fn exact(expected: PublicKey) -> HostKeyCheck {
        HostKeyCheck { expected }
    }
}

/// Where to log in.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub user: String,
}

/// Connection tuning.
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// Send a keepalive after this long without traffic from the guest.
    pub keepalive_interval: Duration,
    /// Give up on the connection after this many unanswered keepalives, so a dead guest is
    /// noticed within `keepalive_interval * (keepalive_max + 1)`.
    pub keepalive_max: usize,
    /// The longest one connection attempt (TCP + handshake + auth) may take.
    pub attempt_timeout: Duration,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig { keepalive_interval: Duration::from_secs(10), keepalive_max: 3, attempt_timeout: Duration::from_secs(20) }
    }
}

impl SshConfig {
    fn russh(&self) -> client::Config {
        client::Config {
            keepalive_interval: Some(self.keepalive_interval),
            keepalive_max: self.keepalive_max,
            // Keepalives, not inactivity, decide when a guest is gone: a quiet build step
            // is normal.
            inactivity_timeout: None,
            ..client::Config::default()
        }
    }
}

/// russh's callback object; it only checks the host key.
struct Client {
    expected: PublicKey,
    /// The key the server presented, kept so a mismatch can be reported with both fingerprints.
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, presented: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let key = match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // A host certificate is not trusted by its CA here: paddock pins the key itself.
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::from(cert.public_key().clone()),
        };
        let ok = key.key_data() == self.expected.key_data();
        *self.seen.lock().expect("seen-key lock") = Some(key);
        Ok(ok)
    }
}

/// An authenticated SSH session with one guest.
pub struct Session {
    handle: Handle<Client>,
    target: Target,
}

/// Connects once: TCP, handshake with the host key check, authentication.
pub async fn connect(target: &Target, auth: &Auth, host_key: &HostKeyCheck, config: &SshConfig) -> Result<Session, SshError> {
    let attempt = connect_once(target, auth, host_key, config);
    match tokio::time::timeout(config.attempt_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(SshError::Handshake { addr: target.addr, source: russh::Error::ConnectionTimeout }),
    }
}

async fn connect_once(target: &Target, auth: &Auth, host_key: &HostKeyCheck, config: &SshConfig) -> Result<Session, SshError> {
    let addr = target.addr;
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|source| SshError::Connect { addr, source })?;
    // Build output arrives in small bursts; waiting to coalesce them only adds latency.
    let _ = stream.set_nodelay(true);
    let seen = Arc::new(Mutex::new(None));
    let handler = Client { expected: host_key.expected.clone(), seen: seen.clone() };
    let mut handle = match client::connect_stream(Arc::new(config.russh()), stream, handler).await {
        Ok(h) => h,
        Err(source) => {
            let seen = seen.lock().expect("seen-key lock").clone();
            return Err(match seen {
                Some(seen) if seen.key_data() != host_key.expected.key_data() => {
                    SshError::HostKeyMismatch { addr, expected: fingerprint(&host_key.expected), seen: fingerprint(&seen) }
                }
                _ => SshError::Handshake { addr, source },
            });
        }
    };
    let user = target.user.clone();
    let method = auth.kind();
    let result = match auth {
        Auth::Key(key) => {
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(|source| SshError::Auth { addr, user: user.clone(), method, source })?
                .flatten();
            handle.authenticate_publickey(&user, PrivateKeyWithHashAlg::new(key.clone(), hash)).await
        }
        Auth::Certificate { key, cert } => handle.authenticate_openssh_cert(&user, key.clone(), (**cert).clone()).await,
    }
    .map_err(|source| SshError::Auth { addr, user: user.clone(), method, source })?;
    if !result.success() {
        return Err(SshError::AuthRejected { addr, user, method });
    }
    Ok(Session { handle, target: target.clone() })
}

/// Connects, retrying transient failures (refused, reset, handshake cut short: the guest is
/// still booting) with a short backoff until `deadline`. A host key mismatch or a refused login
/// is returned at once: waiting cannot fix either.
pub async fn connect_with_retry(
    target: &Target,
    auth: &Auth,
    host_key: &HostKeyCheck,
    config: &SshConfig,
    deadline: Instant,
) -> Result<Session, SshError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(25);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt_config = SshConfig { attempt_timeout: config.attempt_timeout.min(remaining), ..config.clone() };
        let err = match connect(target, auth, host_key, &attempt_config).await {
            Ok(session) => return Ok(session),
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => e,
        };
        let now = Instant::now();
        if now + backoff >= deadline {
            return Err(SshError::Timeout { addr: target.addr, waited: now - started, last: Box::new(err) });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    Code(u32),
    Signal {
        name: String,
        core_dumped: bool,
    },
    /// The channel closed without the server saying how the command ended.
    Unknown,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
    pub fn code(&self) -> Option<u32> {
        match self {
            ExitStatus::Code(c) => Some(*c),
            _ => None,
        }
    }
}

/// What a running command produces, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Output(Stream, Bytes),
    /// The last event: the channel closed.
    Exited(ExitStatus),
}

/// A command running on the guest.
pub struct RemoteProcess {
    read: ChannelReadHalf,
    write: Option<ChannelWriteHalf<Msg>>,
    status: Option<ExitStatus>,
    done: bool,
}

impl RemoteProcess {
    /// The next output chunk, or the exit once the channel has closed; `None` after that.
    pub async fn next(&mut self) -> Option<ExecEvent> {
        if self.done {
            return None;
        }
        loop {
            match self.read.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    return Some(ExecEvent::Output(Stream::Stdout, data));
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    return Some(ExecEvent::Output(Stream::Stderr, data));
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => self.status = Some(ExitStatus::Code(exit_status)),
                Some(ChannelMsg::ExitSignal { signal_name, core_dumped, .. }) => {
                    self.status = Some(ExitStatus::Signal { name: signal_name_str(&signal_name), core_dumped });
                }
                Some(ChannelMsg::Close) | None => {
                    self.done = true;
                    return Some(ExecEvent::Exited(self.status.take().unwrap_or(ExitStatus::Unknown)));
                }
                Some(_) => {}
            }
        }
    }

    /// Closes the channel from our side (the remote command may keep running: use a kill
    /// command to stop it).
    pub async fn close(&mut self) {
        if let Some(w) = self.write.take() {
            let _ = w.close().await;
        }
    }

    /// Reads everything, returning (stdout, stderr, status).
    pub async fn collect(mut self) -> (Vec<u8>, Vec<u8>, ExitStatus) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(ev) = self.next().await {
            match ev {
                ExecEvent::Output(Stream::Stdout, d) => out.extend_from_slice(&d),
                ExecEvent::Output(Stream::Stderr, d) => err.extend_from_slice(&d),
                ExecEvent::Exited(status) => return (out, err, status),
            }
        }
        (out, err, ExitStatus::Unknown)
    }
}

fn signal_name_str(sig: &russh::Sig) -> String {
    match sig {
        russh::Sig::ABRT => "ABRT".into(),
        russh::Sig::ALRM => "ALRM".into(),
        russh::Sig::FPE => "FPE".into(),
        russh::Sig::HUP => "HUP".into(),
        russh::Sig::ILL => "ILL".into(),
        russh::Sig::INT => "INT".into(),
        russh::Sig::KILL => "KILL".into(),
        russh::Sig::PIPE => "PIPE".into(),
        russh::Sig::QUIT => "QUIT".into(),
        russh::Sig::SEGV => "SEGV".into(),
        russh::Sig::TERM => "TERM".into(),
        russh::Sig::USR1 => "USR1".into(),
        russh::Sig::Custom(s) => s.clone(),
    }
}

impl Session {
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Whether the connection is gone (e.g. keepalives went unanswered).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Starts `command` (run by the user's login shell, as OpenSSH does) and feeds it `stdin`,
    /// then end-of-file. Output is read from the returned process as it arrives.
    pub async fn exec(&self, command: &str, stdin: Vec<u8>) -> Result<RemoteProcess, SshError> {
        let channel = self.handle.channel_open_session().await.map_err(|source| SshError::Channel {
            addr: self.target.addr,
            user: self.target.user.clone(),
            command: command.to_owned(),
            source,
        })?;
        let exec_err =
            |reason: String| SshError::Exec { addr: self.target.addr, user: self.target.user.clone(), command: command.to_owned(), reason };
        channel.exec(true, command.as_bytes()).await.map_err(|e| exec_err(e.to_string()))?;
        let (mut read, write) = channel.split();
        // The reply to the exec request comes before any output of the command.
        loop {
            match read.wait().await {
                Some(ChannelMsg::Success) => break,
                Some(ChannelMsg::Failure) => {
                    return Err(exec_err("the server refused the exec request".into()));
                }
                Some(ChannelMsg::WindowAdjusted { .. }) => {}
                Some(other) => {
                    return Err(exec_err(format!("unexpected {other:?} before the exec reply")));
                }
                None => return Err(exec_err("the channel closed before the exec reply".into())),
            }
        }
        // Stdin is written concurrently with reading output, so a command that answers while
        // still reading cannot deadlock on a full window.
        let writer = channel_writer(write, stdin);
        Ok(RemoteProcess { read, write: Some(writer), status: None, done: false })
    }

    /// Runs `command` to the end and returns (stdout, stderr, status).
    pub async fn exec_collect(&self, command: &str, stdin: Vec<u8>) -> Result<(Vec<u8>, Vec<u8>, ExitStatus), SshError> {
        Ok(self.exec(command, stdin).await?.collect().await)
    }

    async fn sftp(&self, op: &'static str, path: &str) -> Result<russh_sftp::client::SftpSession, SshError> {
        let addr = self.target.addr;
        let user = self.target.user.clone();
        let channel = self.handle.channel_open_session().await.map_err(|source| SshError::Channel {
            addr,
            user: user.clone(),
            command: "sftp subsystem".into(),
            source,
        })?;
        channel.request_subsystem(true, "sftp").await.map_err(|source| SshError::Channel {
            addr,
            user: user.clone(),
            command: "sftp subsystem".into(),
            source,
        })?;
        russh_sftp::client::SftpSession::new(channel.into_stream()).await.map_err(|source| SshError::Sftp {
            addr,
            user,
            op,
            path: path.to_owned(),
            source,
        })
    }

    fn sftp_err(&self, op: &'static str, path: &str) -> impl FnOnce(russh_sftp::client::error::Error) -> SshError {
        let (addr, user, path) = (self.target.addr, self.target.user.clone(), path.to_owned());
        move |source| SshError::Sftp { addr, user, op, path, source }
    }

    /// Writes `bytes` to `path` on the guest over SFTP (replacing it), creating the parent
    /// directory if it is missing. Paths use `/`, also for Windows guests (`C:/paddock/x.ps1`).
    pub async fn upload(&self, path: &str, bytes: &[u8]) -> Result<(), SshError> {
        let sftp = self.sftp("upload", path).await?;
        if let Some((parent, _)) = path.rsplit_once('/')
            && !parent.is_empty()
            && !sftp.try_exists(parent).await.map_err(self.sftp_err("stat", parent))?
        {
            sftp.create_dir(parent).await.map_err(self.sftp_err("mkdir", parent))?;
        }
        let mut file = sftp.create(path).await.map_err(self.sftp_err("create", path))?;
        file.write_all(bytes).await.map_err(|e| self.sftp_err("write", path)(russh_sftp::client::error::Error::IO(e.to_string())))?;
        file.shutdown().await.map_err(|e| self.sftp_err("close", path)(russh_sftp::client::error::Error::IO(e.to_string())))?;
        let _ = sftp.close().await;
        Ok(())
    }

    /// Creates directory `path` on the guest over SFTP with every missing parent
    /// (`mkdir -p`); an existing one is fine.
    pub async fn create_dirs(&self, path: &str) -> Result<(), SshError> {
        let sftp = self.sftp("mkdir", path).await?;
        let mut at = String::new();
        for (i, part) in path.split('/').enumerate() {
            if i > 0 {
                at.push('/');
            }
            at.push_str(part);
            // `""` is the root of `/x`, `C:` the drive of `C:/x`: both exist.
            if part.is_empty() || (i == 0 && part.ends_with(':')) {
                continue;
            }
            if !sftp.try_exists(at.as_str()).await.map_err(self.sftp_err("stat", &at))? {
                sftp.create_dir(at.as_str()).await.map_err(self.sftp_err("mkdir", &at))?;
            }
        }
        let _ = sftp.close().await;
        Ok(())
    }

    /// Reads `path` from the guest over SFTP; a file over `cap` bytes is refused, not truncated.
    pub async fn download(&self, path: &str, cap: u64) -> Result<Vec<u8>, SshError> {
        let sftp = self.sftp("download", path).await?;
        let size = sftp.metadata(path).await.map_err(self.sftp_err("stat", path))?.size.unwrap_or(0);
        if size > cap {
            return Err(SshError::TooLarge { addr: self.target.addr, path: path.to_owned(), size, cap });
        }
        let file = sftp.open(path).await.map_err(self.sftp_err("open", path))?;
        let mut out = Vec::with_capacity(size as usize);
        // The file may grow between stat and read: read at most one byte past the cap to know.
        file.take(cap + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| self.sftp_err("read", path)(russh_sftp::client::error::Error::IO(e.to_string())))?;
        if out.len() as u64 > cap {
            return Err(SshError::TooLarge { addr: self.target.addr, path: path.to_owned(), size: out.len() as u64, cap });
        }
        let _ = sftp.close().await;
        Ok(out)
    }

    /// Ends the session politely.
    pub async fn disconnect(&self) {
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }
}

/// Sends `stdin` and then EOF on a task of its own, and hands the write half back for closing.
fn channel_writer(write: ChannelWriteHalf<Msg>, stdin: Vec<u8>) -> ChannelWriteHalf<Msg> {
    let mut tx = write.make_writer();
    tokio::spawn(async move {
        // A command that exits without reading its input makes these writes fail: that is
        // its business, and its exit status says so.
        if !stdin.is_empty() {
            let _ = tx.write_all(&stdin).await;
        }
        let _ = tx.shutdown().await;
    });
    write
}
