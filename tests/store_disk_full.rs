//! Fault test: the state directory's disk fills up under the store. Writes must fail with a
//! disk-full error (not a panic, not a silent loss), and once space is freed the store must open
//! again, pass `PRAGMA integrity_check`, and hold every row that was reported written, whole.
//!
//! The state directory is a 4 MiB tmpfs mounted for the test (it needs root, as `make test`
//! runs); a filler file takes most of it so the store reaches ENOSPC after a few runs, and
//! deleting the filler is how space is "freed".

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::Utc;
use paddock::store::{RunEnd, RunRow, Store, StoreError};

/// Mounts a tmpfs of `size` on a fresh temporary directory and unmounts it on drop, so a failed
/// assertion never leaves a mount behind.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temporary directory");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(out.status.success(), "mounting a tmpfs needs root (as `make test` runs): {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(self.dir.path()).status().is_ok_and(|s| s.success());
        if !ok {
            // Something (a store thread still closing) holds a file: detach now, freed when closed.
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

/// A result document of about `len` bytes whose content depends on `id`, so a row read back can
/// be compared byte for byte with what was written.
fn result_json(id: &str, len: usize) -> String {
    let unit = format!("{id}-0123456789abcdef;");
    let body: String = unit.repeat(len / unit.len() + 1)[..len].to_string();
    serde_json::json!({ "run_id": id, "log": body }).to_string()
}

fn row(id: &str) -> RunRow {
    let now = Utc::now();
    RunRow {
        id: id.into(),
        job: "demo".into(),
        image: "tiny-x86_64".into(),
        trigger: "manual".into(),
        requested_by: None,
        state: "reporting".into(),
        host: None,
        vm_name: None,
        scheduled_at: None,
        created_at: now,
        started_at: Some(now),
        finished_at: None,
        outcome: None,
        reason: None,
        result_json: None,
        log_path: None,
    }
}

fn end(id: &str, json: String) -> RunEnd {
    RunEnd {
        run_id: id.into(),
        from: "reporting".into(),
        state: "done".into(),
        outcome: "success".into(),
        reason: None,
        result_json: json,
        finished_at: Utc::now(),
        recorders: vec!["lab".into()],
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn is_disk_full(e: &StoreError) -> bool {
    matches!(e, StoreError::DiskFull { .. })
}

/// How far one run got before the disk filled.
enum Written {
    /// `insert_run` and `finish_run` both succeeded.
    Finished(String),
    /// `insert_run` succeeded, `finish_run` failed: the run must still be unfinished.
    InsertedOnly(String),
}

#[tokio::test]
async fn a_full_state_disk_fails_writes_clearly_and_leaves_an_intact_store() {
    const RESULT_LEN: usize = 48 * 1024;
    let fs = Tmpfs::mount("4m");
    let filler: PathBuf = fs.path().join("filler");
    std::fs::write(&filler, vec![0x5a_u8; 2 * 1024 * 1024]).expect("writing the filler file");
    let db = fs.path().join("paddock.db");

    let store = Store::open(&db).await.expect("opening the store on the tmpfs");
    let mut written = Vec::new();
    let mut failure = None;
    // 2 MiB free and about 100 KiB per finished run (the result is stored in the run and in its
    // outbox entry): the disk must be full long before 200 runs.
    for i in 0..200 {
        let id = format!("run-{i:04}");
        if let Err(e) = store.insert_run(&row(&id)).await {
            failure = Some(e);
            break;
        }
        match store.finish_run(end(&id, result_json(&id, RESULT_LEN))).await {
            Ok(true) => written.push(Written::Finished(id)),
            Ok(false) => panic!("run {id} was not in the state its end expected"),
            Err(e) => {
                written.push(Written::InsertedOnly(id));
                failure = Some(e);
                break;
            }
        }
    }
    let failure = failure.expect("the store never reported the full disk");
    let message = chain(&failure);
    assert!(is_disk_full(&failure), "not a disk-full error: {message}");
    // The operator reads which file is on the full disk, and SQLite's own words after it.
    assert!(message.starts_with(&format!("the disk holding the store at {} is full", db.display())), "unclear error: {message}");
    assert!(message.contains("database or disk is full"), "SQLite's cause is lost: {message}");
    let finished: Vec<&str> = written.iter().filter_map(|w| if let Written::Finished(id) = w { Some(id.as_str()) } else { None }).collect();
    assert!(finished.len() >= 3, "the disk filled after only {} runs", finished.len());

    // While full, reads still answer, and another write of twice the size fails the same clear
    // way. (A small one may fit: the refused transaction's WAL frames are reused.)
    let first = store.run(finished[0]).await.expect("reading while the disk is full").expect("first run present");
    assert_eq!(first.result_json.as_deref(), Some(result_json(finished[0], RESULT_LEN).as_str()));
    let big = RunRow { result_json: Some(result_json("run-after-full", 2 * RESULT_LEN)), ..row("run-after-full") };
    let again = store.insert_run(&big).await.expect_err("a big write on a full disk succeeded");
    assert!(is_disk_full(&again), "not a disk-full error: {}", chain(&again));
    drop(store);

    // Free the space, then everything reported written must be there, whole.
    std::fs::remove_file(&filler).expect("removing the filler file");
    let store = Store::open(&db).await.expect("reopening the store after freeing space");
    for w in &written {
        match w {
            Written::Finished(id) => {
                let r = store.run(id).await.unwrap().unwrap_or_else(|| panic!("{id} lost"));
                assert_eq!(r.state, "done", "{id}");
                assert_eq!(r.outcome.as_deref(), Some("success"), "{id}");
                assert_eq!(r.result_json.as_deref(), Some(result_json(id, RESULT_LEN).as_str()), "{id} result");
                let outbox = store.outbox_for_run(id).await.unwrap();
                assert_eq!(outbox.len(), 1, "{id} outbox");
                assert_eq!(outbox[0].payload, result_json(id, RESULT_LEN), "{id} outbox payload");
            }
            Written::InsertedOnly(id) => {
                // finish_run is one transaction: a failed finish leaves no trace of itself.
                let r = store.run(id).await.unwrap().unwrap_or_else(|| panic!("{id} lost"));
                assert_eq!(r.state, "reporting", "{id} half-finished");
                assert_eq!(r.result_json, None, "{id} half-finished");
                assert!(store.outbox_for_run(id).await.unwrap().is_empty(), "{id} has an outbox entry");
            }
        }
    }
    assert!(store.run("run-after-full").await.unwrap().is_none(), "the refused insert was stored");
    // The store is writable again.
    store.insert_run(&row("run-after-free")).await.expect("writing after space was freed");
    store.finish_run(end("run-after-free", result_json("run-after-free", RESULT_LEN))).await.unwrap();
    drop(store);

    let c = rusqlite::Connection::open(&db).unwrap();
    let check: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let runs: i64 = c.query_row("SELECT count(*) FROM runs", [], |r| r.get(0)).unwrap();
    assert_eq!(runs as usize, written.len() + 1);
    drop(c);
    eprintln!("disk full after {} finished runs: {message}", finished.len());
}
