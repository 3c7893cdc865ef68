//! The side-by-side benchmark behind `make bench`: paddock against the hand-made baselines
//! (`bench/baseline.sh`, plain `ssh`, bare libvirt calls), printed as one table with the rows
//! of `bench/figures/*.sh` (the recorder's among them) and written as JSON.
//!
//!   bench_compare all --json OUT [FIGURES.json...]   every VM figure plus the table
//!   bench_compare control N                          (child) N VMs on test:///default
//!
//! Run through `bash bench/run.sh`, which builds the release binaries once and passes the
//! figure scripts' JSON files in. Environment: BENCH_COLD_N (5), BENCH_PARALLEL (4),
//! BENCH_LOG_BYTES (200000000), BENCH_CONTROL_N (1000).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paddock::config::Fleet;
use paddock::daemon::{Daemon, ServeOptions};
use paddock::runs::Trigger;
use serde_json::json;

#[path = "support/domains.rs"]
mod domains;

const PADDOCK_PORTS: &str = "23500-23519";
const BASELINE_PORT: u16 = 23600;
/// What every first-byte step prints, so both sides wait for the same bytes.
const MARK: &str = "paddock-bench-first-byte";
/// Boot attempts per run on both sides, each with a 90 s boot deadline.
const ATTEMPTS: u32 = 3;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The bench fleet: one local TCG host, the bundled image, and three jobs.
fn fleet(dir: &Path, log_bytes: u64) -> Fleet {
    let out = repo().join("images/out/x86_64");
    let src = format!(
        r#"
version = 1
[daemon]
listen = "127.0.0.1:0"
state_dir = "{state}"
ssh_ports = "{PADDOCK_PORTS}"
# Under load a TCG guest kernel now and then panics at boot ("IO-APIC + timer doesn't
# work"): paddock retries; the baseline side gets the same number of attempts.
launch_retries = {ATTEMPTS}

[[hosts]]
name = "local"
uri = "qemu:///system"
accelerator = "tcg"
address = "127.0.0.1"
max_vms = 4
memory_mib = 4096
vcpus = 4

[[images]]
name = "tiny"
os = "linux"
arch = "x86_64"
kernel = "{out}/vmlinuz"
initrd = "{out}/initrd.img"
cmdline = "console=ttyS0 quiet"
memory_mib = 256
vcpus = 1
user = "root"
boot_timeout = "90s"
identity = "cmdline"              # a host key made and pinned by paddock for each VM, as baseline.sh does

[[users]]
name = "bench"
role = "maintainer"

[[jobs]]
name = "first-byte"
images = ["tiny"]
[[jobs.steps]]
name = "hello"
type = "build"
command = "echo {MARK}"

[[jobs]]
name = "flood"
images = ["tiny"]
[[jobs.steps]]
name = "flood"
type = "build"
command = "head -c {log_bytes} /dev/zero"
timeout = "10m"
"#,
        state = dir.join("state").display(),
        out = out.display(),
    );
    let path = dir.join("fleet.toml");
    std::fs::write(&path, &src).unwrap();
    paddock::config::load(&path).unwrap_or_else(|e| panic!("bench fleet invalid:\n{e}"))
}

fn manual() -> Trigger {
    Trigger::Manual { by: "bench".into() }
}

