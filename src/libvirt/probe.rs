//! A one-off look at a host before it joins the fleet (`paddock host check`):
//! versions, emulators and their features, storage pools and the volumes in them.
//!
//! It opens its own short-lived connection, so it works for hosts that are not
//! (yet) in `fleet.toml`. Every call blocks: run it on a blocking thread.

use virt::connect::Connect;

use super::LibvirtError;
use super::facts::{self, HostFacts};

/// What libvirt says about a host.
#[derive(Debug, Clone)]
pub struct HostProbe {
    pub uri: String,
    pub hostname: String,
    /// The libvirt daemon's version, `11.3.0`.
    pub libvirt_version: String,
    /// The hypervisor's version, `10.0.2` (QEMU); `None` when the driver has none.
    pub hypervisor_version: Option<String>,
    pub facts: HostFacts,
    /// One per guest arch and domain type the host offers.
    pub emulators: Vec<Emulator>,
    pub pools: Vec<Pool>,
    /// Volumes of every active pool.
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emulator {
    pub arch: String,
    pub domain_type: String,
    /// The emulator binary, from domain capabilities.
    pub path: Option<String>,
    /// Whether the `passt` interface backend is offered; `None` when the
    /// driver gives no domain capabilities for this arch and type.
    pub passt: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub active: bool,
    /// The target directory of directory-backed pools.
    pub path: Option<String>,
    pub capacity: u64,
    pub available: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub pool: String,
    pub name: String,
    pub path: String,
    pub capacity: u64,
}

fn version(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

/// Connects to `uri` and reads everything `host check` reports on.
pub fn probe(uri: &str) -> Result<HostProbe, LibvirtError> {
    super::init_libvirt();
    let conn = Connect::open(Some(uri)).map_err(|source| LibvirtError::Connect { uri: uri.to_string(), source })?;
    // Dropping `conn` closes it.
    probe_open(&conn, uri)
}

fn probe_open(conn: &Connect, uri: &str) -> Result<HostProbe, LibvirtError> {
    let err = |source| LibvirtError::Probe { uri: uri.to_string(), source };
    let facts = facts::read(conn).map_err(err)?;
    let libvirt_version = version(conn.lib_version().map_err(err)?);
    let hypervisor_version = conn.hyp_version().ok().filter(|v| *v > 0).map(version);
    let hostname = conn.hostname().unwrap_or_default();
    let test_driver = facts.guests.values().flatten().any(|t| t == "test");
    let mut emulators = Vec::new();
    for (arch, types) in &facts.guests {
        for t in types {
            // The test driver's guests stand for another arch (see `facts`);
            // ask it about its own arch and type.
            let caps = if test_driver {
                conn.domain_capabilities(None, None, None, None, 0)
            } else {
                conn.domain_capabilities(None, Some(arch), None, Some(t), 0)
            };
            let (path, passt) = match caps {
                Ok(xml) => parse_domain_capabilities(&xml),
                Err(_) => (None, None),
            };
            emulators.push(Emulator { arch: arch.clone(), domain_type: t.clone(), path, passt });
        }
    }
    let mut pools = Vec::new();
    let mut volumes = Vec::new();
    for p in conn.list_all_storage_pools(0).map_err(err)? {
        let Ok(name) = p.name() else { continue };
        let active = p.is_active().unwrap_or(false);
        let info = p.info().ok();
        let path = p.xml_desc(0).ok().and_then(|x| pool_path(&x));
        if active {
            let _ = p.refresh(0);
            for v in p.list_all_volumes(0).unwrap_or_default() {
                volumes.push(Volume {
                    pool: name.clone(),
                    name: v.name().unwrap_or_default(),
                    path: v.path().unwrap_or_default(),
                    capacity: v.info().map(|i| i.capacity).unwrap_or(0),
                });
            }
        }
        pools.push(Pool {
            name,
            active,
            path,
            capacity: info.as_ref().map_or(0, |i| i.capacity),
            available: info.as_ref().map_or(0, |i| i.available),
        });
    }
    Ok(HostProbe { uri: uri.to_string(), hostname, libvirt_version, hypervisor_version, facts, emulators, pools, volumes })
}

/// The emulator path and whether `<interface>` offers the `passt` backend.
pub(super) fn parse_domain_capabilities(xml: &str) -> (Option<String>, Option<bool>) {
    let path = between(xml, "<path>", "</path>").map(str::to_string);
    // Drivers without the backendType enum (old libvirt, the test driver) cannot say.
    let passt = xml.find("<interface").map(|start| {
        let section = &xml[start..];
        let section = &section[..section.find("</interface>").unwrap_or(section.len())];
        section.contains("<value>passt</value>")
    });
    let passt = match passt {
        Some(false) if !xml.contains("backendType") => None,
        p => p,
    };
    (path, passt)
}

fn pool_path(xml: &str) -> Option<String> {
    let target = &xml[xml.find("<target>")?..];
    between(target, "<path>", "</path>").map(str::to_string)
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let a = s.find(open)? + open.len();
    let b = s[a..].find(close)? + a;
    Some(s[a..b].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passt_backend_is_read_from_domain_capabilities() {
        let with = "<domainCapabilities><path>/usr/bin/qemu-system-x86_64</path><devices>\
            <interface supported='yes'><enum name='backendType'><value>default</value><value>passt</value></enum></interface>\
            </devices></domainCapabilities>";
        assert_eq!(parse_domain_capabilities(with), (Some("/usr/bin/qemu-system-x86_64".into()), Some(true)));
        let without = with.replace("<value>passt</value>", "");
        assert_eq!(parse_domain_capabilities(&without).1, Some(false));
        assert_eq!(parse_domain_capabilities("<domainCapabilities><path>/x</path></domainCapabilities>").1, None);
        assert_eq!(version(11_003_000), "11.3.0");
    }
}
