//! Drives every pony-build XML-RPC method of the real `paddock recorder` binary with Python's
//! standard `xmlrpc.client` (not our code), then stops it with SIGTERM.

mod support;

use std::process::Command;

use support::recorder::RecorderProcess;

#[test]
fn python_xmlrpc_client_drives_every_method() {
    let rec = RecorderProcess::start(&["--token", "ci=s3cret"]);
    let script = support::repo().join("tests/recorder/client.py");
    let out = Command::new("python3").arg(&script).arg(rec.url()).arg("s3cret").output().expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client.py failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("all XML-RPC checks passed"), "{stdout}");

    let db = rec.db_path();
    let mut rec = rec;
    let status = rec.stop();
    assert!(status.success(), "recorder exited with {status} after SIGTERM");
    // What Python stored is in the file, whole: 2 results, 5 steps.
    let conn = rusqlite::Connection::open(db).unwrap();
    let results: i64 = conn.query_row("SELECT count(*) FROM results", [], |r| r.get(0)).unwrap();
    let steps: i64 = conn.query_row("SELECT count(*) FROM steps", [], |r| r.get(0)).unwrap();
    assert_eq!((results, steps), (2, 5));
}

/// `--token-file` (what `paddock-recorder.service` passes from `LoadCredential=`): its
/// submitters are admitted and everyone else refused; a bad line stops the recorder
/// with the file and line named, never the line's text.
#[test]
fn a_token_file_admits_its_submitters_and_a_bad_line_is_named_without_its_text() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "# submitters, NAME=SECRET\n\nci=s3cret\n").unwrap();
    let rec = RecorderProcess::start(&["--token-file", file.to_str().unwrap()]);
    let script = support::repo().join("tests/recorder/client.py");
    let out = Command::new("python3").arg(&script).arg(rec.url()).arg("s3cret").output().expect("running python3");
    assert!(out.status.success(), "client.py: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    std::fs::write(&file, "ci=s3cret\nhunter2-without-a-name\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_paddock"))
        .args(["recorder", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("r.db"))
        .arg("--token-file")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("{}:2: expected NAME=SECRET", file.display())), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the secret was printed: {stderr}");
}

