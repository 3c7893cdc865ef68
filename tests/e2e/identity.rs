//! The bundled guest with a per-VM identity (`identity = "cmdline"`): paddock generates
//! each VM's host key and pins it before boot, the guest's /init takes it (and the VM's
//! principal) from the kernel command line; the image has no key of its own
//! (`tests/guest_image.rs` `no_initramfs_holds_a_private_host_key`).

use std::time::Duration;

use paddock::runs::Trigger;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bundled_guest_gets_its_own_host_key_and_principal_from_the_cmdline() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let job = |name: &str| {
        format!(
            r#"
[[jobs]]
name = "{name}"
images = ["tiny"]
[[jobs.steps]]
name = "who"
type = "test"
command = "cat /etc/ssh/auth_principals/root /etc/ssh/ssh_host_ed25519_key.pub"
"#
        )
    };
    let fleet = fleet_with_keys(dir.path(), "24040-24049", PER_VM, &[], &format!("{}{}", job("who-a"), job("who-b")));
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let by = || Trigger::Manual { by: "test".into() };
    let a = daemon.runs.trigger("who-a", None, by()).await.unwrap().remove(0);
    let b = daemon.runs.trigger("who-b", None, by()).await.unwrap().remove(0);
    let mut keys = Vec::new();
    for id in [a, b] {
        // Success means paddock logged in checking exactly the key it generated.
        let row = wait_for_run(&daemon, &id, Duration::from_secs(240), finished).await;
        assert_eq!(row.state, "done", "{row:?}");
        let vm = row.vm_name.unwrap();
        let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
        let out = doc["results"][0]["output"].as_str().unwrap().to_string();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0], vm, "the principal is the VM's name");
        assert!(lines[1].starts_with("ssh-ed25519 ") && lines[1].ends_with(&format!(" {vm}")), "not the per-VM key: {out}");
        keys.push(lines[1].split_whitespace().nth(1).unwrap().to_string());
    }
    assert_ne!(keys[0], keys[1], "two VMs share a host key");
    daemon.stop().await.unwrap();
}
