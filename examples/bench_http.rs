//! `bench/figures/http.sh`: the release `paddock serve` under read load, measured from outside:
//! `?tail=` on a 256 MiB run log (against `tail -n`), and the daemon's memory idle, after
//! reading that log (tail and whole), with 1,000 idle connections and with 200 live log streams.
//!
//! Usage: `bench_http PADDOCK_BINARY OUT.json`. The daemon runs on a `test:///default` host (no
//! VM boots), `public_reads = true`, and `[limits]` raised so the figures measure memory, not
//! refusals. Memory is `/proc/PID/status` of the daemon: `VmRSS` now, `VmHWM` its peak so far.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paddock::store::{RunRow, Store};

const LOG_BYTES: u64 = 256 << 20;
const IDLE_CONNECTIONS: usize = 1000;
const STREAMS: usize = 200;
const TAIL_SAMPLES: usize = 5;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (bin, out) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let dir = tempfile::Builder::new().prefix("pdkt2-bench-http-").tempdir_in(out.parent().unwrap()).unwrap();
    let fleet = write_fleet(dir.path());
    let log = dir.path().join("big-run.log");
    let last_line = format!("line {}", write_log(&log));

    let daemon = Daemon::start(&bin, &fleet);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Two runs beside the daemon's own rows (WAL lets a second connection write): one whose
    // log is the 256 MiB file, one still running so its follows stay open.
    rt.block_on(seed(&dir.path().join("state/paddock.db"), &log));
    for _ in 0..3 {
        assert!(request(daemon.addr, "/api/v1/status").starts_with("HTTP/1.1 200"));
    }
    let idle = daemon.status("VmRSS");

    // ?tail=10 on the 256 MiB log, against `tail -n 10` on the same file.
    let mut tail_ms = Vec::new();
    let mut baseline_ms = Vec::new();
    for _ in 0..TAIL_SAMPLES {
        let t = Instant::now();
        let r = request(daemon.addr, "/api/v1/runs/r-big/log?tail=10");
        tail_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(r.starts_with("HTTP/1.1 200") && r.contains(&format!("\n{last_line}\n")), "{}", &r[..r.len().min(300)]);
        let t = Instant::now();
        let o = Command::new("tail").args(["-n", "10"]).arg(&log).output().unwrap();
        baseline_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(o.status.success());
    }
    let hwm_before = daemon.status("VmHWM");
    // The whole log, streamed: memory should stay where it was.
    let got = download(daemon.addr, "/api/v1/runs/r-big/log");
    assert!(got >= LOG_BYTES, "only {got} bytes of the log");
    let hwm_after = daemon.status("VmHWM");

    // 1,000 connections that send nothing (inside the header timeout, set to 10 min here).
    let conns: Vec<TcpStream> = (0..IDLE_CONNECTIONS).map(|_| TcpStream::connect(daemon.addr).unwrap()).collect();
    daemon.wait_fds_above(IDLE_CONNECTIONS);
    let with_idle = daemon.status("VmRSS");
    drop(conns);
    daemon.wait_fds_below(IDLE_CONNECTIONS / 2);

    // 200 live follows of the running run, each answered and left open.
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let mut s = TcpStream::connect(daemon.addr).unwrap();
        write!(s, "GET /api/v1/runs/r-live/log/follow HTTP/1.1\r\nHost: bench\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        streams.push(s);
    }
    let with_streams = daemon.status("VmRSS");
    drop(streams);
    daemon.stop();

    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (tail, base) = (med(&mut tail_ms.clone()), med(&mut baseline_ms.clone()));
    let row = |figure: &str, unit: &str, paddock: f64, baseline: Option<f64>, is: &str| serde_json::json!({"figure": figure, "unit": unit, "paddock": paddock, "baseline": baseline, "baseline_is": is});
    let rows = vec![
        row("?tail=10 on a 256 MiB run log (median of 5)", "ms", tail, Some(base), "tail -n 10 FILE"),
        row("daemon RSS, idle", "MiB", idle, None, "-"),
        row("daemon peak RSS after ?tail= x5", "MiB", hwm_before, Some(idle), "idle daemon RSS"),
        row("daemon peak RSS after streaming all 256 MiB", "MiB", hwm_after, Some(hwm_before), "peak before"),
        row("daemon RSS, 1,000 idle connections", "MiB", with_idle, Some(idle), "idle daemon RSS"),
        row("daemon RSS, 200 live log streams", "MiB", with_streams, Some(idle), "idle daemon RSS"),
    ];
    let doc = serde_json::json!({"rows": rows, "tail_ms": tail_ms, "tail_baseline_ms": baseline_ms});
    std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
}

