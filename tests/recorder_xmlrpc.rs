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
