//! The libvirt calls of persistent machines (`[[machines]]`, issue 18): asking whether a
//! domain and its snapshot exist, and reverting it to that snapshot. Run on the host's actor
//! thread like every other call, so each has the call deadline of `HostHandle::call`.
//! Nothing here defines, undefines, deletes or destroys a domain.

use virt::connect::Connect;

use super::LibvirtError;

/// One persistent-machine call, named for the deadline error.
#[derive(Debug)]
pub enum MachineOp {
    /// Whether the domain is defined and running, and whether it has the snapshot.
    Inspect { domain: String, snapshot: Option<String> },
    /// Reverts the domain to the snapshot and leaves it running (a snapshot of a shut-off
    /// domain boots it), then inspects it.
    Revert { domain: String, snapshot: String },
}

impl MachineOp {
    pub(super) fn call(&self) -> &'static str {
        match self {
            MachineOp::Inspect { .. } => "inspect machine",
            MachineOp::Revert { .. } => "revert to snapshot",
        }
    }
}

/// What libvirt says of a persistent machine's domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspection {
    pub defined: bool,
    pub active: bool,
    /// `None` when no snapshot was asked about (or the domain is missing).
    pub has_snapshot: Option<bool>,
}

pub(super) fn run(conn: &Connect, host: &str, op: MachineOp) -> Result<Inspection, LibvirtError> {
    let failed = |what: String, source| LibvirtError::Machine { host: host.to_string(), what, source };
    match op {
        MachineOp::Inspect { domain, snapshot } => {
            let d = match conn.lookup_domain_by_name(&domain) {
                Ok(d) => d,
                Err(e) if super::is_no_domain(&e) => return Ok(Inspection { defined: false, active: false, has_snapshot: None }),
                Err(source) => return Err(LibvirtError::Lookup { host: host.to_string(), name: domain, source }),
            };
            let active = d.is_active().map_err(|source| failed(format!("asking whether {domain} runs"), source))?;
            let has_snapshot = match snapshot {
                None => None,
                Some(s) => match virt::domain::Domain::lookup_snapshot_by_name(&d, &s, 0) {
                    Ok(_) => Some(true),
                    Err(e) if e.code() == virt::error::ErrorNumberEnum::Known(virt::error::ErrorNumber::NoDomainSnapshot) => Some(false),
                    Err(source) => return Err(failed(format!("looking up snapshot {s} of {domain}"), source)),
                },
            };
            Ok(Inspection { defined: true, active, has_snapshot })
        }
        MachineOp::Revert { domain, snapshot } => {
            let d = super::lookup(conn, host, &domain)?;
            let snap = virt::domain::Domain::lookup_snapshot_by_name(&d, &snapshot, 0)
                .map_err(|source| failed(format!("looking up snapshot {snapshot} of {domain}"), source))?;
            snap.revert(virt::sys::VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING)
                .map_err(|source| failed(format!("reverting {domain} to snapshot {snapshot}"), source))?;
            let active = d.is_active().map_err(|source| failed(format!("asking whether {domain} runs"), source))?;
            Ok(Inspection { defined: true, active, has_snapshot: Some(true) })
        }
    }
}
