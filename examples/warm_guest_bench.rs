//! Warm-start figures of the bundled guest (issue 18) for `bench/figures/warm_guest.sh`: its
//! warm-capable variant (`images/out/x86_64-warm`, `guest_agent = true`) booted cold against
//! clones restored from its template and clones taken from a ready pool (`min_ready = 1`), in
//! one daemon and one run, interleaved so that machine load hits all alike; trigger → the
//! step's first byte, and SSH banner → first byte. The plain bundled guest
//! (`images/out/x86_64`, cloud kernel) boots cold beside them for scale: what CI's cold boots
//! cost, which the generic kernel of the warm variant makes slower.
//!
//!   warm_guest_bench OUT.json      (environment: BENCH_WARM_N, default 3)

use std::path::Path;
use std::time::{Duration, Instant};

use paddock::daemon::{Daemon, ServeOptions};
use paddock::runs::Trigger;
use serde_json::json;

const MARK: &str = "paddock-warm-guest-first-byte";

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

fn fleet(dir: &Path, repo: &Path) -> paddock::config::Fleet {
    let image = |name: &str, flavour: &str, extra: &str| {
        let out = repo.join("images/out").join(flavour);
        format!(
            r#"
[[images]]
name = "{name}"
os = "linux"
arch = "x86_64"
kernel = "{out}/vmlinuz"
initrd = "{out}/initrd.img"
cmdline = "console=ttyS0 quiet no_timer_check panic=1"
memory_mib = 256
vcpus = 1
user = "root"
identity = "cmdline"
boot_timeout = "5m"
{extra}
[[jobs]]
name = "{name}"
images = ["{name}"]
[[jobs.steps]]
name = "mark"
type = "test"
command = "echo {MARK}"
"#,
            out = out.display()
        )
    };
    let src = format!(
        r#"
version = 1
[daemon]
listen = "127.0.0.1:0"
state_dir = "{state}"
ssh_ports = "24620-24639"

[[hosts]]
name = "local"
uri = "qemu:///system"
accelerator = "tcg"
address = "127.0.0.1"
max_vms = 5
memory_mib = 4096
vcpus = 5
{plain}{cold}{warm}{pool}"#,
        state = dir.join("state").display(),
        plain = image("tiny-plain", "x86_64", ""),
        cold = image("tiny-cold", "x86_64-warm", "guest_agent = true\n"),
        warm = image("tiny-warm", "x86_64-warm", "guest_agent = true\nstart = \"warm\"\n"),
        pool = image("tiny-pool", "x86_64-warm", "guest_agent = true\nstart = \"warm\"\nmin_ready = 1\n"),
    );
    let path = dir.join("fleet.toml");
    std::fs::write(&path, &src).unwrap();
    paddock::config::load(&path).unwrap_or_else(|e| panic!("warm guest bench fleet invalid:\n{e}"))
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
        assert!(t.elapsed() < Duration::from_secs(900), "no step output in {}", log.display());
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
    eprintln!("[warm-guest] {job}: first byte {first:.2}s, {timings}");
    (first, timings)
}

/// Until the pool image's ready pool holds an idle clone.
async fn wait_pool_idle(daemon: &Daemon) {
    let t = Instant::now();
    loop {
        let rows = daemon.store.vms().await.unwrap();
        if rows.iter().any(|v| v.image == "tiny-pool" && v.run_id.as_deref() == Some(paddock::vm::READY_POOL_RUN) && v.state == "ready") {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(600), "the ready pool did not refill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes every domain of this bench's paddock instance when the bench ends, however it ends:
/// `Daemon::stop` leaves VMs (idle pool clones too) for the next start to reap, and this
/// bench's state dir is a temporary one no later start will see.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        use std::process::{Command, Stdio};
        let Ok(out) = Command::new("virsh").args(["-c", "qemu:///system", "list", "--all", "--name"]).output() else { return };
        for name in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with(&self.0)) {
            for verb in ["destroy", "undefine"] {
                let _ =
                    Command::new("virsh").args(["-c", "qemu:///system", verb, name]).stderr(Stdio::null()).stdout(Stdio::null()).status();
            }
        }
    }
}

