//! The real `paddock serve` binary (port 0) and the standalone recorder against slow and greedy
//! clients, over raw TCP sockets: a client that never finishes its headers is dropped, a body
//! that trickles is cut with 408, past the connection cap a new connection gets 503 at once
//! while open ones are still served, and ordinary requests go through.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::recorder::RecorderProcess;
use support::serve::{serve, token};

fn fleet(dir: &std::path::Path, limits: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
version = 1

[daemon]
listen = "127.0.0.1:0"
state_dir = "state"
ssh_ports = "26400-26409"
public_reads = true

[[hosts]]
name = "pdkt2-host"
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
name = "pdkt2-job"
images = ["tiny"]
[[jobs.steps]]
name = "build"
type = "build"
command = "true"

[[users]]
name = "root"
role = "admin"

[[recorders]]
name = "embedded"
kind = "embedded"

[limits]
{limits}
"#
    );
    let path = dir.join("fleet.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Whether the server closes `s` within `limit` while `feed` keeps writing to it now and then;
/// also returns whatever the server sent.
fn closed_within(s: &mut TcpStream, limit: Duration, mut feed: impl FnMut(&mut TcpStream) -> std::io::Result<()>) -> (bool, String) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    while Instant::now() < deadline {
        if feed(s).is_err() {
            return (true, String::from_utf8_lossy(&got).into_owned());
        }
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (true, String::from_utf8_lossy(&got).into_owned()),
        }
    }
    (false, String::from_utf8_lossy(&got).into_owned())
}

/// One keep-alive GET on an open connection: the status line and the body.
fn get(s: &mut TcpStream, path: &str) -> (String, String) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    read_response(s)
}

fn read_response(s: &mut TcpStream) -> (String, String) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).expect("a response in time"), 1, "closed mid-headers: {}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("a content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head.lines().next().unwrap().to_owned(), String::from_utf8_lossy(&body).into_owned())
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap()
}

#[test]
fn slow_clients_are_dropped_and_normal_requests_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path(), "http_header_timeout = \"1s\"\nhttp_request_timeout = \"2s\"");
    let admin = token(&fleet, "root");
    let d = serve(&fleet);

    // A connection that never sends a byte is closed.
    let mut idle = connect(d.addr);
    let (closed, got) = closed_within(&mut idle, Duration::from_secs(10), |_| Ok(()));
    assert!(closed && got.is_empty(), "an idle connection stayed open (got {got:?})");

    // Slowloris: headers that keep coming, a line at a time, but never end.
    let mut slow = connect(d.addr);
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n").unwrap();
    let (closed, got) = closed_within(&mut slow, Duration::from_secs(10), |s| s.write_all(b"X-Slow: 1\r\n"));
    assert!(closed, "a client trickling headers kept its connection");
    assert!(!got.contains("200 OK"), "{got}");

    // A body that trickles a byte at a time is cut with 408 naming the limit.
    let mut trickle = connect(d.addr);
    write!(
        trickle,
        "POST /recorder/api/v1/results HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
    )
    .unwrap();
    let mut last = Instant::now();
    let (closed, got) = closed_within(&mut trickle, Duration::from_secs(10), |s| {
        if last.elapsed() < Duration::from_millis(100) {
            return Ok(());
        }
        last = Instant::now();
        s.write_all(b" ")
    });
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("limits.http_request_timeout"), "{got}");
    assert!(closed, "the connection stays open after the 408: {got}");

    // Ordinary requests: a keep-alive GET twice on one connection, and a whole submission.
    let mut ok = connect(d.addr);
    assert_eq!(get(&mut ok, "/healthz").0, "HTTP/1.1 200 OK");
    assert_eq!(get(&mut ok, "/api/v1/status").0, "HTTP/1.1 200 OK");
    let doc = r#"{"client_info":{"package":"p","arch":"x86_64","host":"h","tags":[],"success":true},"results":[{"name":"b","type":"build","command":"true","status":0,"output":"","errout":""}]}"#;
    write!(
        ok,
        "POST /recorder/api/v1/results HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{doc}",
        doc.len()
    )
    .unwrap();
    let (status, body) = read_response(&mut ok);
    assert_eq!(status, "HTTP/1.1 201 Created", "{body}");
}

#[test]
fn past_the_connection_cap_a_new_connection_gets_503_at_once_and_open_ones_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path(), "http_connections = 3");
    let d = serve(&fleet);

    // Three connections, each served once, so the daemon holds all three.
    let mut open: Vec<TcpStream> = (0..3).map(|_| connect(d.addr)).collect();
    for s in &mut open {
        assert_eq!(get(s, "/healthz").0, "HTTP/1.1 200 OK");
    }
    // The fourth is told why and closed without a request being read.
    let mut extra = connect(d.addr);
    let (closed, got) = closed_within(&mut extra, Duration::from_secs(5), |_| Ok(()));
    assert!(closed, "the connection past the cap stayed open: {got:?}");
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("3 connections are open, the limit (limits.http_connections)"), "{got}");
    // The open ones are still served.
    for s in &mut open {
        assert_eq!(get(s, "/healthz").0, "HTTP/1.1 200 OK");
    }
    // One closes; a new connection is served again (once the daemon has seen the close).
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fresh = loop {
        let mut s = connect(d.addr);
        write!(s, "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let (_, got) = closed_within(&mut s, Duration::from_millis(500), |_| Ok(()));
        if got.starts_with("HTTP/1.1 200") {
            break s;
        }
        assert!(got.starts_with("HTTP/1.1 503") || got.is_empty(), "{got}");
        assert!(Instant::now() < deadline, "no connection was served after one closed");
    };
    let (_, metrics) = get(&mut fresh, "/metrics");
    let refused = metrics.lines().find(|l| l.starts_with("paddock_http_connections_refused_total")).unwrap_or_default().to_owned();
    assert!(refused.split_whitespace().nth(1).is_some_and(|n| n.parse::<u64>().unwrap() >= 1), "{refused:?}");
}

#[test]
fn the_standalone_recorder_drops_slow_clients_and_caps_connections() {
    let rec = RecorderProcess::start(&["--token", "ci=s3cret", "--header-timeout-secs", "1", "--max-connections", "2"]);
    let addr: SocketAddr = rec.addr.parse().unwrap();
    let mut slow = connect(addr);
    slow.write_all(b"GET /api/v1/packages HTTP/1.1\r\n").unwrap();
    let (closed, got) = closed_within(&mut slow, Duration::from_secs(10), |s| s.write_all(b"X-Slow: 1\r\n"));
    assert!(closed && !got.contains("200 OK"), "a client trickling headers kept its connection: {got}");

    let mut a = connect(addr);
    assert_eq!(get(&mut a, "/api/v1/packages").0, "HTTP/1.1 200 OK");
    let mut b = connect(addr);
    assert_eq!(get(&mut b, "/api/v1/packages").0, "HTTP/1.1 200 OK");
    let mut c = connect(addr);
    let (closed, got) = closed_within(&mut c, Duration::from_secs(5), |_| Ok(()));
    assert!(closed && got.starts_with("HTTP/1.1 503"), "{got}");
    assert_eq!(get(&mut a, "/api/v1/packages").0, "HTTP/1.1 200 OK");
}
