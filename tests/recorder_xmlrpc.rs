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
