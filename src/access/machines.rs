//! `Machines` over the real VM manager and SSH client: what the daemon hands
//! the access service.

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::keys::KeyOp;
use super::{BoxFuture, MachineError, Machines, Placed};
use crate::config::{Fleet, HostKeyPolicy, Image};
use crate::ssh::{self, ClientKey, HostKeyCheck, SshConfig};
use crate::store::Store;
use crate::vm::{LaunchRequest, VmManager, readiness};

pub struct VmMachines {
    pub vms: VmManager,
    pub store: Store,
    pub fleet: Arc<Fleet>,
    /// The daemon's own key: it logs in to install and remove users' keys.
    pub client: ClientKey,
}

fn err(step: &'static str, vm: &str, e: impl std::fmt::Display) -> MachineError {
    MachineError { step, vm: vm.into(), message: e.to_string() }
}

impl VmMachines {
    async fn addr(&self, vm: &str) -> Result<(SocketAddr, Option<String>), MachineError> {
        let row = self.store.vm(vm).await.map_err(|e| err("finding", vm, e))?.ok_or_else(|| err("finding", vm, "unknown VM"))?;
        let port = row.ssh_port.ok_or_else(|| err("finding", vm, "no SSH port"))?;
        let host =
            row.host.as_deref().and_then(|h| self.fleet.host(h)).ok_or_else(|| err("finding", vm, "its host is not in fleet.toml"))?;
        Ok((SocketAddr::new(host.address, port), row.console_path))
    }

    async fn host_key(&self, image: &Image, console: Option<&str>, vm: &str) -> Result<ssh_key::PublicKey, MachineError> {
        match &image.host_key {
            HostKeyPolicy::PerVm => {
                let line = self.store.vm_host_key(vm).await.map_err(|e| err("reading the host key of", vm, e))?;
                let line = line.ok_or_else(|| err("reading the host key of", vm, "no host key pinned for it"))?;
                ssh_key::PublicKey::from_openssh(&line).map_err(|e| err("reading the host key of", vm, e))
            }
            HostKeyPolicy::Pinned(k) => Ok(k.clone()),
            HostKeyPolicy::File(p) => ssh_key::PublicKey::read_openssh_file(p).map_err(|e| err("reading the host key of", vm, e)),
            HostKeyPolicy::Console => {
                let text = console.and_then(|p| std::fs::read(p).ok()).unwrap_or_default();
                readiness::host_key_from_console(&String::from_utf8_lossy(&text))
                    .ok_or_else(|| err("reading the host key of", vm, "no host key on its console"))
            }
        }
    }
}

impl Machines for VmMachines {
    fn launch<'a>(
        &'a self,
        grant_id: &'a str,
        image: &'a Image,
        ca_line: &'a str,
        until: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Placed, MachineError>> {
        Box::pin(async move {
            let vm = format!("for grant {grant_id}");
            let req = LaunchRequest {
                run_id: format!("grant-{grant_id}"),
                job: None,
                image: image.clone(),
                authorized_keys: vec![self.client.public_line()],
                ca_key: image.trusts_fleet_ca.then(|| ca_line.to_string()),
                priority: 0,
                avoid_hosts: Vec::new(),
                progress: None,
            };
            let ready = self.vms.launch(req).await.map_err(|e| err("launching a VM", &vm, crate::error::chain(&e)))?;
            // Held and released: the manager keeps it across a daemon restart and
            // removes it at the grant's end even if nothing else does.
            self.vms.hold(&ready.name, until).await.map_err(|e| err("holding", &ready.name, e))?;
            self.vms.release(&ready.name).await.map_err(|e| err("releasing", &ready.name, e))?;
            Ok(Placed { name: ready.name, host: ready.ssh_addr.ip().to_string(), port: ready.ssh_addr.port() })
        })
    }

    fn locate<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<Placed, MachineError>> {
        Box::pin(async move {
            let (addr, _) = self.addr(vm).await?;
            Ok(Placed { name: vm.into(), host: addr.ip().to_string(), port: addr.port() })
        })
    }

    fn hold<'a>(&'a self, vm: &'a str, until: DateTime<Utc>) -> BoxFuture<'a, Result<(), MachineError>> {
        Box::pin(async move {
            match self.vms.hold(vm, until).await {
                Ok(()) => Ok(()),
                // Already gone: nothing is left to keep or to let go, so a grant's
                // clean-up on a VM whose hold ended first is done, not retried
                // forever (a grant being prepared fails at `locate`).
                Err(crate::vm::VmError::NotFound { .. }) => Ok(()),
                Err(e) => Err(err("holding", vm, e)),
            }
        })
    }

    fn destroy<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<(), MachineError>> {
        Box::pin(async move {
            match self.vms.destroy(vm).await {
                // Already gone (its hold ended first): what was wanted.
                Ok(()) | Err(crate::vm::VmError::NotFound { .. }) => Ok(()),
                Err(e) => Err(err("destroying", vm, e)),
            }
        })
    }

    fn run_ops<'a>(&'a self, vm: &'a str, image: &'a Image, ops: Vec<KeyOp>) -> BoxFuture<'a, Result<(), MachineError>> {
        Box::pin(async move {
            let (addr, console) = self.addr(vm).await?;
            let key = self.host_key(image, console.as_deref(), vm).await?;
            let target = ssh::Target { addr, user: image.user.clone() };
            let session = ssh::connect(&target, &self.client.auth(), &HostKeyCheck::exact(key), &SshConfig::default())
                .await
                .map_err(|e| err("connecting to", vm, e))?;
            let result = async {
                for op in ops {
                    match op {
                        KeyOp::Upload { path, bytes } => session.upload(&path, &bytes).await.map_err(|e| err("uploading to", vm, e))?,
                        KeyOp::Exec { command, stdin } => {
                            let (_, stderr, status) =
                                session.exec_collect(&command, stdin).await.map_err(|e| err("running a command in", vm, e))?;
                            if !status.success() {
                                return Err(err(
                                    "changing keys in",
                                    vm,
                                    format!("{status:?}: {}", String::from_utf8_lossy(&stderr).trim()),
                                ));
                            }
                        }
                    }
                }
                Ok(())
            }
            .await;
            session.disconnect().await;
            result
        })
    }
}
