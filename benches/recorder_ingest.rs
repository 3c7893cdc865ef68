//! Recorder throughput: ingest rate over REST and XML-RPC (10 steps of 20 KB output each) next to
//! raw SQLite inserts of the same rows, then p50/p99 latency of a package page with 100,000 stored
//! results. Run with `cargo bench --bench recorder_ingest`; `RECORDER_BENCH_N` sets the results
//! per path and round (default 500), `RECORDER_BENCH_ROUNDS` the rounds (default 5: raw, REST and
//! XML-RPC take turns in a rotating order, so a change in machine load hits all three alike;
//! medians are reported),
//! and `RECORDER_BENCH_JSON=FILE` writes the rows for `make bench` (bench/figures/recorder.sh).
//! For profiling: `RECORDER_BENCH_ONLY=raw|rest|xmlrpc` runs one path and stops before the page
//! figure; `PERF_CTL_FIFO=FIFO` writes `enable`/`disable` around each timed region, for
//! `perf record -D -1 --control fifo:FIFO` to sample those alone; `RECORDER_BENCH_TIMINGS=1` prints
//! after each path where its submissions' time went (`recorder::IngestTimings`) and the CPU time
//! per result.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dxr::{MethodCall, Value};
use paddock::recorder::{self, Recorder, RecorderConfig, SubmitToken};
use serde_json::json;

const STEPS: usize = 10;
const OUTPUT_BYTES: usize = 20 * 1024;
const STORED_FOR_PAGE: i64 = 100_000;
const PLATFORMS: usize = 40;
const PAGE_GETS: usize = 500;
const CONCURRENCY: usize = 4;

fn output(seed: usize) -> String {
    let line = format!("[{seed:05}] compiling module with a reasonably long line of build output ...\n");
    line.repeat(OUTPUT_BYTES / line.len() + 1)[..OUTPUT_BYTES].to_owned()
}

fn result_json(i: usize) -> serde_json::Value {
    let steps: Vec<_> = (0..STEPS)
        .map(|s| {
            json!({"name": format!("step{s}"), "type": "build", "command": format!("make step{s}"),
                   "status": 0, "output": output(i + s), "errout": "", "duration": 1.5})
        })
        .collect();
    json!({
        "client_info": {"package": "ingest", "arch": "x86_64", "host": format!("h{}", i % PLATFORMS),
                        "tags": ["bench"], "success": !i.is_multiple_of(7), "duration": 15.0},
        "results": steps,
    })
}

fn to_xmlrpc(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i as i32),
            None => Value::Double(n.as_f64().unwrap()),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(to_xmlrpc).collect()),
        serde_json::Value::Object(m) => Value::Struct(m.iter().map(|(k, v)| (k.clone(), to_xmlrpc(v))).collect()),
    }
}

async fn serve(rec: Recorder) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = recorder::router(rec).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Post `bodies` with CONCURRENCY clients; returns results per second. The clock stops once the
/// recorder's checkpoint task has copied every page into the database file, so work it does
/// after answering is counted too.
async fn post_all(rec: &Recorder, client: &reqwest::Client, url: String, content_type: &'static str, bodies: Vec<String>) -> f64 {
    let n = bodies.len();
    let queue: Queue = std::sync::Arc::new(tokio::sync::Mutex::new(bodies));
    rec.take_ingest_timings();
    let cpu0 = cpu();
    perf_ctl("enable");
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, url, queue) = (client.clone(), url.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            let mut waited = Duration::ZERO;
            loop {
                // Its own statement: in `while let` the lock's guard would live through the
                // request, and the clients would post one at a time.
                let next = queue.lock().await.pop();
                let Some(body) = next else { break };
                let t = Instant::now();
                let r = client.post(&url).header("content-type", content_type).bearer_auth(TOKEN).body(body).send().await.unwrap();
                assert!(r.status().is_success(), "{}", r.status());
                let text = r.text().await.unwrap();
                waited += t.elapsed();
                assert!(!text.contains("<fault>"), "{text}");
            }
            waited
        }));
    }
    let mut waited = Duration::ZERO;
    for t in tasks {
        waited += t.await.unwrap();
    }
    let answered = start.elapsed();
    rec.checkpoint().await.unwrap();
    let elapsed = start.elapsed();
    let rate = n as f64 / elapsed.as_secs_f64();
    perf_ctl("disable");
    if std::env::var_os("RECORDER_BENCH_TIMINGS").is_some() {
        print_timings(&rec.take_ingest_timings(), n, waited, answered, elapsed);
        print_cpu(cpu0, n);
    }
    rate
}

