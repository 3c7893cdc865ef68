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
use std::time::Duration;

use paddock::daemon::{Daemon, ServeOptions};
use serde_json::json;

#[path = "support/domains.rs"]
mod domains;
#[path = "support/warm_runs.rs"]
mod warm_runs;

use domains::Cleanup;
use warm_runs::median;

const MARK: &str = "paddock-warm-guest-first-byte";
const WATCH: warm_runs::Watch = warm_runs::Watch { mark: MARK, first_byte_within: Duration::from_secs(900), tag: "warm-guest" };

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

#[tokio::main]
async fn main() {
    let out = std::env::args().nth(1).expect("usage: warm_guest_bench OUT.json");
    let n: usize = std::env::var("BENCH_WARM_N").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let daemon =
        Daemon::start(fleet(dir.path(), repo), ServeOptions { listen: Some("127.0.0.1:0".parse().unwrap()), demo: false }).await.unwrap();
    let log_dir = dir.path().join("state/logs");
    let _cleanup = Cleanup::for_state(&dir.path().join("state"));
    // Each warm image's first run makes its template; not counted. The pool then fills.
    let (made, made_t) = WATCH.one(&daemon, &log_dir, "tiny-warm").await;
    let (pool_made, _) = WATCH.one(&daemon, &log_dir, "tiny-pool").await;
    let (mut plain, mut cold, mut warm, mut pool) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut cold_b2f, mut warm_b2f, mut pool_b2f, mut warm_boot) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut starts, mut pool_starts) = (Vec::new(), Vec::new());
    let f = |t: &serde_json::Value, k: &str| t[k].as_f64().unwrap_or(f64::NAN);
    for _ in 0..n {
        let (p, _) = WATCH.one(&daemon, &log_dir, "tiny-plain").await;
        let (c, ct) = WATCH.one(&daemon, &log_dir, "tiny-cold").await;
        let (w, wt) = WATCH.one(&daemon, &log_dir, "tiny-warm").await;
        warm_runs::wait_pool_idle(&daemon, "tiny-pool", Duration::from_secs(600)).await;
        let (q, qt) = WATCH.one(&daemon, &log_dir, "tiny-pool").await;
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