fn instance_prefix(state: &Path) -> String {
    format!("paddock-{}-", std::fs::read_to_string(state.join("instance-id")).unwrap_or_default().trim())
}

#[tokio::main]
async fn main() {
    let out = std::env::args().nth(1).expect("usage: warm_guest_bench OUT.json");
    let n: usize = std::env::var("BENCH_WARM_N").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let daemon =
        Daemon::start(fleet(dir.path(), repo), ServeOptions { listen: Some("127.0.0.1:0".parse().unwrap()), demo: false }).await.unwrap();
    let log_dir = dir.path().join("state/logs");
    let _cleanup = Cleanup(instance_prefix(&dir.path().join("state")));
    // Each warm image's first run makes its template; not counted. The pool then fills.
    let (made, made_t) = one(&daemon, &log_dir, "tiny-warm").await;
    let (pool_made, _) = one(&daemon, &log_dir, "tiny-pool").await;
    let (mut plain, mut cold, mut warm, mut pool) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut cold_b2f, mut warm_b2f, mut pool_b2f, mut warm_boot) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut starts, mut pool_starts) = (Vec::new(), Vec::new());
    let f = |t: &serde_json::Value, k: &str| t[k].as_f64().unwrap_or(f64::NAN);
    for _ in 0..n {
        let (p, _) = one(&daemon, &log_dir, "tiny-plain").await;
        let (c, ct) = one(&daemon, &log_dir, "tiny-cold").await;
        let (w, wt) = one(&daemon, &log_dir, "tiny-warm").await;
        wait_pool_idle(&daemon).await;
        let (q, qt) = one(&daemon, &log_dir, "tiny-pool").await;
        plain.push(p);
        cold.push(c);
        warm.push(w);
        pool.push(q);
        cold_b2f.push(f(&ct, "banner_to_first_byte_s"));
        warm_b2f.push(f(&wt, "banner_to_first_byte_s"));
        pool_b2f.push(f(&qt, "banner_to_first_byte_s"));
        warm_boot.push(f(&wt, "boot_s"));
        starts.push(wt["start"].clone());
        pool_starts.push(qt["start"].clone());
    }
    daemon.stop().await.unwrap();
    let row = |figure: &str, paddock: Option<f64>, baseline: Option<f64>, is: &str| json!({ "figure": figure, "unit": "s", "paddock": paddock, "baseline": baseline, "baseline_is": is });
    let cold_m = median(cold.clone());
    let same = "cold boot of x86_64-warm, same run";
    let doc = json!({
        "rows": [
            row("x86_64 warm first byte (median)", median(warm.clone()), cold_m, same),
            row("x86_64 ready-pool first byte (median)", median(pool.clone()), cold_m, same),
            row("x86_64 warm: restore -> ready (median)", median(warm_boot.clone()), None, "-"),
            row("x86_64 warm: SSH banner -> first byte", median(warm_b2f.clone()), median(cold_b2f.clone()), "the same, cold boot"),
            row("x86_64 cold first byte, cloud kernel (median)", median(plain.clone()), cold_m, "generic kernel (x86_64-warm), same run"),
        ],
        "plain_cold_first_byte_s": plain, "cold_first_byte_s": cold, "warm_first_byte_s": warm, "pool_first_byte_s": pool,
        "cold_banner_to_first_byte_s": cold_b2f, "warm_banner_to_first_byte_s": warm_b2f, "pool_banner_to_first_byte_s": pool_b2f,
        "warm_restore_to_ready_s": warm_boot, "warm_starts": starts, "pool_starts": pool_starts,
        "template_run_first_byte_s": made, "template_run_timings": made_t, "pool_template_run_first_byte_s": pool_made,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
}
