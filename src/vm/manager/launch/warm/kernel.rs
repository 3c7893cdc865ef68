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
use super::WarmError;
use super::build::{Blueprint, BuildConsole, SaveTo, Settle};
use crate::config::Boot;
use crate::libvirt::domain_xml::Handover;
use crate::libvirt::warm::WarmOp;
use crate::vm::seed::Identity;
use crate::vm::template::Template;

/// Prints `vmgenid` when the kernel's VMGENID driver is bound to a device (a link named
/// like `QEMUVGID:00` in its sysfs folder).
pub(super) const VMGENID_PROBE: &str = "for d in /sys/bus/acpi/drivers/vmgenid/*:*; do [ -e \"$d\" ] && echo vmgenid && break; done; true";

impl Attempt {
    /// Builds the diskless template in `tpl`'s folder: the XML libvirt saved.
    pub(super) async fn boot_and_save_kernel(&self, tpl: &Template, domain_type: &'static str) -> Result<String, WarmError> {
        let step = |s: String| WarmError::Build { image: self.image.name.clone(), step: s };
        let Boot::Kernel { .. } = &self.image.boot else { return Err(step("not a kernel image".into())) };
        let identity = Identity::generate(&tpl.domain).map_err(|e| step(crate::error::chain(&e)))?;
        let pem = identity.private_pem().map_err(|e| step(crate::error::chain(&e)))?;
        let public = identity.public_line();
        let (console, save) = (tpl.console(), tpl.save_file());
        let blueprint = Blueprint {
            domain: &tpl.domain,
            port: tpl.port,
            image: &self.image,
            identity: &identity,
            disk: None,
            handover: Handover::Cmdline { host_key_pem: &pem, host_pub: &public, principal: &identity.principal },
            console: BuildConsole::File(&console),
            settle: Settle::VmGenId,
            poll: std::time::Duration::from_millis(200),
            save: SaveTo::File(&save),
        };
        self.boot_and_save(blueprint, domain_type).await
    }

    /// After the template's login ran [`VMGENID_PROBE`] (its output `probe`): its kernel has
    /// the VMGENID driver bound, and its guest agent answers before `deadline`.
    pub(super) async fn ready_to_clone(&self, probe: &[u8], domain: &str, deadline: Instant) -> Result<(), String> {
        if !String::from_utf8_lossy(probe).contains("vmgenid") {
            return Err(format!(
                "image {} says `guest_agent = true`, but its kernel has no VMGENID driver bound to the VM generation ID: its clones would not reseed their RNG",
                self.image.name
            ));
        }
        self.agent_answers(domain, deadline).await
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
