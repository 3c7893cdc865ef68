//! Headless Chromium with a fresh profile per call, killed at a deadline.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium with `args` and the profile `profile`; returns its stdout. Panics when
/// it fails or is not done within `limit` (then it is killed).
pub fn run(profile: &Path, args: &[&str], limit: Duration) -> String {
    std::fs::create_dir_all(profile).unwrap();
    let stderr = std::fs::File::create(profile.join("chromium.stderr")).unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("starting chromium");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).ok();
        s
    });
    let status = super::wait_with_deadline(&mut child, limit);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("chromium did not finish within {limit:?}: {args:?}");
    };
    let out = reader.join().unwrap();
    assert!(
        status.success(),
        "chromium failed ({status}): {}",
        std::fs::read_to_string(profile.join("chromium.stderr")).unwrap_or_default()
    );
    out
}

/// Opens `url` at 1366×900 and lets its scripts run for `budget` of virtual time (so an
/// EventSource delivers); returns the DOM, or with `screenshot` writes a PNG there.
pub async fn page(profile: &Path, url: &str, screenshot: Option<&Path>, budget: Duration) -> String {
    let mut args = vec![
        "--hide-scrollbars".to_string(),
        "--window-size=1366,900".to_string(),
        format!("--virtual-time-budget={}", budget.as_millis()),
    ];
    args.push(match screenshot {
        Some(p) => format!("--screenshot={}", p.display()),
        None => "--dump-dom".to_string(),
    });
    args.push(url.to_string());
    let profile = profile.to_path_buf();
    let limit = Duration::from_secs(90) + budget;
    tokio::task::spawn_blocking(move || run(&profile, &args.iter().map(String::as_str).collect::<Vec<_>>(), limit)).await.unwrap()
}
