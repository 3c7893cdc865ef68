//! The dashboard in headless Chromium against a server on port 0: the grid
//! order, the sections, the live log pane fed over SSE, the run page, and
//! screenshots under `test-artifacts/`.

use std::path::PathBuf;

use std::sync::atomic::Ordering;

use paddock::api::Shared;

use crate::common::{lab, row, serve};
use crate::router::paddock_finish;
use crate::support::{artifacts, chromium};

/// Plays the step runner for `run`: once a browser follows its log, writes one
/// more line and ends the run, so the page's event stream ends and headless
/// Chromium's virtual time (which waits for open requests) can move on.
fn finish_when_followed(state: Shared, run: &str, log: PathBuf) -> tokio::task::JoinHandle<()> {
    let run = run.to_string();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while state.follows.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no browser followed the log of {run}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"linked paddock (written while the browser watched)\n").unwrap();
        state.store.pulses().log_written(&run);
        paddock_finish(&state.store, &run).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium() {
    let l = lab(false).await;
    let url = serve(l.state.clone()).await;
    let profile = l.dir.path().join("chromium");
    let drained = paddock::hosts::Block::Drained { reason: "rack power work".into(), by: "root".into(), at: chrono::Utc::now() };
    l.store.set_host_block("rack-2", Some(drained), None).await.unwrap();

    // Without a token: the sign-in page, not the fleet.
    let dom = chromium::page(&profile.join("anon"), &format!("{url}/"), None, std::time::Duration::from_secs(5)).await;
    assert!(dom.contains("Sign in") && !dom.contains("id=\"grid\""), "{dom}");

    // `?token=` sets the cookie and redirects; the page and its EventSource use the cookie.
    let runner = finish_when_followed(l.state.clone(), &l.running, l.log.clone());
    let dom = chromium::page(&profile.join("a"), &format!("{url}/?token={}", l.bob), None, std::time::Duration::from_secs(5)).await;
    runner.await.unwrap();
    assert!(dom.contains("id=\"hosts\""), "{dom}");
    assert!(dom.contains("drained by root: rack power work"), "the drain reason is shown: {dom}");
    // The grid: failing jobs first, then passing ones newest first.
    let order: Vec<&str> = dom.split("data-job=\"").skip(1).map(|s| &s[..s.find('"').unwrap()]).collect();
    assert_eq!(order, ["nightly", "docs", "demo"], "grid rows");
    assert!(dom.contains("class=\"cell fail\""), "a failed cell is marked");
    assert!(dom.contains("class=\"cell infra\""), "an infrastructure failure is marked apart");
    // Capacity bars: 2 of 4 VMs on `local`.
    assert!(dom.contains("width: 50%"), "{dom}");
    // Held VM and the active grant.
    assert!(dom.contains("debug t7 on arm") && dom.contains("Held for inspection"), "{dom}");
    // The live pane was filled by JS from the SSE follow (the server-side page
    // only says that live output needs JavaScript).
    let pane = &dom[dom.rfind("<pre").expect("a live pane")..];
    assert!(pane.contains("data-follow=\"r-running\""), "{pane}");
    let pane = &pane[..pane.find("</pre>").unwrap()];
    assert!(pane.contains("compiling..."), "live log pane: {pane}");
    assert!(pane.contains("written while the browser watched"), "live log pane: {pane}");
    assert!(pane.contains("data-ended=\"success\""), "the pane saw the end: {pane}");
    assert!(!pane.contains("needs JavaScript"), "{pane}");

    // The run page of a failed run: its steps from the result document.
    let dom = chromium::page(&profile.join("a"), &format!("{url}/runs/r-nightly-arm"), None, std::time::Duration::from_secs(5)).await;
    assert!(dom.contains("exit 2") && dom.contains("build-failure"), "{dom}");

    // Screenshots, with another run in progress for the live pane.
    let log2 = l.log.with_file_name("r-live-2.log");
    std::fs::write(&log2, "== step 1: setup\nLinux paddock 6.1.0 x86_64\n== step 2: build\ncc -O2 -c main.c\ncc -O2 -c net.c\n").unwrap();
    let mut live = row("r-live-2", "docs", "tiny-x86_64", "running:1", 2);
    live.log_path = Some(log2.display().to_string());
    l.store.insert_run(&live).await.unwrap();
    let dir = artifacts();
    let runner = finish_when_followed(l.state.clone(), "r-live-2", log2);
    chromium::page(&profile.join("a"), &format!("{url}/"), Some(&dir.join("dashboard.png")), std::time::Duration::from_secs(5)).await;
    runner.await.unwrap();
    chromium::page(&profile.join("a"), &format!("{url}/runs/r-nightly-arm"), Some(&dir.join("run.png")), std::time::Duration::from_secs(5))
        .await;
    for f in ["dashboard.png", "run.png"] {
        assert!(std::fs::metadata(dir.join(f)).unwrap().len() > 10_000, "{f} looks empty");
    }
}

