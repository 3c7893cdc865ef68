//! A guest that floods its serial console: on a local host (QEMU/virtlogd write the file) the
//! console file stays within `limits.console`, says it was cut, keeps the guest's newest
//! lines, and nothing of it (rotated copies included) is left once the VM is gone.

use std::time::{Duration, Instant};

use paddock::runs::Trigger;

use super::*;

const CAP: u64 = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_flooding_its_console_leaves_a_capped_marked_console_file() {
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(
        dir.path(),
        "23400-23404",
        PER_VM,
        r#"
[[jobs]]
name = "console-flood"
images = ["tiny"]
[[jobs.steps]]
name = "flood-the-console"
type = "build"
command = "yes pdkt3-console-flood-line-0123456789abcdefghijklmnopqrstuvwxyz-0123456789abcdefghijklmnopqrstuvwxyz | head -n 20000 > /dev/ttyS0; echo PDKT3-CONSOLE-FLOOD-DONE > /dev/ttyS0; sleep 600"
timeout = "20m"

[limits]
console = "64KiB"
"#,
    );
    assert_eq!(fleet.limits.console_bytes, CAP);
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let ids = daemon.runs.trigger("console-flood", None, Trigger::Manual { by: "alice".into() }).await.unwrap();
    let row = wait_for_run(&daemon, &ids[0], Duration::from_secs(300), |r| r.state.starts_with("running")).await;
    let vm = row.vm_name.clone().expect("a running run names its VM");
    let consoles = dir.path().join("state/consoles");
    let console = consoles.join(format!("{vm}.log"));

    // 20,000 lines of 95 bytes (1.9 MB, 29 times the cap) go to the serial port; the file
    // is looked at while they arrive.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut largest = 0u64;
    let text = loop {
        let on_disk: u64 = std::fs::read_dir(&consoles).unwrap().flatten().map(|e| e.metadata().map(|m| m.len()).unwrap_or(0)).sum();
        largest = largest.max(on_disk);
        let text = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
        if text.contains("PDKT3-CONSOLE-FLOOD-DONE") {
            break text;
        }
        assert!(Instant::now() < deadline, "the flood never ended; console holds {} bytes", text.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Checked every 200 ms: the margin is over what a TCG guest's serial port writes in that
    // (it wrote ~0.45 MB/s in a quiet fresh-clone run, past a margin of one second's worth).
    assert!(largest <= CAP + (256 << 10), "the consoles folder held {largest} bytes at most");
    let marker = text.find("[paddock: console cut: ").unwrap_or_else(|| panic!("no cut marker in:\n{text}"));
    let cut: u64 = text[marker + "[paddock: console cut: ".len()..].split(' ').next().unwrap().parse().unwrap();
    assert!(cut >= 20_000 * 95 - 2 * CAP, "the marker says {cut} bytes were cut");
    assert!(text.contains("limits.console = 65536 bytes"), "{}", &text[marker..marker + 120]);
    // The newest lines are kept whole after the marker.
    assert!(
        text[marker..].contains("pdkt3-console-flood-line-0123456789abcdefghijklmnopqrstuvwxyz-0123456789abcdefghijklmnopqrstuvwxyz\r\n")
    );
    assert!(!text.contains('\0'), "a hole of zeros in the console");
    let rotated: Vec<_> = std::fs::read_dir(&consoles)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".log"))
        .collect();
    assert!(rotated.is_empty(), "rotated copies left: {rotated:?}");

    daemon.runs.cancel(&row.id, "alice").await.unwrap();
    let row = wait_for_run(&daemon, &row.id, Duration::from_secs(120), finished).await;
    assert_eq!(row.state, "cancelled", "{row:?}");
    wait_until("the console files to go with the VM", Duration::from_secs(60), async || {
        std::fs::read_dir(&consoles).unwrap().next().is_none()
    })
    .await;
    daemon.stop().await.unwrap();
}