/// Where a round's submissions spent their time (`RECORDER_BENCH_TIMINGS=1`): per submission,
/// the client's whole request and the recorder's stages; the writer's share of the wall time.
fn print_timings(t: &recorder::IngestTimings, n: usize, client: Duration, answered: Duration, elapsed: Duration) {
    let per = |d: Duration, k: u64| format!("{:.2}", d.as_secs_f64() * 1e3 / k.max(1) as f64);
    println!(
        "  per submission (ms): client {} = body read {} + parse {} + queued {} + commit {} + answer {} (+ the rest: HTTP, scheduling); \
         {} groups (mean {:.1}, max {}), writer busy {:.0}% of {:.2}s ({:.2} ms/result, WAL check {:.2}), final checkpoint {:.0} ms",
        per(client, n as u64),
        per(t.read, t.requests),
        per(t.parse, t.requests),
        per(t.queued, t.submissions),
        per(t.commit, t.submissions),
        per(t.answer, t.submissions),
        t.groups,
        t.submissions as f64 / t.groups.max(1) as f64,
        t.max_group,
        t.writer_busy.as_secs_f64() * 100.0 / answered.as_secs_f64(),
        answered.as_secs_f64(),
        t.writer_busy.as_secs_f64() * 1e3 / t.submissions.max(1) as f64,
        t.writer_bound.as_secs_f64() * 1e3 / t.submissions.max(1) as f64,
        (elapsed - answered).as_secs_f64() * 1e3,
    );
}

/// The process's user and system CPU time so far, in seconds.
fn cpu() -> (f64, f64) {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(u.ru_utime), s(u.ru_stime))
}

fn print_cpu(since: (f64, f64), n: usize) {
    let now = cpu();
    println!("  CPU per result: user {:.2} ms, system {:.2} ms", (now.0 - since.0) * 1e3 / n as f64, (now.1 - since.1) * 1e3 / n as f64);
}

/// With `PERF_CTL_FIFO` (`perf record --control fifo:...`), perf samples only the timed parts.
fn perf_ctl(cmd: &str) {
    if let Ok(p) = std::env::var("PERF_CTL_FIFO") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        writeln!(f, "{cmd}").unwrap();
    }
}

/// Every submission needs a credential.
const TOKEN: &str = "bench-secret";

type Queue = std::sync::Arc<tokio::sync::Mutex<Vec<String>>>;

/// The same rows, straight into SQLite with prepared statements, one transaction per result
/// (each result durable before the next is sent, as a program storing results one by one does),
/// with the recorder's durability settings: WAL (kept in the file) and `synchronous = NORMAL`.
fn raw_inserts(path: &std::path::Path, docs: &[serde_json::Value], tagset_id: i64) -> f64 {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    perf_ctl("enable");
    let start = Instant::now();
    for d in docs {
        let tx = conn.transaction().unwrap();
        let ci = &d["client_info"];
        tx.execute(
            "INSERT INTO results (auth_key, received_at, package, arch, host, tagset_id, success, duration, client_info, extras)
             VALUES ('k', 1.0, ?1, ?2, ?3, ?4, ?5, ?6, ?7, '{}')",
            rusqlite::params![
                ci["package"].as_str(),
                ci["arch"].as_str(),
                ci["host"].as_str(),
                tagset_id,
                ci["success"].as_bool(),
                ci["duration"].as_f64(),
                ci.to_string()
            ],
        )
        .unwrap();
        let id = tx.last_insert_rowid();
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO steps (result_id, seq, name, type, command, status, duration, output, errout, extra)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, '{}')",
                )
                .unwrap();
            for (seq, s) in d["results"].as_array().unwrap().iter().enumerate() {
                st.execute(rusqlite::params![
                    id,
                    seq as i64,
                    s["name"].as_str(),
                    s["type"].as_str(),
                    s["command"].as_str(),
                    s["status"].as_i64(),
                    s["duration"].as_f64(),
                    s["output"].as_str(),
                    s["errout"].as_str()
                ])
                .unwrap();
            }
            tx.execute("INSERT INTO result_tags (tag, result_id) VALUES ('bench', ?1)", [id]).unwrap();
        }
        tx.commit().unwrap();
    }
    // As on the recorder's side, the clock stops once every page is in the database file.
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).unwrap();
    let rate = docs.len() as f64 / start.elapsed().as_secs_f64();
    perf_ctl("disable");
    rate
}

