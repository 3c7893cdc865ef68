//! Warm-start figures (issue 18) for `bench/figures/warm.sh`: the debian-12 image booted cold
//! against clones restored from its template, in one run, interleaved so that machine load hits
//! both alike; trigger → the step's first byte and SSH banner → first byte (one handshake).
//!
//!   warm_bench OUT.json      (environment: BENCH_WARM_N, default 3)
//!
//! The bundled initramfs guest has no warm rows: its cloud kernel has no VMGENID driver and it
//! has no guest agent, so its clones could not be reseeded before their first SSH handshake,
//! and `start = "warm"` is refused for it.

use std::path::Path;
use std::time::{Duration, Instant};

use paddock::daemon::{Daemon, ServeOptions};
use paddock::runs::Trigger;
use serde_json::json;

const MARK: &str = "paddock-warm-first-byte";

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn fleet(dir: &Path, disk: &Path) -> paddock::config::Fleet {
    let image = |name: &str, start: &str| {
        format!(
            r#"
[[images]]
name = "{name}"
os = "linux"
arch = "x86_64"
disk = "{disk}"
memory_mib = 768
vcpus = 1
user = "root"
identity = "cloud-init"
boot_timeout = "12m"
start = "{start}"

[[jobs]]
name = "{name}"
images = ["{name}"]
[[jobs.steps]]
name = "mark"
type = "test"
command = "echo {MARK}"
"#,
            disk = disk.display()
        )
    };
    let src = format!(
        r#"
version = 1
[daemon]
listen = "127.0.0.1:0"
state_dir = "{state}"
ssh_ports = "26900-26919"

[[hosts]]
name = "local"
uri = "qemu:///system"
accelerator = "tcg"
address = "127.0.0.1"
max_vms = 2
memory_mib = 4096
vcpus = 4
{cold}{warm}"#,
        state = dir.join("state").display(),
        cold = image("debian-12", "cold"),
        warm = image("debian-12-warm", "warm"),
    );
    let path = dir.join("fleet.toml");
    std::fs::write(&path, &src).unwrap();
    paddock::config::load(&path).unwrap_or_else(|e| panic!("warm bench fleet invalid:\n{e}"))
}

/// One run of `job`: trigger → first byte of the marker in its log, and the result's timings.
async fn one(daemon: &Daemon, log_dir: &Path, job: &str) -> (f64, serde_json::Value) {
    let t = Instant::now();
    let id = daemon.runs.trigger(job, None, Trigger::Manual { by: "bench".into() }).await.unwrap().remove(0);
    let log = log_dir.join(&id).join("run.log");
    let first = loop {
        if std::fs::read(&log).is_ok_and(|b| b.windows(MARK.len()).any(|w| w == MARK.as_bytes())) {
            break t.elapsed().as_secs_f64();
        }
        assert!(t.elapsed() < Duration::from_secs(1200), "no step output in {}", log.display());
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let row = loop {
        let row = daemon.store.run(&id).await.unwrap().expect("run exists");
        if matches!(row.state.as_str(), "done" | "failed" | "cancelled" | "held") {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row.outcome.as_deref(), Some("success"), "bench run failed: {row:?}");
    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    let timings = doc["extras"]["timings"].clone();
    eprintln!("[warm] {job}: first byte {first:.2}s, {timings}");
    (first, timings)
}

#[tokio::main]
async fn main() {
    let out = std::env::args().nth(1).expect("usage: warm_bench OUT.json");
    let n: usize = std::env::var("BENCH_WARM_N").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let disk = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/out/debian-12/disk.qcow2");
    let dir = tempfile::tempdir().unwrap();
    let daemon =
        Daemon::start(fleet(dir.path(), &disk), ServeOptions { listen: Some("127.0.0.1:0".parse().unwrap()), demo: false }).await.unwrap();
    let log_dir = dir.path().join("state/logs");
    // The template is made by the first warm run; not counted.
    let (made, _) = one(&daemon, &log_dir, "debian-12-warm").await;
    let (mut cold, mut warm, mut cold_b2f, mut warm_b2f) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut starts = Vec::new();
    for _ in 0..n {
        let (c, ct) = one(&daemon, &log_dir, "debian-12").await;
        let (w, wt) = one(&daemon, &log_dir, "debian-12-warm").await;
        cold.push(c);
        warm.push(w);
        cold_b2f.push(ct["banner_to_first_byte_s"].as_f64().unwrap_or(f64::NAN));
        warm_b2f.push(wt["banner_to_first_byte_s"].as_f64().unwrap_or(f64::NAN));
        starts.push(wt["start"].clone());
    }
    daemon.stop().await.unwrap();
    let row = |figure: &str, paddock: Option<f64>, baseline: Option<f64>, is: &str| json!({ "figure": figure, "unit": "s", "paddock": paddock, "baseline": baseline, "baseline_is": is });
    let cold_m = median(cold.clone());
    let doc = json!({
        "rows": [
            row("debian-12 warm first byte (median)", median(warm.clone()), cold_m, "cold boot of debian-12, same run"),
            row("debian-12 cold: SSH banner -> first byte", median(cold_b2f.clone()), None, "-"),
            row("debian-12 warm: SSH banner -> first byte", median(warm_b2f.clone()), None, "-"),
        ],
        "cold_first_byte_s": cold, "warm_first_byte_s": warm,
        "cold_banner_to_first_byte_s": cold_b2f, "warm_banner_to_first_byte_s": warm_b2f,
        "template_run_first_byte_s": made, "warm_starts": starts,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
}