/// pony-build's `UploadAFile` flow (`tests/recorder/upload.py`: `add_results`, then `POST
/// /upload` with the auth key it returned) stores files that are read back byte for byte.
#[test]
fn pony_build_uploads_are_stored_listed_and_served_back() {
    let mut rec = RecorderProcess::start(&["--token", "ci=s3cret"]);
    let script = support::repo().join("tests/recorder/upload.py");
    let out = Command::new("python3").arg(&script).arg(rec.url()).arg("s3cret").output().expect("running python3");
    assert!(out.status.success(), "upload.py failed\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let (status, body) = support::recorder::http_get(&rec.addr, &format!("/api/v1/results/{key}"));
    assert_eq!(status, 200, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    let files = r["files"].as_array().unwrap();
    let names: Vec<_> =
        files.iter().map(|f| (f["filename"].as_str().unwrap(), f["visible"].as_bool().unwrap(), f["size"].as_u64().unwrap())).collect();
    assert_eq!(names, [("eggs-1.0-py3.egg", true, 9), ("notes.txt", false, 1)]);
    let (status, bytes) = support::recorder::http_get_bytes(&rec.addr, files[0]["url"].as_str().unwrap());
    assert_eq!(status, 200);
    assert_eq!(bytes, b"egg\x00bytes");
    let (_, page) = support::recorder::http_get(&rec.addr, &format!("/results/{key}"));
    assert!(page.contains(&format!("<a href=\"/results/{key}/files/eggs-1.0-py3.egg\">eggs-1.0-py3.egg</a>")), "{page}");
    assert!(!page.contains("notes.txt"), "a file uploaded with visible=no is not listed on the page");
    assert!(rec.stop().success());
}

fn submit(rec: &RecorderProcess, host: &str, success: bool, steps: usize) -> (u16, String) {
    let results: Vec<_> = (0..steps).map(|i| serde_json::json!({"name": format!("s{i}"), "status": 0, "output": "ok"})).collect();
    let body = serde_json::json!({
        "client_info": {"package": "keep", "arch": "x86_64", "host": host, "success": success},
        "results": results,
    });
    support::recorder::http_post_json(&rec.addr, "/api/v1/results", Some("s3cret"), &body.to_string())
}

fn submit_key(rec: &RecorderProcess, host: &str, success: bool) -> String {
    let (status, body) = submit(rec, host, success, 1);
    assert_eq!(status, 201, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["result_key"].as_str().unwrap().to_owned()
}

/// The standalone recorder takes fleet.toml's `[retention]` as flags: each platform's newest
/// `--keep-last` stay, older passes go after `--max-age`, older failures only after
/// `--failure-max-age`. Exactly those results go, and nothing else.
#[test]
fn standalone_retention_removes_exactly_what_its_flags_say() {
    let mut rec = RecorderProcess::start(&[
        "--token",
        "ci=s3cret",
        "--keep-last",
        "2",
        "--max-age",
        "2s",
        "--failure-max-age",
        "1h",
        "--retention-every",
        "1s",
    ]);
    // Platform a: pass, fail, pass, pass, pass; platform b: one pass.
    let a: Vec<String> = [true, false, true, true, true].into_iter().map(|ok| submit_key(&rec, "a", ok)).collect();
    let b = submit_key(&rec, "b", true);
    let gone = [&a[0], &a[2]];
    let kept = [&a[1], &a[3], &a[4], &b];
    let status = |key: &str| support::recorder::http_get(&rec.addr, &format!("/api/v1/results/{key}")).0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while gone.iter().any(|k| status(k) != 404) {
        assert!(std::time::Instant::now() < deadline, "the old passes {gone:?} were not removed within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for k in kept {
        assert_eq!(status(k), 200, "result {k} must be kept (newest of its platform, or a failure within 1h)");
    }
    // A few more passes of the policy change nothing.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(kept.iter().all(|k| status(k) == 200));
    let conn = rusqlite::Connection::open(rec.db_path()).unwrap();
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!((count("SELECT count(*) FROM results"), count("SELECT count(*) FROM steps")), (4, 4));
    assert!(rec.stop().success());
}

/// Caps as flags (fleet.toml's `[limits]` keys): a result over `--result-steps` is refused and
/// nothing stored; without retention flags nothing is ever removed.
#[test]
fn standalone_caps_refuse_what_is_over_them() {
    let mut rec = RecorderProcess::start(&["--token", "ci=s3cret", "--result-steps", "2", "--result-body", "4KiB"]);
    assert_eq!(submit(&rec, "a", true, 2).0, 201);
    let (status, body) = submit(&rec, "a", true, 3);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("is more than the limit of 2"), "{body}");
    let big = "x".repeat(5000);
    let (status, _) = support::recorder::http_post_json(&rec.addr, "/api/v1/results", Some("s3cret"), &big);
    assert_eq!(status, 413);
    let conn = rusqlite::Connection::open(rec.db_path()).unwrap();
    assert_eq!(conn.query_row("SELECT count(*) FROM results", [], |r| r.get::<_, i64>(0)).unwrap(), 1);
    assert!(rec.stop().success());
}

/// A bad retention or cap flag stops the recorder before it listens, naming the flag.
#[test]
fn bad_retention_and_cap_flags_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    for (flags, says) in [
        (&["--max-age", "5x"][..], "--max-age <DURATION>"),
        (&["--max-age", "5x"][..], "unknown unit `x`"),
        (&["--keep-last", "0"][..], "--keep-last <N>"),
        (&["--file-size", "64MB"][..], "--file-size <SIZE>"),
        (&["--max-age", "1h", "--failure-max-age", "10m"][..], "--failure-max-age 10m is shorter than --max-age 1h"),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_paddock"))
            .args(["recorder", "--listen", "127.0.0.1:0", "--token", "ci=s3cret", "--db"])
            .arg(&db)
            .args(flags)
            .env("PADDOCK_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = support::wait_with_deadline(&mut child, std::time::Duration::from_secs(20)).expect("the recorder must exit");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{flags:?} was accepted");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
}
