//! The template of a kernel + initrd image (the warm-capable bundled guest,
//! `images/out/x86_64-warm`, `guest_agent = true`): booted once with an identity of its own on
//! its kernel command line, logged into, checked, and saved. It has no disk, so the template
//! is only its saved memory (`memory.save` + `saved.xml`) and a clone needs no overlay:
//! libvirt restores a domain without disks from the save file alone, and the kernel and
//! initrd the saved XML names are the image's own files (the template key covers their
//! contents).
//!
//! Before saving, the guest must show what each clone's identity push relies on: the guest
//! agent answers (`guest-ping`), and the kernel has bound its VMGENID driver to the VM
//! generation ID device (so a restored clone's new `<genid>` makes it reseed its RNG). An
//! image that says `guest_agent = true` but lacks either gets no template: the run boots cold
//! and its record says why.

use tokio::time::Instant;

use super::super::Attempt;
use crate::config::Boot;
use crate::libvirt::domain_xml::Handover;
use crate::libvirt::warm::WarmOp;
use crate::libvirt::{self, ConsoleXml, DomainSpec, Mark};
use crate::ssh::{Session, Target};
use crate::vm::login::{self, Polled};
use crate::vm::seed::Identity;
use crate::vm::template::Template;

/// Prints `vmgenid` when the kernel's VMGENID driver is bound to a device (a link named
/// like `QEMUVGID:00` in its sysfs folder).
const VMGENID_PROBE: &str = "for d in /sys/bus/acpi/drivers/vmgenid/*:*; do [ -e \"$d\" ] && echo vmgenid && break; done; true";

impl Attempt {
    pub(super) async fn boot_and_save_kernel(&self, tpl: &Template, domain_type: &'static str) -> Result<(), String> {
        let Boot::Kernel { .. } = &self.image.boot else { return Err("not a kernel image".into()) };
        let identity = Identity::generate(&tpl.domain).map_err(|e| crate::error::chain(&e))?;
        let pem = identity.private_pem().map_err(|e| crate::error::chain(&e))?;
        let public = identity.public_line();
        let mark =
            Mark { run_id: format!("template:{}", self.image.name), instance: self.mark.instance.clone(), created_at: chrono::Utc::now() };
        let console = tpl.console();
        let xml = libvirt::domain_xml::render_with(
            &DomainSpec {
                name: &tpl.domain,
                image: &self.image,
                host: &self.host,
                domain_type,
                mark: &mark,
                ssh_port: tpl.port,
                disk: None,
                console: ConsoleXml::File(&console),
                authorized_keys: &self.authorized_keys,
                ca_key: self.ca_key.as_deref(),
            },
            &Handover::Cmdline { host_key_pem: &pem, host_pub: &public, principal: &identity.principal },
        );
        self.handle.define(&tpl.domain, xml).await.map_err(|e| crate::error::chain(&e))?;
        self.handle.start(&tpl.domain).await.map_err(|e| crate::error::chain(&e))?;
        let deadline = Instant::now() + self.boot_timeout;
        let login = self.login.as_ref().ok_or("no login")?;
        let target = Target { addr: std::net::SocketAddr::new(self.host.address, tpl.port), user: login.user.clone() };
        let (handle, name) = (self.handle.clone(), tpl.domain.clone());
        let running = move || {
            let (handle, name) = (handle.clone(), name.clone());
            async move { handle.is_active(&name).await.map(|a| a == Some(true)).unwrap_or(true) }
        };
        let poll = std::time::Duration::from_millis(200);
        let session: Session = match login::poll_login(&target, login, identity.public_key(), deadline, poll, running).await {
            Polled::Session(s, _) => s,
            Polled::Answered(e) => return Err(format!("login refused: {}", crate::error::chain(&e))),
            Polled::Timeout => return Err(format!("no login within {:?}", self.boot_timeout)),
            Polled::Stopped => return Err("the template stopped while booting".into()),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let probe = match tokio::time::timeout(left, session.exec_collect(VMGENID_PROBE, Vec::new())).await {
            Ok(Ok((stdout, _, _))) => stdout,
            Ok(Err(e)) => return Err(format!("looking for the VMGENID driver: {}", crate::error::chain(&e))),
            Err(_) => return Err("the VMGENID probe did not finish before the boot timeout".into()),
        };
        session.disconnect().await;
        if !String::from_utf8_lossy(&probe).contains("vmgenid") {
            return Err(format!(
                "image {} says `guest_agent = true`, but its kernel has no VMGENID driver bound to the VM generation ID: its clones would not reseed their RNG",
                self.image.name
            ));
        }
        self.agent_answers(&tpl.domain, deadline).await?;
        self.save_template(tpl).await
    }

    /// Until the guest agent of `domain` answers a `guest-ping`, or `deadline`.
    async fn agent_answers(&self, domain: &str, deadline: Instant) -> Result<(), String> {
        loop {
            let op = WarmOp::Agent { name: domain.to_string(), command: r#"{"execute":"guest-ping"}"#.into(), timeout_s: 5 };
            match self.handle.warm(op).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("the guest agent does not answer: {}", crate::error::chain(&e)));
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
    }
}
