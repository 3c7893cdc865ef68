//! Persistent machines (`[[machines]]`) on `qemu:///system`: a domain the test defines itself
//! from the bundled x86_64 guest (with a small qcow2 disk, so libvirt can take an internal
//! snapshot of the running guest), snapshotted once, then driven by name by the daemon.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use paddock::ssh::ClientKey;
use paddock::store::Store;

use super::crash::Serve;
use super::support::guest::{guest, test_host_key};
use super::support::virsh::virsh;
use super::*;

/// The machine's host port (this helper's range, 23200-23399).
const PORT: u16 = 23201;

/// Removes the test's own domain (its snapshot and disk file go with the test's folder).
struct MachineGuard(String);

impl Drop for MachineGuard {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
        let _ = virsh(&["undefine", &self.0, "--snapshots-metadata"]);
    }
}

fn defined(domain: &str) -> bool {
    virsh(&["dominfo", domain]).status.success()
}

fn running(domain: &str) -> bool {
    String::from_utf8_lossy(&virsh(&["domstate", domain]).stdout).trim() == "running"
}

fn machine_fleet(dir: &Path, domain: &str, snapshot: &str, host_key: &str, jobs: &str) -> String {
    let machine = format!(
        r#"
[[machines]]
name = "pdkm-box"
host = "local"
domain = "{domain}"
snapshot = "{snapshot}"
ssh_port = {PORT}
host_key = "{host_key}"
user = "root"
boot_timeout = "2m"
"#
    );
    TestFleet::local(dir, "23210-23219").capacity(2, 2048, 2).section(&machine).section(jobs).toml()
}

const MARKER_JOB: &str = r#"
[[jobs]]
name = "marker"
images = ["pdkm-box"]
[[jobs.steps]]
name = "write"
type = "test"
command = "test ! -e /root/pdkm-marker && echo written > /root/pdkm-marker && cat /root/pdkm-marker"
"#;

const LONG_JOB: &str = r#"
[[jobs]]
name = "long"
images = ["pdkm-box"]
[[jobs.steps]]
name = "wait"
type = "build"
command = "echo up; sleep 600"
"#;

