//! A run on a donor host (`support::donor`: a user's session libvirtd over `qemu+ssh://`) whose
//! host is lost mid-step: every process of the donor's user (its libvirtd, QEMU, passt, the
//! sshd session carrying the libvirt connection) is killed. The job has `retry_infrastructure =
//! 1`: its retry runs on the local host and succeeds. Ports 26260-26269 (guests), sshd in
//! 26270-26289; donor user `pdkp3`.

use std::time::{Duration, Instant};

use paddock::hosts::Block;
use paddock::runs::Trigger;

use super::support::donor::{Donor, POOL};
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_donor_lost_mid_step_ends_the_run_as_infrastructure_naming_the_host_its_retry_succeeds_locally_and_its_leftovers_go_when_it_returns()
 {
    ensure_guest_image();
    let donor = Donor::start("pdkp3", 26270..=26289);
    let dir = tempfile::Builder::new().prefix("pdkr-").tempdir().unwrap();
    fleet(
        dir.path(),
        "26260-26269",
        PER_VM,
        r#"
[[jobs]]
name = "long"
images = ["tiny"]
retry_infrastructure = 1
[[jobs.steps]]
name = "wait"
type = "build"
command = "echo step-started; sleep 20; echo step-done"
"#,
    );
    let path = dir.path().join("fleet.toml");
    // The local host stays, drained until the run is on the donor.
    let donor_host = format!(
        "[[hosts]]\nname = \"donor\"\nuri = \"{}\"\nimage_pool = \"{POOL}\"\naccelerator = \"tcg\"\naddress = \"127.0.0.1\"\n\
         max_vms = 4\nmemory_mib = 4096\nvcpus = 4\n\n[[images]]",
        donor.uri
    );
    let src = std::fs::read_to_string(&path).unwrap().replacen("[[images]]", &donor_host, 1);
    assert!(src.contains("name = \"donor\""));
    let src = src.replacen("reconcile_interval = \"5s\"", "reconcile_interval = \"5s\"\nlibvirt_timeout = \"10s\"", 1);
    std::fs::write(&path, &src).unwrap();
    let fleet = paddock::config::load(&path).unwrap_or_else(|e| panic!("test fleet invalid:\n{e}"));
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let drained = Block::Drained { reason: "test: the run must go to the donor".into(), by: "test".into(), at: chrono::Utc::now() };
    daemon.vms.set_block("local", Some(drained)).await.unwrap();
    let id = daemon.runs.trigger("long", None, Trigger::Manual { by: "alice".into() }).await.unwrap().remove(0);
    let log = dir.path().join("state/logs").join(&id).join("run.log");
    wait_until("the step's first line", Duration::from_secs(300), async || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("step-started")
    })
    .await;
    let vm = daemon.store.run(&id).await.unwrap().unwrap().vm_name.expect("the run's VM");
    assert!(donor.domains().contains(&vm), "the run's VM runs on the donor");
    daemon.vms.set_block("local", None).await.unwrap();

    // The host is lost: nothing of the donor's user survives (the listening sshd is root's).
    let t = Instant::now();
    assert!(!donor.kill_every_process().is_empty(), "the donor's user runs no process");
    let row = wait_for_run(&daemon, &id, Duration::from_secs(120), finished).await;
    let took = t.elapsed();
    assert_eq!(row.outcome.as_deref(), Some("infrastructure"), "{row:?}");
    let reason = row.reason.clone().unwrap_or_default();
    assert!(reason.contains("host donor"), "the reason names the host: {reason}");
    // SSH keepalives (10 s x 3) bound how long a silent guest takes to notice, plus the settle.
    assert!(took < Duration::from_secs(90), "the run ended {took:?} after the host was lost");

    // Its retry, queued in the same transaction, runs on the local host and succeeds.
    let link = daemon.store.retried_by(&id).await.unwrap().expect("the lost run is retried");
    assert_eq!(link.note, "retry 1 of 1 after infrastructure failure on host donor");
    let retry = wait_for_run(&daemon, &link.run_id, Duration::from_secs(240), finished).await;
    assert_eq!(retry.outcome.as_deref(), Some("success"), "{retry:?}");
    assert_eq!(retry.host.as_deref(), Some("local"));
    let retry_log = std::fs::read_to_string(dir.path().join("state/logs").join(&retry.id).join("run.log")).unwrap();
    assert!(retry_log.contains("step-done"), "{retry_log}");
    // The recorder gets the retry's result only, saying what it replaced.
    assert!(daemon.store.outbox_for_run(&id).await.unwrap().is_empty(), "the lost attempt was forwarded");
    wait_until("the retry's result delivered", Duration::from_secs(30), async || {
        daemon.store.outbox_for_run(&retry.id).await.unwrap().iter().all(|e| e.delivered_at.is_some())
    })
    .await;
    assert_eq!(daemon.recorder.row_counts().await.unwrap()[0], 1, "one result in the recorder");
    let stored = daemon.recorder.get(paddock::recorder::ResultKey(1)).await.unwrap().expect("delivered");
    let extras = serde_json::to_value(&stored.doc.extras).unwrap();
    assert_eq!(extras["run_id"], retry.id.as_str());
    assert_eq!(extras["retry"]["note"], "retry 1 of 1 after infrastructure failure on host donor");
    assert_eq!(extras["retry"]["retry_of"], id.as_str());

    // The donor comes back by itself (the next connection starts its session daemon): the
    // dead VM's domain is reaped there.
    wait_until("the lost VM's domain to be reaped on the donor", Duration::from_secs(180), async || !donor.domains().contains(&vm)).await;
    assert!(donor.qemu_pids().is_empty());
    daemon.stop().await.unwrap();
}