/// Fill the database up to `STORED_FOR_PAGE` results (small outputs: the page reads only the
/// latest result per platform), spread over PLATFORMS platforms of package "page".
fn fill(path: &std::path::Path) {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    let have: i64 = conn.query_row("SELECT count(*) FROM results", [], |r| r.get(0)).unwrap();
    let tx = conn.transaction().unwrap();
    for p in 0..PLATFORMS {
        let tagset = format!(r#"["__arch=x86_64","__host=p{p}","__package=page","nightly"]"#);
        tx.execute("INSERT INTO tagsets (package, tagset, latest_id, first_at, latest_at) VALUES ('page', ?1, 0, 1.0, 1.0)", [tagset])
            .unwrap();
    }
    let first_tagset: i64 = tx.query_row("SELECT min(id) FROM tagsets WHERE package = 'page'", [], |r| r.get(0)).unwrap();
    tx.commit().unwrap();
    let mut i = have;
    while i < STORED_FOR_PAGE {
        let tx = conn.transaction().unwrap();
        for _ in 0..5000.min(STORED_FOR_PAGE - i) {
            let p = (i as usize) % PLATFORMS;
            tx.execute(
                "INSERT INTO results (auth_key, received_at, package, arch, host, tagset_id, success, duration, client_info, extras)
                 VALUES ('k', ?1, 'page', 'x86_64', ?2, ?3, ?4, 20.0, '{}', '{}')",
                rusqlite::params![1e9 + i as f64, format!("p{p}"), first_tagset + p as i64, i % 5 != 0],
            )
            .unwrap();
            let id = tx.last_insert_rowid();
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO steps (result_id, seq, name, type, command, status, output, errout, extra)
                     VALUES (?1, ?2, 'step', 'build', 'make', 0, 'ok ok ok ok ok ok ok ok ok ok ok', '', '{}')",
                )
                .unwrap();
            for seq in 0..STEPS as i64 {
                st.execute(rusqlite::params![id, seq]).unwrap();
            }
            i += 1;
        }
        tx.commit().unwrap();
    }
    conn.execute(
        "UPDATE tagsets SET latest_id = (SELECT max(id) FROM results WHERE tagset_id = tagsets.id),
                            latest_at = (SELECT max(received_at) FROM results WHERE tagset_id = tagsets.id)
         WHERE package = 'page'",
        [],
    )
    .unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|s| s.parse().ok()).unwrap_or(d);
    let n = env("RECORDER_BENCH_N", 500);
    let rounds = env("RECORDER_BENCH_ROUNDS", 5).max(1);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let tokens = vec![SubmitToken { name: "bench".into(), secret: TOKEN.into() }];
    let rec = Recorder::open(&db, RecorderConfig { tokens, ..RecorderConfig::default() }).await.unwrap();
    let addr = serve(rec.clone()).await;
    let client = reqwest::Client::new();

    let docs: Vec<_> = (0..n).map(result_json).collect();
    let mb = docs.iter().map(|d| d.to_string().len()).sum::<usize>() as f64 / n as f64 / 1e6;
    println!(
        "{n} results of {STEPS} steps x {} KB output (~{mb:.2} MB JSON each) per path and round, {rounds} rounds, {CONCURRENCY} concurrent clients",
        OUTPUT_BYTES / 1024
    );
    let rest_bodies: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    let xml_bodies: Vec<String> = docs
        .iter()
        .map(|d| {
            let call = MethodCall { name: "add_results".into(), params: vec![to_xmlrpc(&d["client_info"]), to_xmlrpc(&d["results"])] };
            call.to_xml().unwrap()
        })
        .collect();
    // The raw side writes into the recorder's own file, next to its rows, under one of its tagsets.
    post_all(&rec, &client, format!("http://{addr}/api/v1/results"), "application/json", rest_bodies[..1].to_vec()).await;
    let tagset_id: i64 = {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row("SELECT min(id) FROM tagsets", [], |r| r.get(0)).unwrap()
    };
    let docs = std::sync::Arc::new(docs);
    let (mut raw, mut rest, mut xml) = (Vec::new(), Vec::new(), Vec::new());
    // RECORDER_BENCH_ONLY=raw|rest|xmlrpc runs one path alone (for `perf`).
    let only = std::env::var("RECORDER_BENCH_ONLY").unwrap_or_default();
    let runs = |p: &str| only.is_empty() || only == p;
    for round in 1..=rounds {
        // The three take turns in a rotating order, so no path always follows the same one.
        for path in ["raw", "rest", "xmlrpc"].iter().cycle().skip((round - 1) % 3).take(3) {
            if !runs(path) {
                continue;
            }
            match *path {
                "raw" => {
                    let (db2, docs2) = (db.clone(), docs.clone());
                    let cpu0 = cpu();
                    raw.push(tokio::task::spawn_blocking(move || raw_inserts(&db2, &docs2, tagset_id)).await.unwrap());
                    if std::env::var_os("RECORDER_BENCH_TIMINGS").is_some() {
                        print_cpu(cpu0, n);
                    }
                }
                "rest" => rest
                    .push(post_all(&rec, &client, format!("http://{addr}/api/v1/results"), "application/json", rest_bodies.clone()).await),
                _ => xml.push(post_all(&rec, &client, format!("http://{addr}/xmlrpc"), "text/xml", xml_bodies.clone()).await),
            }
        }
        let f = |v: &Vec<f64>| v.last().map_or("-".to_owned(), |r| format!("{r:.1}"));
        let load = std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| l.split(' ').next().map(str::to_owned)).unwrap_or_default();
        println!("round {round}: raw {}, REST {}, XML-RPC {} results/s (load {load})", f(&raw), f(&rest), f(&xml));
    }
    if !only.is_empty() {
        return;
    }
    let (raw_m, rest_m, xml_m) = (median(raw.clone()), median(rest.clone()), median(xml.clone()));
    println!("REST ingest:     {rest_m:8.1} results/s (median of {rounds})");
    println!("XML-RPC ingest:  {xml_m:8.1} results/s (median of {rounds})");
    println!("raw SQLite:      {raw_m:8.1} results/s (same rows, prepared INSERTs, one transaction each, WAL, synchronous=NORMAL)");

    let t = Instant::now();
    let db3 = db.clone();
    tokio::task::spawn_blocking(move || fill(&db3)).await.unwrap();
    let total = rec.row_counts().await.unwrap()[0];
    println!("filled to {total} stored results in {:.1}s", t.elapsed().as_secs_f64());

    let url = format!("http://{addr}/packages/page");
    let mut lat = Vec::with_capacity(PAGE_GETS);
    for _ in 0..PAGE_GETS {
        let t = Instant::now();
        let r = client.get(&url).send().await.unwrap();
        assert!(r.status().is_success());
        let body = r.text().await.unwrap();
        lat.push(t.elapsed());
        assert_eq!(body.matches("<li class=\"cell").count(), PLATFORMS);
    }
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.5).as_secs_f64() * 1e3, percentile(&lat, 0.99).as_secs_f64() * 1e3);
    println!("package page ({PLATFORMS} platforms, {total} results stored): p50 {p50:.2} ms, p99 {p99:.2} ms over {PAGE_GETS} GETs");

    if let Ok(out) = std::env::var("RECORDER_BENCH_JSON") {
        let raw_is = "raw SQLite inserts (same rows, 1 transaction each)";
        let doc = json!({
            "rows": [
                {"figure": "recorder ingest REST", "unit": "results/s", "paddock": rest_m, "baseline": raw_m, "baseline_is": raw_is},
                {"figure": "recorder ingest XML-RPC", "unit": "results/s", "paddock": xml_m, "baseline": raw_m, "baseline_is": raw_is},
                {"figure": "recorder package page p50 (100k results)", "unit": "ms", "paddock": p50, "baseline": null, "baseline_is": "-"},
                {"figure": "recorder package page p99 (100k results)", "unit": "ms", "paddock": p99, "baseline": null, "baseline_is": "-"},
            ],
            "samples": {"results_per_round": n, "rounds": rounds, "concurrency": CONCURRENCY, "raw": raw, "rest": rest, "xmlrpc": xml},
        });
        std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }
}
