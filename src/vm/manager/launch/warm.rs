//! A warm launch attempt (issue 18): the image's template on this host (built first when it
//! is missing or stale), then a clone restored from it and given its own identity through the
//! guest agent before any SSH handshake, then the login that proves it ready.
//!
//! Why the guest agent and not SSH: a clone comes up with its template's RNG state and host
//! key, so an SSH handshake before the reseed would use the same ephemeral secrets in every
//! clone, and a login checked against the template's key proves only "some clone of the
//! template". The agent's channel is a virtio-serial socket libvirt opened for this very
//! domain; nothing else can speak on it. So the clock, the RNG (a fresh VM generation ID in
//! its XML, plus host entropy and a forced reseed), the host key, principal, hostname and
//! machine-id all change before sshd is restarted, and the first login already checks the
//! clone's own pinned key.

use std::path::Path;

use base64::Engine as _;
use tokio::time::Instant;

use build::{Blueprint, BuildConsole, SaveTo, Settle};

use super::{Attempt, Booted};
use crate::config::Boot;
use crate::libvirt::domain_xml::Handover;
use crate::libvirt::warm::WarmOp;
use crate::libvirt::{self, ConsoleSink, DiskSpec, Mark, PADDOCK_NS};
use crate::vm::login::{HandedSession, Pace, Polled, Probe};
use crate::vm::seed::{self, Identity, SeedSpec};
use crate::vm::template::{self, CloneSpec, KeyInputs, Template, TemplateError};
use crate::vm::{VmState, overlay};

mod build;
mod kernel;
mod pool;

/// How a run's VM came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    Cold,
    /// Restored from the image's template.
    Warm,
    /// A warm start was wanted but failed; the VM was booted cold. Why.
    ColdAfterWarm(String),
    /// Taken from the image's ready pool: restored (and logged into) before the launch came.
    ReadyPool,
}

impl Started {
    pub fn as_str(&self) -> &'static str {
        match self {
            Started::Cold => "cold",
            Started::Warm => "warm",
            Started::ColdAfterWarm(_) => "cold-after-warm-failed",
            Started::ReadyPool => "ready-pool",
        }
    }
}

