//! Figures for the daemon's face: resident memory of an idle `paddock serve`
//! with 200 configured jobs on `test:///` hosts, and p50/p99 latency of
//! `/api/v1/runs` and the dashboard with 10,000 runs stored.
//!
//! `cargo run --release --example api_figures` (needs the `paddock` binary built
//! in the same profile).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use paddock::store::{RunEnd, RunRow, Store};

fn fleet(dir: &std::path::Path, jobs: usize) -> std::path::PathBuf {
    let mut s = format!(
        r#"version = 1
[daemon]
listen = "127.0.0.1:0"
state_dir = "{}"
ssh_ports = "30000-30999"
public_reads = true

[[hosts]]
name = "fake"
uri = "test:///default"
accelerator = "tcg"
address = "127.0.0.1"
max_vms = 100
memory_mib = 65536
vcpus = 64

[[images]]
name = "img"
os = "linux"
arch = "x86_64"
disk = "/nonexistent.qcow2"
memory_mib = 256
vcpus = 1
user = "root"
host_key = "console"
"#,
        dir.join("state").display()
    );
    for j in 0..jobs {
        s.push_str(&format!(
            "\n[[jobs]]\nname = \"job-{j:03}\"\nimages = [\"img\"]\nschedule = \"{} {} * * *\"\ntimezone = \"Europe/Berlin\"\n[[jobs.steps]]\nname = \"build\"\ntype = \"build\"\ncommand = \"make\"\n",
            j % 60,
            j % 24
        ));
    }
    let path = dir.join("fleet.toml");
    std::fs::write(&path, s).unwrap();
    path
}

fn binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("paddock")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let config = fleet(dir.path(), 200);
    let mut child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .env("PADDOCK_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start paddock serve (build it first)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().trim_start_matches("paddock listening on ").to_string();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = rss_kib(child.id());

    // 10,000 finished runs, written straight into the daemon's store.
    let store = Store::open(&dir.path().join("state/paddock.db")).await.unwrap();
    let started = Instant::now();
    for i in 0..10_000 {
        let id = format!("r{i:05}");
        let now = Utc::now();
        let row = RunRow {
            id: id.clone(),
            job: format!("job-{:03}", i % 200),
            image: "img".into(),
            trigger: "schedule".into(),
            requested_by: None,
            state: "queued".into(),
            host: Some("fake".into()),
            vm_name: None,
            scheduled_at: None,
            created_at: now,
            started_at: Some(now),
            finished_at: None,
            outcome: None,
            reason: None,
            result_json: None,
            log_path: None,
        };
        store.insert_run(&row).await.unwrap();
        let ok = i % 7 != 0;
        store
            .finish_run(RunEnd {
                run_id: id,
                from: "queued".into(),
                state: if ok { "done".into() } else { "failed".into() },
                outcome: if ok { "success".into() } else { "build-failure".into() },
                reason: None,
                result_json: "{\"client_info\":{},\"results\":[]}".into(),
                finished_at: now,
                recorders: vec![],
            })
            .await
            .unwrap();
    }
    let seeded = started.elapsed();

    rustls::crypto::ring::default_provider().install_default().ok();
    let http = reqwest::Client::new();
    let mut report = vec![format!("idle RSS with 200 jobs: {:.1} MiB", idle as f64 / 1024.0)];
    for path in ["/api/v1/runs", "/"] {
        for _ in 0..20 {
            http.get(format!("{url}{path}")).send().await.unwrap().bytes().await.unwrap();
        }
        let mut times = Vec::with_capacity(500);
        for _ in 0..500 {
            let t = Instant::now();
            let resp = http.get(format!("{url}{path}")).send().await.unwrap();
            assert!(resp.status().is_success(), "{path}: {}", resp.status());
            resp.bytes().await.unwrap();
            times.push(t.elapsed());
        }
        times.sort();
        report.push(format!(
            "GET {path} with 10,000 runs: p50 {:.2} ms, p99 {:.2} ms (500 requests)",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3
        ));
    }
    report.push(format!("RSS after the requests: {:.1} MiB; seeding took {seeded:?}", rss_kib(child.id()) as f64 / 1024.0));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    for l in report {
        println!("{l}");
    }
}
