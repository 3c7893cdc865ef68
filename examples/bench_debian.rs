//! The `debian-12` rows of `make bench` (run by `bench/figures/debian.sh`): trigger → first
//! byte of a step for the real Debian 12 image through the daemon (cold boot from its own
//! disk, identity from a per-VM cloud-init seed), against `bench/baseline-debian.sh` (the
//! same domain shape, the same kind of seed, an SSH poll and `ssh guest cmd`), the two sides
//! interleaved so both see the same machine load.
//!
//!   bench_debian OUT.json        BENCH_DEBIAN_N samples per side (default 2)
//!
//! Writes `{"rows": [...], "samples": {...}}` (see `bench/figures/README.md`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paddock::daemon::{Daemon, ServeOptions};
use paddock::runs::Trigger;
use serde_json::json;

/// Host ports of this figure (the guests' SSH forwards): paddock's range and the baseline's.
const PADDOCK_PORTS: &str = "26100-26109";
const BASELINE_PORT: u16 = 26120;
const MARK: &str = "paddock-bench-first-byte";
/// Memory of the guest on both sides.
const MEMORY_MIB: u32 = 1024;
/// A cold debian-12 boot under TCG takes 60-130 s alone, minutes under load.
const LIMIT: Duration = Duration::from_secs(900);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn fleet(dir: &Path) -> paddock::config::Fleet {
    let disk = repo().join("images/out/debian-12/disk.qcow2");
    assert!(disk.exists(), "{} is missing: run images/build-debian.sh", disk.display());
    let src = format!(
        r#"
version = 1
[daemon]
listen = "127.0.0.1:0"
state_dir = "{state}"
ssh_ports = "{PADDOCK_PORTS}"
launch_retries = 1

[[hosts]]
name = "local"
uri = "qemu:///system"
accelerator = "tcg"
address = "127.0.0.1"
max_vms = 2
memory_mib = 4096
vcpus = 2

[[images]]
name = "debian-12"
os = "linux"
arch = "x86_64"
disk = "{disk}"
memory_mib = {MEMORY_MIB}
vcpus = 1
user = "root"
identity = "cloud-init"
boot_timeout = "14m"

[[users]]
name = "bench"
role = "maintainer"

[[jobs]]
name = "first-byte"
images = ["debian-12"]
[[jobs.steps]]
name = "hello"
type = "build"
command = "echo {MARK}"
"#,
        state = dir.join("state").display(),
        disk = disk.display(),
    );
    let path = dir.join("fleet.toml");
    std::fs::write(&path, &src).unwrap();
    paddock::config::load(&path).unwrap_or_else(|e| panic!("bench fleet invalid:\n{e}"))
}

