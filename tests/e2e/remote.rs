//! A run on a donor host (`support::donor`: a user's session libvirtd over `qemu+ssh://`) whose
//! host is lost mid-step: every process of the donor's user (its libvirtd, QEMU, passt, the
//! sshd session carrying the libvirt connection) is killed. Ports 24340-24349 (guests), sshd in
//! 24250-24269; donor user `pdkdonor3`.

use std::time::{Duration, Instant};

use paddock::runs::Trigger;

use super::support::donor::{Donor, POOL, pids_of_uid};
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_donor_lost_mid_step_ends_the_run_as_infrastructure_naming_the_host_and_its_leftovers_go_when_it_returns() {
    ensure_guest_image();
    let donor = Donor::start("pdkdonor3", 24250..=24269);
    let dir = tempfile::Builder::new().prefix("pdkr-").tempdir().unwrap();
    fleet(
        dir.path(),
        "24340-24349",
        PER_VM,
        r#"
[[jobs]]
name = "long"
images = ["tiny"]
[[jobs.steps]]
name = "wait"
type = "build"
command = "echo step-started; sleep 600"
"#,
    );
    let path = dir.path().join("fleet.toml");
    let src = std::fs::read_to_string(&path).unwrap().replacen(
        "name = \"local\"\nuri = \"qemu:///system\"",
        &format!("name = \"donor\"\nuri = \"{}\"\nimage_pool = \"{POOL}\"", donor.uri),
        1,
    );
    assert!(src.contains("name = \"donor\""));
    let src = src.replacen("reconcile_interval = \"5s\"", "reconcile_interval = \"5s\"\nlibvirt_timeout = \"10s\"", 1);
    std::fs::write(&path, &src).unwrap();
    let fleet = paddock::config::load(&path).unwrap_or_else(|e| panic!("test fleet invalid:\n{e}"));
    let daemon = start(fleet).await;
    let id = daemon.runs.trigger("long", None, Trigger::Manual { by: "alice".into() }).await.unwrap().remove(0);
    let log = dir.path().join("state/logs").join(&id).join("run.log");
    wait_until("the step's first line", Duration::from_secs(300), async || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("step-started")
    })
    .await;
    let vm = daemon.store.run(&id).await.unwrap().unwrap().vm_name.expect("the run's VM");
    assert!(donor.domains().contains(&vm), "the run's VM runs on the donor");

    // The host is lost: nothing of the donor's user survives (the listening sshd is root's).
    let t = Instant::now();
    for pid in pids_of_uid(donor.uid) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let row = wait_for_run(&daemon, &id, Duration::from_secs(120), finished).await;
    let took = t.elapsed();
    assert_eq!(row.outcome.as_deref(), Some("infrastructure"), "{row:?}");
    let reason = row.reason.clone().unwrap_or_default();
    assert!(reason.contains("host donor"), "the reason names the host: {reason}");
    // SSH keepalives (10 s x 3) bound how long a silent guest takes to notice, plus the settle.
    assert!(took < Duration::from_secs(90), "the run ended {took:?} after the host was lost");

    // The donor comes back by itself (the next connection starts its session daemon): the
    // dead VM's domain is reaped there.
    wait_until("the lost VM's domain to be reaped on the donor", Duration::from_secs(180), async || !donor.domains().contains(&vm)).await;
    assert!(donor.qemu_pids().is_empty());
    daemon.stop().await.unwrap();
}
