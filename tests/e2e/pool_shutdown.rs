//! A clean stop leaks nothing of the ready pool: `paddock serve` (the real binary) with the
//! warm-capable bundled guest and `min_ready = 1` fills its pool with an idle clone, gets
//! SIGTERM, exits 0, and leaves no domain, console, overlay or store row of that clone; the
//! template stays for the next start. Ports 26600-26619.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;
use support::wait_with_deadline;

const JOB: &str = r#"
[[jobs]]
name = "hello"
images = ["tiny"]
maintainers = ["alice"]
[[jobs.steps]]
name = "hello"
type = "test"
command = "echo hello"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tears_down_the_idle_ready_pool_clone_and_exits_zero() {
    let out = support::guest::ensure_warm_guest_image();
    let dir = tempfile::Builder::new().prefix("pdkl6-").tempdir().unwrap();
    let src = super::warm_guest::warm_guest_fleet_src(dir.path(), &out, "26600-26619", JOB).replacen(
        "[daemon]\n",
        "[daemon]\npublic_reads = true\n",
        1,
    );
    assert!(src.contains("min_ready = 1") && src.contains("public_reads = true"), "{src}");
    load_fleet(dir.path(), &src);
    let config = dir.path().join("fleet.toml");

    // The demo run makes the template and shows how the image's VMs are logged into; then the
    // pool fills.
    let mut child = Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(["serve", "--demo", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("PADDOCK_LOG", "paddock=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start paddock serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("paddock listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string();
    // The daemon's log, kept for the failure messages below.
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(l + "\n"));
        }
    });
    let _guard = DomainGuard::new(dir.path());
    let prefix = format!("paddock-{}-", &instance_id(dir.path())[..8]);
    rustls::crypto::ring::default_provider().install_default().ok();
    let http = reqwest::Client::new();

    // The demo run is over, its VM gone, and the metrics show the idle clone: the clone is
    // then the instance's one domain.
    let clone = wait_for("an idle ready-pool clone in paddock_ready_clones", Duration::from_secs(600), async || {
        let metrics = http.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
        let shown = metrics.lines().any(|l| l.starts_with("paddock_ready_clones{") && l.contains("image=\"tiny\"") && l.ends_with(" 1"));
        let runs: serde_json::Value = http.get(format!("{base}/api/v1/runs")).send().await.ok()?.json().await.ok()?;
        let done = runs.as_array().is_some_and(|r| r.len() == 1 && r[0]["state"] == "done");
        let vms: serde_json::Value = http.get(format!("{base}/api/v1/vms")).send().await.ok()?.json().await.ok()?;
        let vms = vms.as_array()?;
        let idle = vms.iter().find(|v| v["run_id"] == paddock::vm::READY_POOL_RUN && v["state"] == "ready")?;
        (shown && done && vms.len() == 1).then(|| idle["name"].as_str().unwrap().to_string())
    })
    .await;
    assert_eq!(domains_named(&prefix), std::slice::from_ref(&clone), "the clone is the instance's one domain");
    let state = dir.path().join("state");
    assert!(state.join("consoles").join(format!("{clone}.log")).exists(), "the clone's console file");
    let templates = paddock::vm::template::list(&state);
    assert_eq!(templates.len(), 1, "{templates:?}");

    // SIGTERM: the daemon tears the clone down and exits 0.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_with_deadline(&mut child, Duration::from_secs(150));
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("paddock serve did not exit within 150 s of SIGTERM:\n{}", log.lock().unwrap())
    });
    assert!(status.success(), "paddock serve exited with {status}:\n{}", log.lock().unwrap());

    // Nothing of the clone is left: no domain (running or defined), console, overlay or row.
    let all = support::virsh::virsh(&["list", "--all", "--name"]);
    let listed = String::from_utf8_lossy(&all.stdout);
    assert!(!listed.lines().any(|d| d.trim().starts_with(&prefix)), "a domain of the instance stays: {listed}");
    assert!(!state.join("consoles").join(format!("{clone}.log")).exists(), "the clone's console file stays");
    assert!(overlays(dir.path()).is_empty(), "{:?}", overlays(dir.path()));
    let store = paddock::store::Store::open(&state.join("paddock.db")).await.unwrap();
    let rows = store.vms().await.unwrap();
    assert!(rows.is_empty(), "VM rows stay: {rows:?}");
    let text = log.lock().unwrap().clone();
    assert!(
        text.contains("ready-pool clone torn down: the daemon stops") && text.contains("ready-pool clones removed at shutdown"),
        "{text}"
    );
    // The template is not the clone's: it stays for the next start.
    assert_eq!(paddock::vm::template::list(&state), templates);
}
