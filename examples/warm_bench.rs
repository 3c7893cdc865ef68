//! Warm-start figures (issue 18) for `bench/figures/warm.sh`: the debian-12 image booted cold
//! against clones restored from its template and clones taken from a ready pool
//! (`min_ready = 1`), in one run, interleaved so that machine load hits all alike; trigger → the
//! step's first byte and SSH banner → first byte (one handshake); then `BENCH_WARM_PAR` runs
//! at once, cold against warm.
//!
//!   warm_bench OUT.json      (environment: BENCH_WARM_N, default 3; BENCH_WARM_PAR, default 4)
//!
//! The bundled guest's rows come from `examples/warm_guest_bench.rs` (its warm-capable variant,
//! `images/out/x86_64-warm`; the plain one's cloud kernel has no VMGENID driver and is refused).

use std::path::Path;
use std::time::{Duration, Instant};

use paddock::daemon::{Daemon, ServeOptions};
use paddock::runs::Trigger;
use serde_json::json;

#[path = "support/domains.rs"]
mod domains;
#[path = "support/warm_runs.rs"]
mod warm_runs;

use domains::Cleanup;
use warm_runs::median;

const MARK: &str = "paddock-warm-first-byte";
const WATCH: warm_runs::Watch = warm_runs::Watch { mark: MARK, first_byte_within: Duration::from_secs(1200), tag: "warm" };

fn fleet(dir: &Path, disk: &Path) -> paddock::config::Fleet {
    let image = |name: &str, start: &str, extra: &str| {
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
{extra}
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
max_vms = 5
memory_mib = 4096
vcpus = 5
{cold}{warm}{pool}"#,
        state = dir.join("state").display(),
        cold = image("debian-12", "cold", ""),
        warm = image("debian-12-warm", "warm", ""),
        pool = image("debian-12-pool", "warm", "min_ready = 1"),
    );
    let path = dir.join("fleet.toml");
    std::fs::write(&path, &src).unwrap();
    paddock::config::load(&path).unwrap_or_else(|e| panic!("warm bench fleet invalid:\n{e}"))
}

/// `k` runs of `job` triggered at once; each one's trigger → first byte.
async fn at_once(daemon: &Daemon, log_dir: &Path, job: &str, k: usize) -> Vec<f64> {
    let t = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..k {
        ids.push(daemon.runs.trigger(job, None, Trigger::Manual { by: "bench".into() }).await.unwrap().remove(0));
    }
    let runs = ids.into_iter().map(|id| WATCH.watch(daemon, log_dir, job, t, id));
    futures_join(runs).await.into_iter().map(|(f, _)| f).collect()
}

async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let pinned: Vec<_> = fs.map(Box::pin).collect();
    // Polled together: each future only sleeps and reads files, so a simple join is enough.
    let mut pending: Vec<_> = pinned.into_iter().map(Some).collect();
    let mut done: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        done[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
    out.extend(done.into_iter().map(|v| v.expect("joined")));
    out
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
    let _cleanup = Cleanup::for_state(&dir.path().join("state"));
    // The template is made by the first warm run; not counted.
    let (made, _) = WATCH.one(&daemon, &log_dir, "debian-12-warm").await;
    // So is the pool image's first run (its template); its pool then fills.
    let (pool_made, _) = WATCH.one(&daemon, &log_dir, "debian-12-pool").await;
    let (mut cold, mut warm, mut cold_b2f, mut warm_b2f) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut pool, mut starts, mut pool_starts) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let (c, ct) = WATCH.one(&daemon, &log_dir, "debian-12").await;
        let (w, wt) = WATCH.one(&daemon, &log_dir, "debian-12-warm").await;
        warm_runs::wait_pool_idle(&daemon, "debian-12-pool", Duration::from_secs(900)).await;
        let (p, pt) = WATCH.one(&daemon, &log_dir, "debian-12-pool").await;
        cold.push(c);
        warm.push(w);
        pool.push(p);
        cold_b2f.push(ct["banner_to_first_byte_s"].as_f64().unwrap_or(f64::NAN));
        warm_b2f.push(wt["banner_to_first_byte_s"].as_f64().unwrap_or(f64::NAN));
        starts.push(wt["start"].clone());
        pool_starts.push(pt["start"].clone());
    }
    let k: usize = std::env::var("BENCH_WARM_PAR").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
    let cold_k = at_once(&daemon, &log_dir, "debian-12", k).await;
    let warm_k = at_once(&daemon, &log_dir, "debian-12-warm", k).await;
    daemon.stop().await.unwrap();
    let row = |figure: &str, paddock: Option<f64>, baseline: Option<f64>, is: &str| json!({ "figure": figure, "unit": "s", "paddock": paddock, "baseline": baseline, "baseline_is": is });
    let cold_m = median(cold.clone());
    let doc = json!({
        "rows": [
            row("debian-12 warm first byte (median)", median(warm.clone()), cold_m, "cold boot of debian-12, same run"),
            row("debian-12 cold: SSH banner -> first byte", median(cold_b2f.clone()), None, "-"),
            row("debian-12 warm: SSH banner -> first byte", median(warm_b2f.clone()), None, "-"),
            row("debian-12 ready-pool first byte (median)", median(pool.clone()), cold_m, "cold boot of debian-12, same run"),
            row(&format!("debian-12 {k} warm at once first byte (median)"), median(warm_k.clone()), median(cold_k.clone()), &format!("{k} cold boots of debian-12 at once, same run")),
        ],
        "pool_first_byte_s": pool, "pool_starts": pool_starts, "pool_template_run_first_byte_s": pool_made,
        "cold_at_once_first_byte_s": cold_k, "warm_at_once_first_byte_s": warm_k,
        "cold_first_byte_s": cold, "warm_first_byte_s": warm,
        "cold_banner_to_first_byte_s": cold_b2f, "warm_banner_to_first_byte_s": warm_b2f,
        "template_run_first_byte_s": made, "warm_starts": starts,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
}