async fn wait_finished(daemon: &Daemon, id: &str) -> paddock::store::RunRow {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let row = daemon.store.run(id).await.unwrap().expect("run exists");
        if matches!(row.state.as_str(), "done" | "failed" | "cancelled" | "held") {
            assert_eq!(row.outcome.as_deref(), Some("success"), "bench run failed: {row:?}");
            return row;
        }
        assert!(Instant::now() < deadline, "run {id} stuck in {}", row.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Trigger → first byte of the step's output in the run's log, for `n` cold boots in a row.
async fn paddock_first_byte(daemon: &Daemon, log_dir: &Path, n: u64) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let id = daemon.runs.trigger("first-byte", None, manual()).await.unwrap().remove(0);
        let log = log_dir.join(&id).join("run.log");
        // Polling every 2 ms: the resolution is far below a boot's seconds.
        let first = loop {
            if std::fs::read(&log).is_ok_and(|b| b.windows(MARK.len()).any(|w| w == MARK.as_bytes())) {
                break t.elapsed();
            }
            assert!(t.elapsed() < Duration::from_secs(300), "no step output in {}", log.display());
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        wait_finished(daemon, &id).await;
        eprintln!("[bench] paddock first byte {:.2}s", first.as_secs_f64());
        out.push(first.as_secs_f64());
    }
    out
}

/// `k` runs at once; returns runs per minute.
async fn paddock_parallel(daemon: &Daemon, k: u64) -> f64 {
    let t = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..k {
        ids.extend(daemon.runs.trigger("first-byte", None, manual()).await.unwrap());
    }
    for id in &ids {
        wait_finished(daemon, id).await;
    }
    let rate = k as f64 * 60.0 / t.elapsed().as_secs_f64();
    eprintln!("[bench] paddock {k} at once: {:.1}s", t.elapsed().as_secs_f64());
    rate
}

/// MB/s of a step printing `bytes` through the executor (SSH exec, log files, live channel).
async fn paddock_throughput(daemon: &Daemon, log_dir: &Path, bytes: u64) -> f64 {
    let id = daemon.runs.trigger("flood", None, manual()).await.unwrap().remove(0);
    let row = wait_finished(daemon, &id).await;
    // The step exited 0, so the guest wrote every byte into the channel and paddock read
    // them all (SSH flow control); the log file keeps the first 64 MiB (OutputCaps).
    let size = std::fs::metadata(log_dir.join(&id).join("step-01.stdout")).unwrap().len();
    assert!(size >= bytes.min(64 << 20), "the step log holds {size} bytes");
    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    let secs = doc["results"][0]["duration"].as_f64().unwrap();
    eprintln!("[bench] paddock {bytes} bytes in {secs:.2}s");
    bytes as f64 / 1e6 / secs
}

struct BaselineRun {
    first_byte_s: f64,
    total_s: f64,
    stdout_bytes: u64,
    keys: std::collections::BTreeMap<String, String>,
}

/// `bench/baseline.sh PORT COMMAND`, tried up to ATTEMPTS times like paddock's
/// launch retries; the time of failed attempts counts, as it does for paddock.
fn baseline(port: u16, command: &str) -> BaselineRun {
    let t = Instant::now();
    for attempt in 1..=ATTEMPTS {
        match baseline_once(port, command) {
            Ok(mut r) => {
                r.first_byte_s += t.elapsed().as_secs_f64() - r.total_s;
                r.total_s = t.elapsed().as_secs_f64();
                return r;
            }
            Err(e) if attempt < ATTEMPTS => eprintln!("[bench] baseline attempt {attempt} failed, retrying: {e}"),
            Err(e) => panic!("{e}"),
        }
    }
    unreachable!()
}

/// One `bench/baseline.sh PORT COMMAND`: time from spawn to the first byte on its stdout.
fn baseline_once(port: u16, command: &str) -> Result<BaselineRun, String> {
    let err_path = std::env::temp_dir().join(format!("bench-baseline-{port}.err"));
    let err = std::fs::File::create(&err_path).unwrap();
    let t = Instant::now();
    let mut child = Command::new("bash")
        .arg(repo().join("bench/baseline.sh"))
        .args(["--timeout", "90"])
        .arg(port.to_string())
        .arg(command)
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .expect("run bench/baseline.sh");
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut first = None;
    let mut total = 0u64;
    // The last few KB hold the key=value timings.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| t.elapsed());
        total += n as u64;
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 8192 {
            tail.drain(..tail.len() - 4096);
        }
    }
    let status = child.wait().unwrap();
    let progress = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&err_path);
    if !status.success() {
        let tail: Vec<&str> = progress.lines().rev().take(8).collect();
        return Err(format!("bench/baseline.sh {port} failed ({status}): {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | ")));
    }
    let keys = String::from_utf8_lossy(&tail)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect::<std::collections::BTreeMap<_, _>>();
    Ok(BaselineRun { first_byte_s: first.unwrap().as_secs_f64(), total_s: t.elapsed().as_secs_f64(), stdout_bytes: total, keys })
}

