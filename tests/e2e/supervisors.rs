//! The VM manager's owner and the run coordinator panic on purpose (their explicit test hooks)
//! while runs are under way: each is started again from the store, the run that was running
//! steps and the one that was booting both still succeed, a run triggered afterwards succeeds,
//! `/readyz` and `/metrics` report both restarts, and no VM of the daemon is left.

use std::time::Duration;

use paddock::runs::Trigger;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_that_panic_are_restarted_and_runs_still_finish_with_no_vm_left() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(
        dir.path(),
        "23410-23419",
        PER_VM,
        r#"
[[jobs]]
name = "steady"
images = ["tiny"]
[[jobs.steps]]
name = "wait-a-little"
type = "build"
command = "echo pdkt3-begun; sleep 12; echo pdkt3-ended"
timeout = "10m"
"#,
    );
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let prefix = format!("paddock-{}-", instance_id(dir.path()));
    let by = || Trigger::Manual { by: "alice".into() };

    // Run A is running its step; run B is placed and booting.
    let a = daemon.runs.trigger("steady", None, by()).await.unwrap().remove(0);
    wait_for_run(&daemon, &a, Duration::from_secs(300), |r| r.state.starts_with("running")).await;
    let b = daemon.runs.trigger("steady", None, by()).await.unwrap().remove(0);
    let booting = wait_for_run(&daemon, &b, Duration::from_secs(60), |r| r.vm_name.is_some() || finished(r)).await;
    assert!(!finished(&booting), "{booting:?}");

    daemon.vms.inject_owner_panic();
    let vm_health = daemon.vms.health();
    wait_until("the VM manager to be restarted", Duration::from_secs(60), async || vm_health.lock().unwrap().restarts == 1).await;
    // The new owner answers, and knows run A's VM (adopted: its run still uses it).
    let vm_a = daemon.store.run(&a).await.unwrap().unwrap().vm_name.unwrap();
    let snapshot = daemon.vms.snapshot().await.unwrap();
    assert!(snapshot.vms.iter().any(|v| v.name == vm_a), "run A's VM was not adopted: {:?}", snapshot.vms);

    daemon.runs.inject_coordinator_panic().await;
    let runs_health = daemon.runs.health();
    wait_until("the coordinator to be restarted", Duration::from_secs(60), async || runs_health.lock().unwrap().restarts == 1).await;
    let c = daemon.runs.trigger("steady", None, by()).await.expect("the restarted coordinator serves").remove(0);

    for id in [&a, &b, &c] {
        let row = wait_for_run(&daemon, id, Duration::from_secs(600), finished).await;
        assert_eq!((row.state.as_str(), row.outcome.as_deref()), ("done", Some("success")), "{row:?}");
        let log = std::fs::read_to_string(dir.path().join("state/logs").join(id).join("run.log")).unwrap();
        assert!(log.contains("pdkt3-ended"), "{log}");
    }
    // B's first VM went with the failed owner (reaped by the new one's pass); its launch was
    // sent again and booted another.
    let b_vm = daemon.store.run(&b).await.unwrap().unwrap().vm_name.unwrap();
    assert_ne!(Some(b_vm), booting.vm_name, "run B kept the VM that was booting when the owner failed");

    rustls::crypto::ring::default_provider().install_default().ok();
    let http = reqwest::Client::new();
    let base = format!("http://{}", daemon.addr);
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap().text().await.unwrap();
    assert!(ready.contains("vm-manager owner restarted 1 time(s); last failure: injected fault: VM manager owner"), "{ready}");
    assert!(ready.contains("coordinator owner restarted 1 time(s); last failure: injected fault: run coordinator"), "{ready}");
    let token = daemon.store.create_token("alice").await.unwrap().token;
    let m = http.get(format!("{base}/metrics")).bearer_auth(&token).send().await.unwrap().text().await.unwrap();
    for series in ["paddock_owner_restarts_total{owner=\"vm-manager\"} 1", "paddock_owner_restarts_total{owner=\"coordinator\"} 1"] {
        assert!(m.contains(series), "no `{series}` in:\n{m}");
    }

    // Nothing of the daemon's VMs is left: the booting one the restart reaped and every
    // finished run's VM are gone, domains, overlays and rows alike.
    wait_until("every VM to be gone", Duration::from_secs(120), async || {
        domains_named(&prefix).is_empty() && daemon.vms.snapshot().await.unwrap().vms.is_empty()
    })
    .await;
    assert!(overlays(dir.path()).is_empty(), "{:?}", overlays(dir.path()));
    daemon.stop().await.unwrap();
}
