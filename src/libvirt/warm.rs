//! The libvirt calls of warm starts (issue 18): saving a booted guest's memory to a file,
//! restoring a clone from it, and the guest-agent calls that give a clone its own clock,
//! RNG seed and identity. Run on the host's actor thread like every other call, so each has
//! the call deadline of `HostHandle::call`.

use std::ffi::CString;

use virt::connect::Connect;

use super::LibvirtError;

/// One warm-start call, named for the deadline error.
#[derive(Debug)]
pub enum WarmOp {
    /// Saves the running domain's memory to `path` (on the host); the domain stops.
    Save { name: String, path: String },
    /// Restores a domain from a save file (running, transient, under the name its header holds).
    Restore { path: String },
    /// A QEMU guest agent command (JSON); answers its JSON reply.
    Agent { name: String, command: String, timeout_s: i32 },
    /// Sets the guest's clock through the agent.
    SetTime { name: String, seconds: i64, nanos: i32 },
}

impl WarmOp {
    pub(super) fn call(&self) -> &'static str {
        match self {
            WarmOp::Save { .. } => "save",
            WarmOp::Restore { .. } => "restore",
            WarmOp::Agent { .. } => "guest agent command",
            WarmOp::SetTime { .. } => "set time",
        }
    }
}

pub(super) fn run(conn: &Connect, host: &str, op: WarmOp) -> Result<String, LibvirtError> {
    let failed = |what: String, source| LibvirtError::Warm { host: host.to_string(), what, source };
    match op {
        WarmOp::Save { name, path } => {
            let d = super::lookup(conn, host, &name)?;
            let cpath = CString::new(path.clone()).map_err(|_| LibvirtError::BadArgument { what: format!("save path {path}") })?;
            // SAFETY: `d` is a live domain for the duration of the call and `cpath` a valid C string.
            let r =
                unsafe { virt::sys::virDomainSaveFlags(d.as_ptr(), cpath.as_ptr(), std::ptr::null(), virt::sys::VIR_DOMAIN_SAVE_RUNNING) };
            if r < 0 {
                return Err(failed(format!("saving domain {name} to {path}"), virt::error::Error::last_error()));
            }
            Ok(String::new())
        }
        WarmOp::Restore { path } => conn
            .restore_domain_flags(&path, None, virt::sys::VIR_DOMAIN_SAVE_RUNNING)
            .map(|()| String::new())
            .map_err(|source| failed(format!("restoring from {path}"), source)),
        WarmOp::Agent { name, command, timeout_s } => {
            let d = super::lookup(conn, host, &name)?;
            d.qemu_agent_command(&command, timeout_s, 0).map_err(|source| failed(format!("guest agent of {name}"), source))
        }
        WarmOp::SetTime { name, seconds, nanos } => {
            let d = super::lookup(conn, host, &name)?;
            d.set_time(seconds, nanos, 0).map(|()| String::new()).map_err(|source| failed(format!("setting the clock of {name}"), source))
        }
    }
}