fn baseline_first_byte(n: u64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let r = baseline(BASELINE_PORT, &format!("echo {MARK}"));
            eprintln!("[bench] baseline first byte {:.2}s", r.first_byte_s);
            r.first_byte_s
        })
        .collect()
}

fn baseline_parallel(k: u64) -> f64 {
    let t = Instant::now();
    let threads: Vec<_> =
        (0..k).map(|i| std::thread::spawn(move || baseline(BASELINE_PORT + 1 + i as u16, &format!("echo {MARK}")))).collect();
    for th in threads {
        th.join().expect("a baseline run failed");
    }
    eprintln!("[bench] baseline {k} at once: {:.1}s", t.elapsed().as_secs_f64());
    k as f64 * 60.0 / t.elapsed().as_secs_f64()
}

fn baseline_throughput(bytes: u64) -> f64 {
    let r = baseline(BASELINE_PORT, &format!("head -c {bytes} /dev/zero"));
    // stdout carries the bytes plus the key=value lines.
    assert!(r.stdout_bytes > bytes, "ssh delivered {} of {bytes} bytes", r.stdout_bytes);
    let secs: f64 = r.keys["command_s"].parse().unwrap();
    eprintln!("[bench] baseline {bytes} bytes in {secs:.2}s (script total {:.1}s)", r.total_s);
    bytes as f64 / 1e6 / secs
}