/// One paddock sample: (trigger → first step byte in run.log, trigger → step running).
async fn paddock_once(daemon: &Daemon, log_dir: &Path) -> (f64, f64) {
    let t = Instant::now();
    let id = daemon.runs.trigger("first-byte", None, Trigger::Manual { by: "bench".into() }).await.unwrap().remove(0);
    let log = log_dir.join(&id).join("run.log");
    let mut running = None;
    let first = loop {
        if std::fs::read(&log).is_ok_and(|b| b.windows(MARK.len()).any(|w| w == MARK.as_bytes())) {
            break t.elapsed().as_secs_f64();
        }
        if running.is_none() {
            let row = daemon.store.run(&id).await.unwrap().expect("run exists");
            if row.state.starts_with("running") {
                running = Some(t.elapsed().as_secs_f64());
            }
            assert!(!matches!(row.state.as_str(), "failed" | "cancelled"), "bench run failed: {row:?}");
        }
        assert!(t.elapsed() < LIMIT, "no step output in {}", log.display());
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    loop {
        let row = daemon.store.run(&id).await.unwrap().expect("run exists");
        if matches!(row.state.as_str(), "done" | "failed" | "cancelled" | "held") {
            assert_eq!(row.outcome.as_deref(), Some("success"), "bench run failed: {row:?}");
            break;
        }
        assert!(t.elapsed() < LIMIT, "run {id} stuck in {}", row.state);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (first, running.unwrap_or(first))
}

/// One baseline sample: spawn → first byte on the script's stdout, plus its key=value lines.
fn baseline_once() -> (f64, std::collections::BTreeMap<String, String>) {
    let err_path = std::env::temp_dir().join(format!("pdkg2-bench-debian-{BASELINE_PORT}.err"));
    let err = std::fs::File::create(&err_path).unwrap();
    let t = Instant::now();
    let mut child = Command::new("bash")
        .arg(repo().join("bench/baseline-debian.sh"))
        .args(["--timeout", &LIMIT.as_secs().to_string(), "--memory", &MEMORY_MIB.to_string(), "--cloud-init-wait"])
        .arg(BASELINE_PORT.to_string())
        .arg(format!("echo {MARK}"))
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("run bench/baseline-debian.sh");
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 4096];
    let mut first = None;
    let mut all = Vec::new();
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| t.elapsed().as_secs_f64());
        all.extend_from_slice(&buf[..n]);
    }
    let status = child.wait().unwrap();
    let progress = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&err_path);
    assert!(status.success(), "bench/baseline-debian.sh failed ({status}):\n{progress}");
    let keys =
        String::from_utf8_lossy(&all).lines().filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect();
    (first.expect("the baseline printed nothing"), keys)
}

#[tokio::main]
async fn main() {
    let out = PathBuf::from(std::env::args().nth(1).expect("usage: bench_debian OUT.json"));
    let n: usize = std::env::var("BENCH_DEBIAN_N").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let dir = tempfile::Builder::new().prefix("pdkg2-bench-debian-").tempdir().unwrap();
    let daemon = Daemon::start(fleet(dir.path()), ServeOptions { listen: Some("127.0.0.1:0".parse().unwrap()), demo: false })
        .await
        .expect("daemon starts");
    let log_dir = dir.path().join("state/logs");
    let (mut p_first, mut p_ssh, mut b_first, mut b_ssh, mut b_ci) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let (first, running) = paddock_once(&daemon, &log_dir).await;
        eprintln!("[bench debian] {i}: paddock first byte {first:.1}s (step running at {running:.1}s)");
        p_first.push(first);
        p_ssh.push(running);
        let (first, keys) = tokio::task::spawn_blocking(baseline_once).await.unwrap();
        let num = |k: &str| keys.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
        eprintln!(
            "[bench debian] {i}: baseline first byte {first:.1}s (ssh at {:.1}s, cloud-init done at {:.1}s: {})",
            num("boot_to_ssh_s"),
            num("cloud_init_done_s"),
            keys.get("cloud_init_status").map(String::as_str).unwrap_or("?")
        );
        b_first.push(first);
        b_ssh.push(num("boot_to_ssh_s"));
        b_ci.push(num("cloud_init_done_s"));
    }
    daemon.stop().await.unwrap();
    let doc = json!({
        "rows": [
            {"figure": "debian-12 cold first byte (median)", "unit": "s", "paddock": median(p_first.clone()),
             "baseline": median(b_first.clone()), "baseline_is": "bench/baseline-debian.sh"},
            {"figure": "debian-12 boot to SSH (median)", "unit": "s", "paddock": median(p_ssh.clone()),
             "baseline": median(b_ssh.clone()), "baseline_is": "baseline-debian.sh boot_to_ssh_s"},
            {"figure": "debian-12 cloud-init done (median)", "unit": "s", "paddock": null,
             "baseline": median(b_ci.clone()), "baseline_is": "baseline-debian.sh cloud_init_done_s"},
        ],
        "samples": {
            "paddock_first_byte_s": p_first, "paddock_step_running_s": p_ssh,
            "baseline_first_byte_s": b_first, "baseline_boot_to_ssh_s": b_ssh, "baseline_cloud_init_done_s": b_ci,
        },
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("{}", serde_json::to_string_pretty(&doc["rows"]).unwrap());
}
