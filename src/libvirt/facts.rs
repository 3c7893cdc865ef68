//! Host facts read from libvirt at connect (arch, memory, CPUs, which guest
//! arches and domain types it can run) and their check against the config.

use std::collections::BTreeMap;

use virt::connect::Connect;

use crate::config::{Accelerator, Host, Image};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The host's own architecture, as libvirt names it.
    pub arch: String,
    pub memory_mib: u64,
    pub cpus: u32,
    /// Guest arch → domain types (`qemu`, `kvm`) the host can run for it.
    pub guests: BTreeMap<String, Vec<String>>,
}

impl HostFacts {
    /// Whether the host has an emulator for `arch` under domain type `domain_type`.
    pub fn supports(&self, arch: &str, domain_type: &str) -> bool {
        self.guests.get(arch).is_some_and(|types| types.iter().any(|t| t == domain_type))
    }

    /// The domain type to write for a host configured with `accelerator`.
    /// libvirt's `test:///` driver only knows its own type `test`, whatever
    /// the config says, so its hosts get that.
    pub fn domain_type(&self, accelerator: Accelerator) -> &'static str {
        if self.guests.values().flatten().any(|t| t == "test") { "test" } else { accelerator.domain_type() }
    }

    /// Whether the host can run guests of `arch` with the domain type it would get.
    pub fn runs(&self, arch: &str, accelerator: Accelerator) -> bool {
        self.supports(arch, self.domain_type(accelerator))
    }
}

pub(super) fn read(conn: &Connect) -> Result<HostFacts, virt::error::Error> {
    let node = conn.node_info()?;
    let caps = conn.capabilities()?;
    let (arch, mut guests) = parse_capabilities(&caps);
    if guests.values().flatten().any(|t| t == "test") {
        // libvirt's test driver lists only i686 yet defines guests of any arch.
        // A fake host's `<cpu><model>` (from its XML file) says which arch it
        // stands for, so that placement by arch can be tested.
        let model = match node.model.as_str() {
            "i686" => "x86_64".to_string(),
            m => m.to_string(),
        };
        guests = BTreeMap::from([(model, vec!["test".to_string()])]);
    }
    Ok(HostFacts { arch, memory_mib: node.memory / 1024, cpus: node.cpus, guests })
}

/// Reads `<host><cpu><arch>` and every `<guest><arch name><domain type>` from capabilities XML.
fn parse_capabilities(xml: &str) -> (String, BTreeMap<String, Vec<String>>) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut host_arch = String::new();
    let mut guests: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut guest_arch: Option<String> = None;
    // Capabilities attributes hold plain names; no unescaping is needed.
    let attr = |e: &quick_xml::events::BytesStart<'_>, key: &str| -> Option<String> {
        e.attributes().flatten().find(|a| a.key.as_ref() == key).map(|a| a.value.into_owned())
    };
    while let Ok(event) = reader.read_event() {
        match event {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_string();
                if name == "arch" && path.last().is_some_and(|p| p == "guest") {
                    guest_arch = attr(&e, "name");
                }
                path.push(name);
            }
            Event::Empty(e) => {
                if e.local_name().as_ref() == "domain"
                    && path.last().is_some_and(|p| p == "arch")
                    && let (Some(arch), Some(kind)) = (&guest_arch, attr(&e, "type"))
                {
                    let types = guests.entry(arch.clone()).or_default();
                    if !types.contains(&kind) {
                        types.push(kind);
                    }
                }
            }
            Event::Text(t) if path.len() >= 3 && path[path.len() - 3..] == ["host", "cpu", "arch"] => {
                host_arch = t.xml10_content().trim().to_string();
            }
            Event::End(_) => {
                let left_arch = path.pop().is_some_and(|p| p == "arch");
                // Leaving a guest's <arch> (or the host's): forget the guest arch.
                if left_arch && path.last().is_some_and(|p| p == "guest") {
                    guest_arch = None;
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    (host_arch, guests)
}

/// Warnings about a host whose config does not match what libvirt reports.
/// They are warnings, not errors: over-committing memory or CPUs can be deliberate.
pub fn check_host(host: &Host, facts: &HostFacts, images: &[Image]) -> Vec<String> {
    let mut out = Vec::new();
    if host.capacity.memory_mib > facts.memory_mib {
        out.push(format!("host {}: memory_mib = {} but libvirt reports {} MiB", host.name, host.capacity.memory_mib, facts.memory_mib));
    }
    if host.capacity.vcpus > facts.cpus {
        out.push(format!("host {}: vcpus = {} but libvirt reports {} CPUs", host.name, host.capacity.vcpus, facts.cpus));
    }
    let domain_type = facts.domain_type(host.accelerator);
    let mut arches: Vec<_> = images.iter().map(|i| i.arch).collect();
    arches.sort_by_key(|a| a.as_str());
    arches.dedup();
    let runnable: Vec<_> = arches.iter().filter(|a| facts.supports(a.as_str(), domain_type)).collect();
    if runnable.is_empty() && !arches.is_empty() {
        out.push(format!(
            "host {}: cannot run any configured image arch with domain type '{domain_type}' (it offers: {})",
            host.name,
            facts.guests.iter().map(|(a, t)| format!("{a}:{}", t.join("/"))).collect::<Vec<_>>().join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_arches_and_domain_types_from_capabilities() {
        let xml = r#"<capabilities><host><cpu><arch>x86_64</arch></cpu></host>
          <guest><os_type>hvm</os_type><arch name='x86_64'><wordsize>64</wordsize>
            <domain type='qemu'/><domain type='kvm'/></arch></guest>
          <guest><os_type>hvm</os_type><arch name='aarch64'><domain type='qemu'/></arch></guest>
        </capabilities>"#;
        let (arch, guests) = parse_capabilities(xml);
        assert_eq!(arch, "x86_64");
        assert_eq!(guests["x86_64"], vec!["qemu", "kvm"]);
        assert_eq!(guests["aarch64"], vec!["qemu"]);
        assert!(!guests.contains_key("s390x"));
    }
}