/// The child process of the control-plane figure: `n` VM requests on `test:///default`
/// through the VmManager, then the same through bare libvirt calls. Prints key=value lines.
async fn control(n: u64) {
    use paddock::config::*;
    use paddock::libvirt::HostHandle;
    use paddock::vm::{LaunchRequest, ManagerConfig, Readiness, VmManager};
    let dir = tempfile::tempdir().unwrap();
    let store = paddock::store::Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let host = Host {
        name: "fake".into(),
        uri: "test:///default".into(),
        accelerator: Accelerator::Tcg,
        address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        capacity: Capacity { max_vms: 50, memory_mib: 1 << 20, vcpus: 1024 },
        network: None,
        limits: Default::default(),
        image_pool: None,
    };
    let image = Image {
        name: "tiny".into(),
        os: Os::Linux,
        arch: Arch::X86_64,
        boot: Boot::Kernel { kernel: "/nonexistent/vmlinuz".into(), initrd: "/nonexistent/initrd".into(), cmdline: "quiet".into() },
        memory_mib: 64,
        vcpus: 1,
        user: "root".into(),
        shell: Shell::Sh,
        host_key: HostKeyPolicy::Console,
        trusts_fleet_ca: false,
        boot_timeout: Duration::from_secs(10),
        nic_model: None,
        tpm: false,
        smc_key: None,
        firmware: None,
        network: paddock::config::GuestNetwork::Outbound,
        platform: "tiny".into(),
        start: paddock::config::Start::Cold,
        min_ready: 0,
        guest_agent: false,
    };
    let cfg = ManagerConfig {
        instance_id: "bench000".into(),
        state_dir: dir.path().to_path_buf(),
        ssh_ports: PortRange { first: 30000, last: 30999 },
        launch_retries: 1,
        reconcile_interval: Duration::from_secs(3600),
        readiness: Readiness::DomainRunning,
        shutdown_timeout: Duration::from_secs(5),
        host_cooldown: Duration::from_secs(60),
        console_tail_lines: 20,
        clock: paddock::clock::Clock::system(),
        emulation_boot_factor: Default::default(),
        images: Vec::new(),
        upload_retry: Duration::from_secs(30),
        priority_aging: Duration::from_secs(60),
        upload_timeout: Duration::from_secs(600),
        libvirt: Default::default(),
    };
    let mgr = VmManager::start(cfg, vec![host], store.clone()).await.unwrap();
    // 50 clients at once, each requesting and destroying VMs until `n` are done: the
    // host's 50 slots stay full, so placement and the queue are exercised too.
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (mgr, image, next) = (mgr.clone(), image.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let req = LaunchRequest {
                    run_id: format!("run-{i}"),
                    job: None,
                    image: image.clone(),
                    authorized_keys: vec![],
                    ca_key: None,
                    priority: 0,
                    avoid_hosts: Vec::new(),
                    progress: None,
                };
                let vm = mgr.launch(req).await.unwrap();
                mgr.destroy(&vm.name).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let managed = t.elapsed();
    assert!(mgr.snapshot().await.unwrap().vms.is_empty());
    assert!(store.vms().await.unwrap().is_empty());

    // The same domain life cycles with bare libvirt calls, one after another.
    let conn = HostHandle::spawn("bare", "test:///default");
    conn.wait_connected().await;
    let t = Instant::now();
    for i in 0..n {
        let name = format!("bare-{i}");
        let xml = format!(
            "<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>"
        );
        conn.define(&name, xml).await.unwrap();
        conn.start(&name).await.unwrap();
        conn.destroy(&name).await.unwrap();
        conn.undefine(&name).await.unwrap();
    }
    let bare = t.elapsed();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = hwm.split_whitespace().nth(1).unwrap().parse().unwrap();
    println!("control_n={n}");
    println!("control_ms_per_vm={:.3}", managed.as_secs_f64() * 1e3 / n as f64);
    println!("bare_ms_per_vm={:.3}", bare.as_secs_f64() * 1e3 / n as f64);
    println!("peak_rss_mib={:.1}", kb as f64 / 1024.0);
}

/// Runs this binary again as `control N` and parses its key=value lines.
fn control_child(n: u64) -> std::collections::BTreeMap<String, f64> {
    let out = Command::new(std::env::current_exe().unwrap()).args(["control", &n.to_string()]).output().unwrap();
    assert!(out.status.success(), "control child failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('=').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
        .collect()
}

struct Row {
    figure: String,
    unit: String,
    paddock: f64,
    baseline: f64,
    baseline_is: String,
}

impl Row {
    fn new(figure: &str, unit: &str, paddock: f64, baseline: f64, baseline_is: &str) -> Row {
        Row { figure: figure.into(), unit: unit.into(), paddock, baseline, baseline_is: baseline_is.into() }
    }
}

/// Rows measured by the programs of `bench/figures/` (one JSON file each: `{"rows": [{"figure",
/// "unit", "paddock", "baseline", "baseline_is"}], ...}`), appended to the table in file order.
/// A file that is missing or unreadable becomes one row saying so, never a silent gap.
fn extra_rows(paths: &[PathBuf]) -> (Vec<Row>, Vec<serde_json::Value>) {
    let mut rows = Vec::new();
    let mut docs = Vec::new();
    for path in paths {
        let doc: serde_json::Value = match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        {
            Ok(doc) => doc,
            Err(e) => {
                rows.push(Row::new(&format!("{} (failed: {e})", path.display()), "-", f64::NAN, f64::NAN, "-"));
                continue;
            }
        };
        let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
        for r in doc["rows"].as_array().into_iter().flatten() {
            rows.push(Row {
                figure: text(&r["figure"]),
                unit: text(&r["unit"]),
                paddock: num(&r["paddock"]),
                baseline: num(&r["baseline"]),
                baseline_is: text(&r["baseline_is"]),
            });
        }
        docs.push(doc);
    }
    (rows, docs)
}

async fn all(json_out: PathBuf, extra: Vec<PathBuf>) {
    let cold_n = env_or("BENCH_COLD_N", 5);
    let k = env_or("BENCH_PARALLEL", 4);
    let bytes = env_or("BENCH_LOG_BYTES", 200_000_000);
    let control_n = env_or("BENCH_CONTROL_N", 1000);

    // Control plane first, in its own process, so its peak RSS is its own.
    let control = control_child(control_n);

    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path(), bytes);
    let log_dir = dir.path().join("state/logs");
    let daemon = Daemon::start(fleet, ServeOptions { listen: Some("127.0.0.1:0".parse().unwrap()), demo: false }).await.unwrap();
    let _guard = domains::Cleanup::for_state(&dir.path().join("state"));
    // Interleaved so that a change in machine load hits both sides alike.
    let mut p_cold = Vec::new();
    let mut b_cold = Vec::new();
    for _ in 0..cold_n {
        p_cold.extend(paddock_first_byte(&daemon, &log_dir, 1).await);
        b_cold.extend(tokio::task::spawn_blocking(|| baseline_first_byte(1)).await.unwrap());
    }
    let p_par = paddock_parallel(&daemon, k).await;
    let b_par = tokio::task::spawn_blocking(move || baseline_parallel(k)).await.unwrap();
    let p_tp = paddock_throughput(&daemon, &log_dir, bytes).await;
    let b_tp = tokio::task::spawn_blocking(move || baseline_throughput(bytes)).await.unwrap();
    daemon.stop().await.unwrap();

    let mut rows = vec![
        Row::new("trigger -> first byte, cold boot (median)", "s", median(p_cold.clone()), median(b_cold.clone()), "bench/baseline.sh"),
        Row::new("runs at once, throughput", "runs/min", p_par, b_par, "bench/baseline.sh x parallel"),
        Row::new("step log throughput (guest)", "MB/s", p_tp, b_tp, "ssh guest cmd > pipe"),
        Row::new(
            "control plane on test:///, per VM",
            "ms",
            control["control_ms_per_vm"],
            control["bare_ms_per_vm"],
            "bare libvirt define/start/destroy/undefine",
        ),
        Row::new("control plane peak RSS", "MiB", control["peak_rss_mib"], f64::NAN, "-"),
    ];
    let (more, extra_docs) = extra_rows(&extra);
    rows.extend(more);
    println!();
    println!("{:<44} {:>10} {:>10} {:>10} {:>7}  baseline", "figure", "unit", "paddock", "baseline", "ratio");
    for r in &rows {
        println!(
            "{:<44} {:>10} {:>10.2} {:>10.2} {:>7.2}  {}",
            r.figure,
            r.unit,
            r.paddock,
            r.baseline,
            r.paddock / r.baseline,
            r.baseline_is
        );
    }
    println!("(ratio = paddock / baseline; for s and ms lower is better, for rates higher is better)");
    println!("{k} runs at once: {k} jobs in parallel; control plane: {control_n} VM requests, 50 in flight");

    let doc = json!({
        "git_sha": std::env::var("BENCH_GIT_SHA").unwrap_or_default(),
        "when": chrono::Utc::now().to_rfc3339(),
        "rows": rows.iter().map(|r| json!({
            "figure": r.figure, "unit": r.unit, "paddock": finite(r.paddock), "baseline": finite(r.baseline),
            "ratio": finite(r.paddock / r.baseline), "baseline_is": r.baseline_is,
        })).collect::<Vec<_>>(),
        "samples": {
            "paddock_first_byte_s": p_cold, "baseline_first_byte_s": b_cold,
            "parallel": k, "log_bytes": bytes, "control_vms": control_n,
        },
        "figures": extra_docs,
    });
    if let Some(parent) = json_out.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&json_out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("written to {}", json_out.display());
}

fn finite(x: f64) -> serde_json::Value {
    if x.is_finite() { json!((x * 1000.0).round() / 1000.0) } else { serde_json::Value::Null }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["control", n] => control(n.parse().expect("a number of VMs")).await,
        ["all", "--json", out, extra @ ..] => all(out.into(), extra.iter().map(PathBuf::from).collect()).await,
        _ => {
            eprintln!("usage: bench_compare all --json OUT [FIGURES.json...] | control N");
            std::process::exit(2);
        }
    }
}
