//! The repo's `arches` job through the daemon: x86_64, aarch64 (TCG) and
//! big-endian s390x (TCG) guests, each reporting its machine and byte order.

use std::time::Duration;

use paddock::runs::Trigger;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arches_job_reports_machine_and_byte_order_per_platform() {
    for arch in ["x86_64", "aarch64", "s390x"] {
        let status = std::process::Command::new("bash").arg(repo().join("images/build-guest.sh")).arg(arch).status().unwrap();
        assert!(status.success(), "building the {arch} guest failed");
    }
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read_to_string(repo().join("fleet.toml"))
        .unwrap()
        .replacen("state_dir = \"state\"", &format!("state_dir = \"{}\"", dir.path().join("state").display()), 1)
        .replacen("ssh_ports = \"22200-22299\"", "ssh_ports = \"23170-23179\"", 1)
        .replace("images/out/", &format!("{}/images/out/", repo().display()));
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, src).unwrap();
    let daemon = start(paddock::config::load(&path).unwrap()).await;
    let _guard = DomainGuard::new(dir.path());
    let ids = daemon.runs.trigger("arches", None, Trigger::Manual { by: "alice".into() }).await.unwrap();
    assert_eq!(ids.len(), 3);
    let mut seen = Vec::new();
    for id in &ids {
        let row = wait_for_run(&daemon, id, Duration::from_secs(400), finished).await;
        assert_eq!(row.outcome.as_deref(), Some("success"), "{row:?}");
        let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
        let machine = doc["results"][0]["output"].as_str().unwrap().trim().to_string();
        let order = doc["results"][1]["output"].as_str().unwrap().trim().to_string();
        assert_eq!(doc["client_info"]["arch"].as_str().unwrap(), machine);
        seen.push((row.image.clone(), machine, order));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("tiny-aarch64".into(), "aarch64".into(), "little-endian".into()),
            ("tiny-s390x".into(), "s390x".into(), "big-endian".into()),
            ("tiny-x86_64".into(), "x86_64".into(), "little-endian".into()),
        ]
    );
    // The recorder's grid for the package has all three platforms.
    let grid = daemon.recorder.latest_per_tagset("arches").await.unwrap();
    assert_eq!(grid.len(), 3);
    daemon.stop().await.unwrap();
}