/// SIGKILL of the real daemon binary (`paddock serve`) while a step runs on the donor (the only
/// host, so the run goes there), then a restart: the donor is left with no domain, no QEMU and no
/// per-VM volume. The tiny image boots from kernel + initrd volumes and has no overlay or seed
/// of its own, so the test puts a dead disk VM's two (`<vm>-overlay.qcow2`, `<vm>-seed.iso`) into
/// the pool after the kill, as a killed daemon would leave them. Donor user `pdkp1`, sshd in
/// 26220-26239, guests 26240-26249.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_daemon_binary_mid_step_on_the_donor_leaves_nothing_there_after_a_restart() {
    ensure_guest_image();
    let donor = Donor::start("pdkp1", 26220..=26239);
    let dir = tempfile::Builder::new().prefix("pdkp-").tempdir().unwrap();
    fleet(
        dir.path(),
        "26240-26249",
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
    std::fs::write(&path, &src).unwrap();
    paddock::config::load(&path).unwrap_or_else(|e| panic!("test fleet invalid:\n{e}"));

    let first = super::crash::Serve::start(&path, true);
    let store = paddock::store::Store::open(&dir.path().join("state/paddock.db")).await.unwrap();
    let run = wait_for("the demo run's step", Duration::from_secs(300), async || {
        let runs = store.runs(Default::default()).await.ok()?;
        let r = runs.into_iter().next()?;
        let log = std::fs::read_to_string(dir.path().join("state/logs").join(&r.id).join("run.log")).unwrap_or_default();
        (r.state.starts_with("running:") && log.contains("step-started")).then_some(r)
    })
    .await;
    let vm = run.vm_name.clone().expect("the run's VM");
    assert!(donor.domains().contains(&vm), "the run's VM runs on the donor");
    first.sigkill();
    assert!(donor.domains().contains(&vm), "the VM outlives a SIGKILLed daemon");
    assert!(!donor.qemu_pids().is_empty());
    let leftovers = [format!("{vm}-overlay.qcow2"), format!("{vm}-seed.iso")];
    for v in &leftovers {
        let made = donor.virsh(&["vol-create-as", POOL, v, "1M", "--format", if v.ends_with(".iso") { "raw" } else { "qcow2" }]);
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    }

    let _second = super::crash::Serve::start(&path, false);
    wait_until("the dead run's domain and volumes gone from the donor", Duration::from_secs(120), async || {
        let vols = donor.volumes();
        !donor.domains().contains(&vm) && leftovers.iter().all(|v| !vols.contains(v))
    })
    .await;
    wait_until("no QEMU left on the donor", Duration::from_secs(30), async || donor.qemu_pids().is_empty()).await;
    let vols = donor.volumes();
    assert_eq!(vols.iter().filter(|v| v.starts_with("paddock-tiny-")).count(), 2, "the image's volumes stay: {vols:?}");
    let row = store.run(&run.id).await.unwrap().unwrap();
    assert_eq!((row.state.as_str(), row.outcome.as_deref()), ("failed", Some("interrupted")), "{row:?}");
}