fn check(config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_paddock")).args(["check", "-c"]).arg(config).env("PADDOCK_LOG", "warn").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_machine_is_reverted_before_each_run_used_by_one_run_at_a_time_and_never_undefined() {
    let out = guest();
    let dir = tempfile::tempdir().unwrap();
    // QEMU runs as libvirt-qemu: it must reach the disk file in the test's folder.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let state = dir.path().join("state");
    // The admin's one-time set-up: the machine trusts paddock's key (here on the bundled
    // guest's command line, in a real lab in its authorized_keys before the snapshot).
    let key = ClientKey::load_or_create(&state).unwrap();
    let host_key = test_host_key("root");
    let domain = format!("pdkm-box-{}", std::process::id());
    let disk = dir.path().join("disk.qcow2");
    let made = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg("16M").status().unwrap();
    assert!(made.success());
    let cmdline = paddock::libvirt::domain_xml::kernel_cmdline("console=ttyS0 quiet no_timer_check panic=1", &[key.public_line()], None);
    let xml = format!(
        r#"<domain type='qemu'>
  <name>{domain}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{k}</kernel><initrd>{i}</initrd><cmdline>{cmdline} {id}</cmdline></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
    <interface type='user'><backend type='passt'/><model type='virtio'/><portForward proto='tcp' address='127.0.0.1'><range start='{PORT}' to='22'/></portForward></interface>
    <serial type='file'><source path='{console}'/></serial>
  </devices>
</domain>"#,
        k = out.join("vmlinuz").display(),
        i = out.join("initrd.img").display(),
        id = host_key.cmdline,
        disk = disk.display(),
        console = dir.path().join("console.log").display(),
    );
    let xml_path = dir.path().join("domain.xml");
    std::fs::write(&xml_path, xml).unwrap();
    let defined_now = virsh(&["define", xml_path.to_str().unwrap()]);
    assert!(defined_now.status.success(), "{}", String::from_utf8_lossy(&defined_now.stderr));
    let _machine = MachineGuard(domain.clone());
    assert!(virsh(&["start", &domain]).status.success());
    wait_until("the machine's sshd", Duration::from_secs(120), async || {
        tokio::net::TcpStream::connect(("127.0.0.1", PORT)).await.is_ok()
            && std::fs::read_to_string(dir.path().join("console.log")).is_ok_and(|c| c.contains("PADDOCK-HOSTKEY-END"))
    })
    .await;
    let snap = virsh(&["snapshot-create-as", &domain, "clean"]);
    assert!(snap.status.success(), "{}", String::from_utf8_lossy(&snap.stderr));

    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, machine_fleet(dir.path(), &domain, "clean", host_key.public.trim(), MARKER_JOB)).unwrap();
    // `paddock check` finds the domain and its snapshot; a missing snapshot or domain fails it.
    let (ok, text) = check(&config);
    assert!(ok, "{text}");
    let wrong = dir.path().join("wrong.toml");
    std::fs::write(&wrong, machine_fleet(dir.path(), &domain, "no-such-snap", host_key.public.trim(), MARKER_JOB)).unwrap();
    let (ok, text) = check(&wrong);
    assert!(!ok && text.contains(&format!("domain {domain} on host local has no snapshot no-such-snap")), "{text}");
    std::fs::write(&wrong, machine_fleet(dir.path(), "pdkm-nowhere", "clean", host_key.public.trim(), MARKER_JOB)).unwrap();
    let (ok, text) = check(&wrong);
    assert!(!ok && text.contains("no domain pdkm-nowhere is defined on host local"), "{text}");

    // Two triggers at once: one run at a time, each on the reverted machine, so both find no
    // marker (run 1's file is gone in run 2) and both write it.
    let daemon = start(paddock::config::load(&config).unwrap()).await;
    let ids = [
        daemon.runs.trigger("marker", None, manual()).await.unwrap().remove(0),
        daemon.runs.trigger("marker", None, manual()).await.unwrap().remove(0),
    ];
    let mut rows = Vec::new();
    for id in &ids {
        let row = wait_for_run(&daemon, id, Duration::from_secs(600), finished).await;
        assert_eq!(row.outcome.as_deref(), Some("success"), "{row:?}");
        assert_eq!(row.vm_name.as_deref(), Some(domain.as_str()));
        let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
        assert_eq!(doc["results"][0]["output"].as_str().unwrap().trim(), "written", "{doc}");
        assert_eq!(doc["client_info"]["host"], "pdkm-box", "{doc}");
        // Restored from its snapshot, not booted.
        assert_eq!(doc["extras"]["timings"]["start"], "warm", "{doc}");
        rows.push(row);
    }
    rows.sort_by_key(|r| r.started_at);
    assert!(rows[0].finished_at.unwrap() <= rows[1].started_at.unwrap(), "the runs overlapped: {rows:?}");
    assert!(defined(&domain) && running(&domain), "after = keep leaves the machine defined and running");
    daemon.stop().await.unwrap();

    // SIGKILL of the daemon while a run uses the machine: the restarted daemon's
    // reconciliation leaves the machine defined and running, and the run is interrupted.
    std::fs::write(&config, machine_fleet(dir.path(), &domain, "clean", host_key.public.trim(), LONG_JOB)).unwrap();
    let store = Store::open(&state.join("paddock.db")).await.unwrap();
    let first = Serve::start(&config, true);
    let run = wait_for("the long run to be running", Duration::from_secs(300), async || {
        store.runs(Default::default()).await.ok()?.into_iter().find(|r| r.job == "long" && r.state.starts_with("running:"))
    })
    .await;
    first.sigkill();
    let _second = Serve::start(&config, false);
    wait_until("the interrupted run to be ended", Duration::from_secs(60), async || {
        store.run(&run.id).await.ok().flatten().is_some_and(|r| r.outcome.as_deref() == Some("interrupted"))
    })
    .await;
    // The new daemon printed its address after its start-up reconciliation (the crash
    // clean-up pass that reaps a killed daemon's VMs) had run.
    assert!(defined(&domain), "reconciliation never undefines a persistent machine");
    assert!(running(&domain), "reconciliation never destroys a persistent machine");
    let snaps = String::from_utf8_lossy(&virsh(&["snapshot-list", &domain, "--name"]).stdout).into_owned();
    assert_eq!(snaps.trim(), "clean", "its snapshot is kept");
}

fn manual() -> paddock::runs::Trigger {
    paddock::runs::Trigger::Manual { by: "alice".into() }
}
