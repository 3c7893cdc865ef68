//! Loads the recorder's package and result pages in headless Chromium (served by the real
//! binary) and checks the grid puts the failing platform first; keeps a screenshot in
//! `test-artifacts/`.

mod support;

use std::time::Duration;

use support::chromium;
use support::recorder::{RecorderProcess, http_post_json};

fn result(host: &str, success: bool, seq: u32) -> String {
    serde_json::json!({
        "client_info": {"package": "gadget", "arch": "aarch64", "host": host, "tags": ["release"],
                        "success": success, "duration": 42.0},
        "results": [
            {"name": "build", "type": "build", "command": "cargo build", "status": 0, "output": "Compiling gadget\n", "duration": 30.0},
            {"name": "test", "type": "test", "command": "cargo test", "status": if success { 0 } else { 101 },
             "output": format!("running 40 tests (seq {seq})\n").repeat(60), "errout": if success { "" } else { "thread 'io' panicked" }, "duration": 12.0}
        ],
        "idempotency_key": format!("seed-{seq}")
    })
    .to_string()
}

#[test]
fn package_grid_shows_the_failing_platform_first() {
    let mut rec = RecorderProcess::start(&["--token", "seed=s3cret"]);
    // The failing platform reports first (oldest), so only "failures first" can put it first.
    let mut failing_key = String::new();
    for (seq, (host, ok)) in [("rpi-broken", false), ("ampere-1", true), ("graviton-2", true)].into_iter().enumerate() {
        let (status, body) = http_post_json(&rec.addr, "/api/v1/results", Some("s3cret"), &result(host, ok, seq as u32));
        assert_eq!(status, 201, "{body}");
        if !ok {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            failing_key = v["result_key"].as_str().unwrap().to_owned();
        }
    }

    let profile = tempfile::tempdir().unwrap();
    let page = format!("{}/packages/gadget", rec.url());
    let dom = chromium::run(profile.path(), &["--dump-dom", &page], Duration::from_secs(90));
    let positions: Vec<usize> = ["data-host=\"rpi-broken\"", "data-host=\"graviton-2\"", "data-host=\"ampere-1\""]
        .iter()
        .map(|h| dom.find(h).unwrap_or_else(|| panic!("{h} not in the rendered DOM:\n{dom}")))
        .collect();
    assert!(positions.is_sorted(), "grid order should be failing, then newest first: {positions:?}");
    let first_cell = &dom[dom.find("<li class=\"cell").unwrap()..];
    assert!(first_cell.starts_with("<li class=\"cell fail\""), "{}", &first_cell[..80]);
    assert!(dom.contains(&format!("href=\"/results/{failing_key}\"")));

    let result_dom =
        chromium::run(profile.path(), &["--dump-dom", &format!("{}/results/{failing_key}", rec.url())], Duration::from_secs(90));
    assert!(result_dom.contains("cargo test") && result_dom.contains("thread 'io' panicked"), "{result_dom}");
    assert!(result_dom.contains("<details><summary>output"), "long output is folded");
    assert!(result_dom.contains("id=\"verdict\">FAILED"));

    let shot = support::artifacts().join("recorder-package-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium::run(profile.path(), &[&format!("--screenshot={}", shot.display()), "--window-size=1200,700", &page], Duration::from_secs(90));
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert!(png.len() > 1000 && png.starts_with(b"\x89PNG"), "screenshot is not a PNG");

    assert!(rec.stop().success());
}

/// A platform that passed three times and then failed: the package page says "3 of last 4
/// passed" and links its first failure (the likely regression) and its last pass.
#[test]
fn package_page_shows_a_platforms_history_and_its_first_failure() {
    let mut rec = RecorderProcess::start(&["--token", "seed=s3cret"]);
    let mut keys = Vec::new();
    for (seq, ok) in [true, true, true, false].into_iter().enumerate() {
        let (status, body) = http_post_json(&rec.addr, "/api/v1/results", Some("s3cret"), &result("rpi-4", ok, 10 + seq as u32));
        assert_eq!(status, 201, "{body}");
        keys.push(serde_json::from_str::<serde_json::Value>(&body).unwrap()["result_key"].as_str().unwrap().to_owned());
    }
    let profile = tempfile::tempdir().unwrap();
    let page = format!("{}/packages/gadget", rec.url());
    let dom = chromium::run(profile.path(), &["--dump-dom", &page], Duration::from_secs(90));
    let cell = &dom[dom.find("data-host=\"rpi-4\"").expect("the platform's cell")..];
    let cell = &cell[..cell.find("</li>").unwrap()];
    assert!(cell.contains("<span class=\"passed-of-last\">3 of last 4 passed</span>"), "{cell}");
    assert!(cell.contains(&format!("first failure: <a href=\"/results/{0}\">result {0}</a>", keys[3])), "{cell}");
    assert!(cell.contains(&format!("last pass: <a href=\"/results/{0}\">result {0}</a>", keys[2])), "{cell}");
    assert_eq!(cell.matches("<i class=\"ok\"></i>").count(), 3, "{cell}");
    assert_eq!(cell.matches("<i class=\"fail\"></i>").count(), 1, "{cell}");
    // The dashboard's sheet is the page's.
    assert!(dom.contains("<link rel=\"stylesheet\" href=\"/static/style.css\">"));
    assert!(dom.contains("<header class=\"top\">"));

    let shot = support::artifacts().join("recorder-platform-history.png");
    let _ = std::fs::remove_file(&shot);
    chromium::run(profile.path(), &[&format!("--screenshot={}", shot.display()), "--window-size=1200,700", &page], Duration::from_secs(90));
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    assert!(png.len() > 1000 && png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
    assert!(rec.stop().success());
}