fn write_fleet(dir: &Path) -> PathBuf {
    let path = dir.join("fleet.toml");
    std::fs::write(
        &path,
        r#"version = 1

[daemon]
listen = "127.0.0.1:0"
state_dir = "state"
ssh_ports = "26500-26509"
public_reads = true

[[hosts]]
name = "pdkt2-bench"
uri = "test:///default"
accelerator = "kvm"
address = "127.0.0.1"
max_vms = 1
memory_mib = 64
vcpus = 1

[[images]]
name = "tiny"
os = "linux"
arch = "x86_64"
kernel = "k/vmlinuz"
initrd = "k/initrd.img"
memory_mib = 32
vcpus = 1
user = "root"
host_key = "console"

[[jobs]]
name = "bench"
images = ["tiny"]
[[jobs.steps]]
name = "build"
type = "build"
command = "true"

[[users]]
name = "root"
role = "admin"

[limits]
http_header_timeout = "10m"
http_connections = 2000
live_streams = 500
live_streams_per_client = 500
"#,
    )
    .unwrap();
    path
}

/// `line 0` … `line N` until the file is 256 MiB (short lines, as a build log has); returns N.
fn write_log(path: &Path) -> u64 {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let (mut n, mut len) = (0u64, 0u64);
    while len < LOG_BYTES {
        let line = format!("line {n}\n");
        f.write_all(line.as_bytes()).unwrap();
        len += line.len() as u64;
        n += 1;
    }
    f.flush().unwrap();
    n - 1
}

async fn seed(db: &Path, log: &Path) {
    let store = Store::open(db).await.unwrap();
    let now = chrono::Utc::now();
    for (id, state) in [("r-big", "done"), ("r-live", "running:1")] {
        let row = RunRow {
            id: id.into(),
            job: "bench".into(),
            image: "tiny".into(),
            trigger: "manual".into(),
            requested_by: None,
            state: state.into(),
            host: None,
            vm_name: None,
            scheduled_at: None,
            created_at: now,
            started_at: Some(now),
            finished_at: None,
            outcome: None,
            reason: None,
            result_json: None,
            log_path: Some(log.display().to_string()),
        };
        store.insert_run(&row).await.unwrap();
    }
}

/// One GET with `Connection: close`; the whole response as text.
fn request(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// One GET with `Connection: close`, counting the bytes without keeping them.
fn download(addr: SocketAddr, path: &str) -> u64 {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").unwrap();
    std::io::copy(&mut s, &mut std::io::sink()).unwrap()
}

struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Daemon {
    fn start(bin: &Path, fleet: &Path) -> Daemon {
        let mut child =
            Command::new(bin).args(["serve", "-c"]).arg(fleet).env("PADDOCK_LOG", "warn").stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("paddock serve printed its address").unwrap();
            if let Some(url) = line.strip_prefix("paddock listening on http://") {
                break url.parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Daemon { child, addr }
    }

    /// A `/proc/PID/status` memory line, in MiB.
    fn status(&self, key: &str) -> f64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = text.lines().find(|l| l.starts_with(&format!("{key}:"))).unwrap();
        let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib / 1024.0
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map(|d| d.count()).unwrap_or(0)
    }

    fn wait_fds_above(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.fds() < n {
            assert!(Instant::now() < deadline, "the daemon accepted only {} fds", self.fds());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_fds_below(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.fds() > n {
            assert!(Instant::now() < deadline, "the daemon still holds {} fds", self.fds());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