/// Why a warm start failed (the run then boots cold, recording this).
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("template of image {image}")]
    Template { image: String, source: TemplateError },
    #[error("building the template of image {image}: {step}")]
    Build { image: String, step: String },
    #[error("cloning the template disk of {vm}")]
    Overlay { vm: String, source: overlay::OverlayError },
    #[error("restoring {vm} from {}", save.display())]
    Restore { vm: String, save: std::path::PathBuf, source: libvirt::LibvirtError },
    #[error("giving {vm} its own identity through the guest agent: {reason}")]
    Identity { vm: String, reason: String },
    #[error("{vm} restored but no login with its own host key within {waited:?}")]
    Login { vm: String, waited: std::time::Duration },
    #[error("the {step} task of {vm}")]
    Task { vm: String, step: &'static str, source: tokio::task::JoinError },
    #[error("{step} of {vm} on host {host}")]
    Pool { vm: String, host: String, step: &'static str, source: template::pool::PoolTemplateError },
}

/// How long the guest agent of a fresh clone gets to answer its first command.
const AGENT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The first pause of the agent's retry and status polls; each next one is 1.5 times longer,
/// up to a cap (issue 18: the fixed 200 / 100 ms pauses were a tenth of a warm start).
const POLL_FIRST: std::time::Duration = std::time::Duration::from_millis(10);

impl Attempt {
    /// Whether this attempt may restore a clone: a warm image with a per-VM identity and a
    /// login; a disk image with its overlay (a file, or on a host with an `image_pool` a
    /// volume there: `warm/pool.rs`), or a kernel image whose guest has the agent
    /// (`guest_agent`) on a local host (a diskless template is local only: `warm/kernel.rs`).
    pub(super) fn may_start_warm(&self, domain_type: &str) -> bool {
        let fits = match self.image.boot {
            Boot::Disk { .. } => self.overlay.is_some() || self.pool_overlay.is_some(),
            Boot::Kernel { .. } => self.image.guest_agent && self.pool.is_none(),
        };
        self.image.start == crate::config::Start::Warm
            && fits
            && self.identity.is_some()
            && self.login.is_some()
            && domain_type != "test"
            && matches!(self.readiness, crate::vm::Readiness::SshBanner { .. })
    }

    /// Restores a clone of the image's template (building the template first if needed).
    pub(super) async fn warm_boot(&self, domain_type: &'static str) -> Result<Booted, WarmError> {
        if self.pool.is_some() {
            return self.warm_boot_pool(domain_type).await;
        }
        let mut phases = Phases::new();
        let tpl_err = |source| WarmError::Template { image: self.image.name.clone(), source };
        let key = self.template_key().await?;
        let dir = template::dir_for(&self.state_dir, &self.host.name, &self.image.name, &key);
        let lock = self.templates.lock(&dir);
        let guard = lock.lock().await;
        let tpl = match Template::load(&dir) {
            Some(t) => t,
            None => {
                let t = self.build_template(&dir, &key, domain_type).await?;
                let (state, host, name, keep) = (self.state_dir.clone(), self.host.name.clone(), self.image.name.clone(), dir.clone());
                let removed =
                    tokio::task::spawn_blocking(move || template::remove_superseded(&state, &host, &name, &keep, &overlay::dir(&state)))
                        .await
                        .unwrap_or_default();
                for r in removed {
                    tracing::info!(template = %r.display(), "superseded template removed");
                }
                t
            }
        };
        phases.mark("template");
        // A disk image's clone gets its own overlay on the frozen disk; a kernel image's
        // template is only its saved memory, so its clone needs none.
        let ov = self.overlay.clone();
        if let Some(ov) = &ov {
            let (disk, ov2) = (tpl.disk(), ov.clone());
            tokio::task::spawn_blocking(move || overlay::create(&disk, &ov2))
                .await
                .map_err(|source| WarmError::Task { vm: self.name.clone(), step: "clone overlay", source })?
                .map_err(|source| WarmError::Overlay { vm: self.name.clone(), source })?;
            phases.mark("overlay");
        }
        let saved =
            std::fs::read_to_string(tpl.saved_xml()).map_err(|source| tpl_err(TemplateError::Read { path: tpl.saved_xml(), source }))?;
        let xml = self.clone_xml(&saved, &tpl, ov.as_deref()).map_err(tpl_err)?;
        let started = Instant::now();
        // One restore at a time per template: the save file's header holds this clone's XML
        // until libvirt has read it.
        template::rewrite_save_xml(&tpl.save_file(), &xml).map_err(tpl_err)?;
        phases.mark("header");
        self.restore(&tpl.save_file().display().to_string()).await?;
        drop(guard);
        phases.mark("restore");
        self.after_restore(started, key, phases).await
    }

    /// The key of the image's template as this launch would build it (blocking hashes, off
    /// the runtime).
    async fn template_key(&self) -> Result<String, WarmError> {
        let templates = self.templates.clone();
        let (img, keys, ca) = (self.image.clone(), self.authorized_keys.clone(), self.ca_key.clone());
        tokio::task::spawn_blocking(move || templates.key(&KeyInputs { image: &img, authorized_keys: &keys, ca_key: ca.as_deref() }))
            .await
            .map_err(|source| WarmError::Task { vm: self.name.clone(), step: "template key", source })?
            .map_err(|source| WarmError::Template { image: self.image.name.clone(), source })
    }

    /// The clone's domain XML from the template's `saved` one (`template::clone_xml`): its
    /// own name, port, console, mark and `overlay` on the template's disk.
    fn clone_xml(&self, saved: &str, tpl: &Template, overlay: Option<&Path>) -> Result<String, TemplateError> {
        let spec = CloneSpec { name: &self.name, port: self.port, overlay, console: &self.console, metadata: metadata_xml(&self.mark) };
        template::clone_xml(saved, tpl, &spec)
    }

    /// Restores the clone from the save file at `path` on the host, its header already
    /// holding the clone's XML.
    async fn restore(&self, path: &str) -> Result<(), WarmError> {
        self.handle.warm(WarmOp::Restore { path: path.to_string() }).await.map(drop).map_err(|source| WarmError::Restore {
            vm: self.name.clone(),
            save: std::path::PathBuf::from(path),
            source,
        })
    }

    /// The restored clone's console copy (a pool host's pty), its identity, and the login
    /// with its own host key within the boot timeout from `started`; `phases` so far are
    /// logged with the rest once it is ready.
    async fn after_restore(&self, started: Instant, key: String, mut phases: Phases) -> Result<Booted, WarmError> {
        self.progress(VmState::Defined);
        self.progress(VmState::Booting);
        // On a pool host its console is a pty: copied over the connection from here on. A
        // local clone's console is the file its XML names.
        if self.pool.is_some() && !self.host.uri.starts_with("test:") {
            if let Err(e) = self.handle.attach_console(&self.name, ConsoleSink::new(&self.console)).await {
                tracing::warn!(vm = %self.name, error = %crate::error::chain(&e), "no console copy for the clone");
            }
            phases.mark("console");
        }
        let identity = self.identity.as_ref().expect("may_start_warm checked the identity");
        self.give_identity(identity, &mut phases).await?;
        let session = self.login_with(identity.public_key(), started + self.boot_timeout, &mut phases).await;
        match session {
            Some(s) => {
                phases.log(&self.name);
                Ok(Booted {
                    boot_time: started.elapsed(),
                    host_key: None,
                    session: Some(s),
                    started: Started::Warm,
                    template_key: Some(key),
                })
            }
            None => Err(WarmError::Login { vm: self.name.clone(), waited: started.elapsed() }),
        }
    }

    /// Logs in to this attempt's port with `key` until `deadline`, at once: the identity
    /// script has just seen port 22 listen inside the guest.
    async fn login_with(&self, key: &ssh_key::PublicKey, deadline: Instant, phases: &mut Phases) -> Option<HandedSession> {
        let login = self.login.as_ref()?;
        let pace = Pace { every: std::time::Duration::from_millis(100), probe: Probe::Skip };
        match self.poll_login(login, &self.name, self.port, key, deadline, pace).await {
            Polled::Session(s, began) => {
                phases.mark("login");
                Some(HandedSession::new(s, began))
            }
            Polled::Answered(e) => {
                tracing::warn!(vm = %self.name, error = %crate::error::chain(&e), "clone refused its login");
                None
            }
            Polled::Timeout | Polled::Stopped => None,
        }
    }

    /// The clock, the RNG, then host key, principal, hostname and machine-id, through the
    /// guest agent; sshd is restarted last, so its first connection has all of them.
    async fn give_identity(&self, identity: &Identity, phases: &mut Phases) -> Result<(), WarmError> {
        let fail = |reason: String| WarmError::Identity { vm: self.name.clone(), reason };
        let wait = Instant::now() + AGENT_WAIT;
        // The agent answers once the restored guest runs again; the first call may come early.
        // Retried soon at first (it usually answers within tens of milliseconds), then less often.
        let mut nap = POLL_FIRST;
        loop {
            let now = chrono::Utc::now();
            let op = WarmOp::SetTime { name: self.name.clone(), seconds: now.timestamp(), nanos: now.timestamp_subsec_nanos() as i32 };
            match self.handle.warm(op).await {
                Ok(_) => {
                    phases.mark("agent+clock");
                    break;
                }
                Err(e) if Instant::now() < wait => {
                    tracing::debug!(vm = %self.name, error = %crate::error::chain(&e), "guest agent not answering yet");
                    tokio::time::sleep(nap).await;
                    nap = (nap * 3 / 2).min(std::time::Duration::from_millis(200));
                }
                Err(e) => return Err(fail(format!("setting the clock: {}", crate::error::chain(&e)))),
            }
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let pem = identity.private_pem().map_err(|e| fail(crate::error::chain(&e)))?;
        let entropy: [u8; 64] = rand::random();
        let user = self.login.as_ref().map(|l| l.user.clone()).unwrap_or_else(|| "root".into());
        let stdin = format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n",
            b64.encode(pem.as_bytes()),
            identity.public_line(),
            identity.principal,
            self.name,
            b64.encode(entropy),
            user
        );
        let command = serde_json::json!({
            "execute": "guest-exec",
            "arguments": { "path": "/bin/sh", "arg": ["-c", IDENTITY_SCRIPT], "input-data": b64.encode(stdin), "capture-output": true }
        });
        let reply = self.agent(&command).await.map_err(&fail)?;
        let pid = reply["return"]["pid"].as_i64().ok_or_else(|| fail(format!("guest-exec gave no pid: {reply}")))?;
        phases.mark("exec");
        let status = serde_json::json!({ "execute": "guest-exec-status", "arguments": { "pid": pid } });
        // Each status call is an agent round trip that the guest's one vCPU serves beside the
        // script: often at first, when the script may already be done, then every 100 ms.
        let mut nap = POLL_FIRST;
        loop {
            let r = self.agent(&status).await.map_err(&fail)?;
            if r["return"]["exited"].as_bool() == Some(true) {
                let code = r["return"]["exitcode"].as_i64().unwrap_or(-1);
                if code != 0 {
                    let err: Vec<u8> = r["return"]["err-data"].as_str().and_then(|e| b64.decode(e).ok()).unwrap_or_default();
                    // The script's errors name files and commands, never the key (it is on stdin).
                    let err = String::from_utf8_lossy(&err).chars().take(400).collect::<String>();
                    return Err(fail(format!("the identity script exited with {code}: {err}")));
                }
                phases.mark("script");
                let out: Vec<u8> = r["return"]["out-data"].as_str().and_then(|o| b64.decode(o).ok()).unwrap_or_default();
                phases.script = script_marks(&String::from_utf8_lossy(&out));
                return Ok(());
            }
            if Instant::now() > wait {
                return Err(fail("the identity script did not finish".into()));
            }
            tokio::time::sleep(nap).await;
            nap = (nap * 3 / 2).min(std::time::Duration::from_millis(100));
        }
    }

    async fn agent(&self, command: &serde_json::Value) -> Result<serde_json::Value, String> {
        let op = WarmOp::Agent { name: self.name.clone(), command: command.to_string(), timeout_s: 10 };
        let text = self.handle.warm(op).await.map_err(|e| crate::error::chain(&e))?;
        serde_json::from_str(&text).map_err(|e| format!("guest agent reply is not JSON: {e}"))
    }

    /// Builds the image's template in `dir` (a folder of the state dir) through the one build
    /// path (`build.rs`): a disk image's frozen disk and seed are files there, a kernel image
    /// has neither (`kernel.rs`); its memory is saved into `dir/memory.save`, the XML libvirt
    /// saved beside it, and the manifest last. On failure nothing of it stays.
    async fn build_template(&self, dir: &Path, key: &str, domain_type: &'static str) -> Result<Template, WarmError> {
        let image = self.image.name.clone();
        let step = |s: String| WarmError::Build { image: image.clone(), step: s };
        let domain = format!("paddock-{}-t{}", &self.mark.instance[..self.mark.instance.len().min(8)], &key[..8]);
        let tpl = Template { dir: dir.to_path_buf(), key: key.to_string(), domain: domain.clone(), port: self.port };
        tracing::info!(image = %image, host = %self.host.name, template = %dir.display(), "building the warm-start template");
        let _ = std::fs::remove_dir_all(dir);
        for d in [template::dir(&self.state_dir), dir.to_path_buf()] {
            std::fs::create_dir_all(&d).map_err(|e| step(format!("creating {}: {e}", d.display())))?;
            // QEMU runs as another user and must pass through to the files libvirt gives it.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711));
        }
        let built = self
            .building(&domain, async {
                let disk = matches!(self.image.boot, Boot::Disk { .. });
                let saved = match disk {
                    true => self.boot_and_save_disk(&tpl, domain_type).await?,
                    false => self.boot_and_save_kernel(&tpl, domain_type).await?,
                };
                std::fs::write(tpl.saved_xml(), saved).map_err(|e| step(format!("writing {}: {e}", tpl.saved_xml().display())))?;
                if disk {
                    // The frozen layer: from now on only ever a read-only backing file.
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(tpl.disk(), std::fs::Permissions::from_mode(0o444));
                }
                Ok(())
            })
            .await;
        match built {
            Ok(()) => {
                tpl.commit().map_err(|e| step(crate::error::chain(&e)))?;
                tracing::info!(image = %image, host = %self.host.name, "warm-start template ready");
                Ok(tpl)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(dir);
                Err(e)
            }
        }
    }

    /// A disk image's template in `tpl`'s folder: its own seed, its overlay on the image's
    /// base disk (the frozen layer once saved), saved once cloud-init is done. The XML
    /// libvirt saved.
    async fn boot_and_save_disk(&self, tpl: &Template, domain_type: &'static str) -> Result<String, WarmError> {
        let step = |s: String| WarmError::Build { image: self.image.name.clone(), step: s };
        let Boot::Disk { base } = &self.image.boot else { return Err(step("not a disk image".into())) };
        let identity = Identity::generate(&tpl.domain).map_err(|e| step(crate::error::chain(&e)))?;
        let spec = SeedSpec {
            name: &tpl.domain,
            os: self.image.os,
            user: &self.image.user,
            authorized_keys: &self.authorized_keys,
            ca_key: self.ca_key.as_deref(),
            identity: &identity,
        };
        seed::write(&spec, &tpl.seed()).await.map_err(|e| step(crate::error::chain(&e)))?;
        let (base, disk) = (base.clone(), tpl.disk());
        tokio::task::spawn_blocking(move || overlay::create(&base, &disk))
            .await
            .map_err(|e| step(e.to_string()))?
            .map_err(|e| step(crate::error::chain(&e)))?;
        let (seed, console, save) = (tpl.seed(), tpl.console(), tpl.save_file());
        let blueprint = Blueprint {
            domain: &tpl.domain,
            port: tpl.port,
            image: &self.image,
            identity: &identity,
            disk: Some(DiskSpec { path: tpl.disk(), format: "qcow2".into() }),
            handover: Handover::Seed(&seed),
            console: BuildConsole::File(&console),
            settle: Settle::CloudInit,
            poll: std::time::Duration::from_millis(500),
            save: SaveTo::File(&save),
        };
        self.boot_and_save(blueprint, domain_type).await
    }
}

/// Where a clone's warm start spends its time (issue 18), logged once it is ready: each
/// phase's wall time on the daemon's side, and the identity script's own steps as the
/// guest's uptime saw them (`@step UPTIME` lines on its stdout).
struct Phases {
    began: Instant,
    last: Instant,
    marks: Vec<(&'static str, std::time::Duration)>,
    script: String,
}

impl Phases {
    fn new() -> Phases {
        Phases::since(Instant::now())
    }

    fn since(began: Instant) -> Phases {
        Phases { began, last: began, marks: Vec::new(), script: String::new() }
    }

    /// Ends the phase `name` now.
    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.marks.push((name, now - self.last));
        self.last = now;
    }

    fn log(&self, vm: &str) {
        let phases = self.marks.iter().map(|(n, d)| format!("{n}={}", d.as_millis())).collect::<Vec<_>>().join(" ");
        tracing::info!(vm = %vm, total_ms = self.began.elapsed().as_millis() as u64, %phases, script = %self.script, "warm clone ready");
    }
}

/// The identity script's `@step UPTIME` lines as `step=MS` between consecutive marks (the
/// guest's `/proc/uptime` has 10 ms steps). Anything else the script printed is ignored;
/// at most 16 marks are read, so a guest cannot make the log line long.
fn script_marks(out: &str) -> String {
    let mut prev: Option<f64> = None;
    let mut parts = Vec::new();
    for line in out.lines().filter_map(|l| l.strip_prefix('@')).take(16) {
        let Some((name, up)) = line.split_once(' ') else { continue };
        let (Ok(up), true) = (up.trim().parse::<f64>(), name.len() <= 16 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        else {
            continue;
        };
        if let Some(p) = prev {
            parts.push(format!("{name}={:.0}", (up - p) * 1000.0));
        }
        prev = Some(up);
    }
    parts.join(" ")
}

/// The clone's `<metadata>`: its own mark, as `domain_xml` writes it for a cold boot.
fn metadata_xml(mark: &Mark) -> String {
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;");
    format!(
        "<metadata><paddock:vm xmlns:paddock='{PADDOCK_NS}'><paddock:run>{}</paddock:run><paddock:instance>{}</paddock:instance><paddock:created>{}</paddock:created></paddock:vm></metadata>",
        esc(&mark.run_id),
        esc(&mark.instance),
        mark.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
}

/// Run by the guest agent in a fresh clone, its inputs on stdin (never in a command line):
/// host key (base64 PEM), public key line, principal, hostname, host entropy (base64), login
/// user. The entropy is mixed into the pool, then a reseed is forced from it:
/// `RNDRESEEDCRNG` (`_IO('R', 7)`) where python3 can issue it; otherwise (the bundled
/// guest: busybox only) the reseed the changed VM generation ID made the kernel's VMGENID
/// driver do, which the kernel logs and the script waits for. **No clone gets its host key,
/// nor sshd restarted, before one of the two reseeds is proven**: neither (a kernel without
/// VMGENID) fails the script, and the warm start with it. Written for both kinds of guest:
/// systemd's (`systemd-id128`, `systemctl restart ssh`) and the bundled guest's busybox init.
/// The warm bundled guest runs one `sshd -i` per connection (`/run/paddock-ssh-per-connection`,
/// `images/guest/init`), so no sshd outlives its connection and the next one reads the new key
/// files: the script only checks that port 22 listens. A busybox guest with a daemon sshd has
/// it stopped, port 22 seen free, started again and seen listening. Either way the first login
/// after the script can only meet the clone's own key. `@step UPTIME` lines on stdout time the
/// steps (`script_marks`).
const IDENTITY_SCRIPT: &str = r#"set -eu
umask 077
read -r key; read -r pub; read -r principal; read -r name; read -r seed; read -r user
nap() { usleep 50000 2>/dev/null || sleep 0.05; }
mark() { read -r up _ </proc/uptime; echo "@$1 $up"; }
mark start
# Here-documents and builtins where they do: each fork and exec is slow on an emulated CPU.
base64 -d > /dev/urandom <<EOF
$seed
EOF
if ! { command -v python3 >/dev/null 2>&1 && python3 -c 'import fcntl,os; fcntl.ioctl(os.open("/dev/urandom", os.O_WRONLY), 0x5207)' 2>/dev/null; }; then
    n=0
    until dmesg | grep -q 'crng reseeded due to virtual machine fork'; do
        n=$((n + 1))
        if [ "$n" -gt 100 ]; then
            echo "no RNG reseed: RNDRESEEDCRNG could not be issued and the kernel logged no reseed for the new VM generation ID (no VMGENID driver?)" >&2
            exit 3
        fi
        nap
    done
fi
mark reseed
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
base64 -d > /etc/ssh/ssh_host_ed25519_key.new <<EOF
$key
EOF
mv /etc/ssh/ssh_host_ed25519_key.new /etc/ssh/ssh_host_ed25519_key
printf '%s\n' "$pub" > /etc/ssh/ssh_host_ed25519_key.pub
chmod 0644 /etc/ssh/ssh_host_ed25519_key.pub
mkdir -p /etc/ssh/auth_principals
printf '%s\n' "$principal" > /etc/ssh/auth_principals/"$user"
chmod 0644 /etc/ssh/auth_principals/"$user"
hostname "$name"
printf '%s\n' "$name" > /etc/hostname
if command -v systemd-id128 >/dev/null 2>&1; then
    systemd-id128 new > /etc/machine-id
else
    # 128 bits from the reseeded kernel RNG, as systemd-id128 makes them (a v4 UUID's hex).
    read -r uuid </proc/sys/kernel/random/uuid
    IFS=- read -r a b c d e <<EOF
$uuid
EOF
    printf '%s%s%s%s%s\n' "$a" "$b" "$c" "$d" "$e" > /etc/machine-id
fi
chmod 0444 /etc/machine-id
mark identity
listening() { grep -qE '^ *[0-9]+: [0-9A-F]+:0016 [0-9A-F]+:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null; }
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl restart ssh
elif [ -e /run/paddock-ssh-per-connection ]; then
    # One `sshd -i` per connection (the warm bundled guest's /init): no sshd runs between
    # connections, and the next one reads the key files written above.
    if ! listening; then echo "nothing listens on port 22 for sshd" >&2; exit 4; fi
else
    kill "$(cat /run/sshd.pid)" 2>/dev/null || true
    n=0
    while listening; do
        n=$((n + 1))
        if [ "$n" -gt 100 ]; then echo "the template's sshd still listens after SIGTERM" >&2; exit 4; fi
        nap
    done
    mark stopped
    /usr/sbin/sshd -E /var/log/sshd.log </dev/null >/dev/null 2>&1
    mark spawned
    n=0
    until listening; do
        n=$((n + 1))
        if [ "$n" -gt 200 ]; then echo "sshd does not listen after its restart: $(tail -n 3 /var/log/sshd.log)" >&2; exit 4; fi
        nap
    done
fi
mark listening
"#;

#[cfg(test)]
mod tests {
    use super::script_marks;

    #[test]
    fn script_marks_are_the_steps_between_uptimes_and_ignore_other_output() {
        let out = "@start 100.50\nnoise\n@reseed 100.63\n@bad name 1\n@identity 101.73\n@x notanumber\n";
        assert_eq!(script_marks(out), "reseed=130 identity=1100");
        assert_eq!(script_marks(""), "");
        // A guest printing many marks cannot make the log line long.
        let many: String = (0..100).map(|i| format!("@m{i} {i}.0\n")).collect();
        assert_eq!(script_marks(&many).split(' ').count(), 15);
    }
}