/// The fleet page lists warm-start templates: image, host, key, state, size and clones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_lists_templates_in_chromium() {
    // Public reads: no sign-in, so the page can follow a finished run, whose stream ends at once
    // (a live one would keep Chromium's virtual time from moving on).
    let t = crate::templates::template_lab(true).await;
    let url = serve(t.lab.state.clone()).await;
    let profile = t.lab.dir.path().join("chromium");
    let dom = chromium::page(&profile, &format!("{url}/?follow=r-docs-1"), None, std::time::Duration::from_secs(2)).await;
    let at = dom.find("id=\"templates\"").unwrap_or_else(|| panic!("no templates section: {dom}"));
    let section = &dom[at..at + dom[at..].find("</section>").unwrap()];
    let rows: Vec<&str> = section.split("<tr>").skip(2).collect();
    assert_eq!(rows.len(), 3, "{section}");
    let ready = rows.iter().find(|r| r.contains(">ready<")).unwrap_or_else(|| panic!("{section}"));
    assert!(ready.contains("<td>warm-deb</td><td>local</td>") && ready.contains(&t.key[..16]), "{ready}");
    assert!(ready.contains("MiB</td><td>2</td>"), "two clones: {ready}");
    assert!(rows.iter().any(|r| r.contains("rack-2") && r.contains(">stale<")), "{section}");
    assert!(rows.iter().any(|r| r.contains("bbbbbbbbbbbbbbbb") && r.contains(">building<")), "{section}");
}

/// The fleet page shows persistent machines: host, domain, snapshot, state and last run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_page_shows_persistent_machines_in_chromium() {
    // Public reads and a finished run followed, as above: the page's stream ends at once.
    let l = crate::machines::machine_lab(true).await;
    let url = serve(l.state.clone()).await;
    let dom =
        chromium::page(&l.dir.path().join("chromium"), &format!("{url}/?follow=r-docs-1"), None, std::time::Duration::from_secs(2)).await;
    let at = dom.find("id=\"machines\"").unwrap_or_else(|| panic!("no machines section: {dom}"));
    let section = &dom[at..at + dom[at..].find("</section>").unwrap()];
    let row = |name: &str| {
        let start = section.find(&format!("data-machine=\"{name}\"")).unwrap_or_else(|| panic!("no row {name}: {section}"));
        &section[start..start + section[start..].find("</tr>").unwrap()]
    };
    let mac = row("mac-mini");
    assert!(mac.contains("<td>local</td>") && mac.contains("pdkt4-macos-14") && mac.contains(">clean<"), "{mac}");
    assert!(mac.contains(">running<") && mac.contains("href=\"/runs/r-mac-2\"") && mac.contains("1 queued"), "{mac}");
    assert!(mac.contains("href=\"/runs/r-mac-1\"") && mac.contains("build-failure") && mac.contains("cell fail"), "{mac}");
    let win = row("win-box");
    assert!(win.contains(">queued<") && win.contains("2 queued") && win.contains("r-win-0"), "{win}");
    let spare = row("spare");
    assert!(spare.contains(">idle<") && spare.contains("<td>-</td>"), "{spare}");
}
