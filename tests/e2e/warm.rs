//! Warm starts of the real debian-12 image (issue 18), in one test so that two template
//! builds serve every check (each is a cold boot, 60-130 s under TCG): a SIGKILL of the daemon
//! while a clone restores and while a template is made leaving nothing behind, a changed image
//! rebuilding the template and removing the old one, clones with their own identity, and a
//! ready pool (`min_ready`) on the rebuilt template. Ports 26800-26809.

use std::collections::BTreeMap;
use std::time::Duration;

use paddock::runs::Trigger;

use super::*;

fn manual() -> Trigger {
    Trigger::Manual { by: "alice".into() }
}

/// Reads, right after the clone came up: RNG bytes, the clock, hostname, machine-id, host key.
const PROBE: &str = r#"
[[jobs]]
name = "probe"
images = ["debian-12"]
maintainers = ["alice"]
[[jobs.steps]]
name = "probe"
type = "test"
command = "echo rand=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'); echo time=$(date +%s); echo host=$(hostname); echo mid=$(cat /etc/machine-id); echo key=$(cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub)"
"#;

/// The debian fleet with `start = "warm"` and `extra` image lines, loaded from `dir`.
fn warm_fleet(dir: &Path, ports: &str, extra: &str) -> Fleet {
    super::debian::debian_fleet(dir, ports, &[], PROBE);
    let src = std::fs::read_to_string(dir.join("fleet.toml")).unwrap();
    let src = src.replacen("identity = \"cloud-init\"\n", &format!("identity = \"cloud-init\"\nstart = \"warm\"\n{extra}"), 1);
    load_fleet(dir, &src)
}

fn probe_output(row: &RunRow) -> (BTreeMap<String, String>, serde_json::Value) {
    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    let out = doc["results"][0]["output"].as_str().unwrap_or_default().to_string();
    let map = out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect();
    (map, doc["extras"]["timings"].clone())
}

fn templates(dir: &Path) -> Vec<paddock::vm::template::Template> {
    paddock::vm::template::list(&dir.join("state"))
}

/// The bundled guest beside debian-12, and a job on it: its run needs the room an idle
/// ready-pool clone holds on a host with one VM slot.
const TINY: &str = r#"
[[images]]
name = "tiny"
os = "linux"
arch = "x86_64"
kernel = "{out}/vmlinuz"
initrd = "{out}/initrd.img"
cmdline = "console=ttyS0 quiet no_timer_check panic=1"
memory_mib = 256
vcpus = 1
user = "root"
trusts_fleet_ca = true
boot_timeout = "3m"
identity = "cmdline"

[[jobs]]
name = "tiny-echo"
images = ["tiny"]
maintainers = ["alice"]
[[jobs.steps]]
name = "echo"
type = "test"
command = "echo tiny"
"#;

/// The ready-pool clones of debian-12 the store holds, by state.
async fn pool_rows(daemon: &Daemon) -> Vec<(String, String)> {
    let rows = daemon.store.vms().await.unwrap();
    rows.into_iter()
        .filter(|v| v.run_id.as_deref() == Some(paddock::vm::READY_POOL_RUN) && v.image == "debian-12")
        .map(|v| (v.name, v.state))
        .collect()
}

async fn idle_pool_clone(daemon: &Daemon) -> String {
    wait_for("an idle ready-pool clone", Duration::from_secs(600), async || {
        pool_rows(daemon).await.into_iter().find(|(_, st)| st == "ready").map(|(n, _)| n)
    })
    .await
}

/// Every template folder of the test's state dir, finished or not.
pub(super) fn template_dirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("state/templates")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// One state directory throughout (one daemon at a time; the SIGKILLed ones are `paddock serve`
/// processes, since two VM managers of one state dir in one process would reap each other's VMs):
///
/// 1. template A made in full by a demo run, the daemon killed while that run's clone restores:
///    the next start removes the clone and its overlay and leaves A whole;
/// 2. an image setting changed, the daemon killed while template B boots: the next start removes
///    B's domain, disk, seed and half-made folder, and leaves A as it was;
/// 3. with the image changed and `min_ready = 1` on a host with one VM slot (in-process daemon):
///    the first run makes B and A goes (no overlay is backed by it); warm clones with their own
///    identity, and a ready pool whose clone a trigger takes and that refills, while the host's
///    single slot is respected (the pool gives its clone up for a run of another image, and never
///    refills while a launch waits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_12_templates_survive_sigkills_are_rebuilt_on_change_and_serve_clones_with_their_own_identity_and_a_ready_pool() {
    // The daemon's log, shown when this long test fails.
    let _ = tracing_subscriber::fmt().with_env_filter("paddock=info").with_test_writer().try_init();
    ensure_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let ports = "26800-26809";
    warm_fleet(dir.path(), ports, "");
    let config = dir.path().join("fleet.toml");
    let clean = async |what: &str, prefix: &str| {
        wait_for(what, Duration::from_secs(300), async || {
            (domains_named(prefix).is_empty() && overlays(dir.path()).is_empty()).then_some(())
        })
        .await
    };

    // 1. Template A made in full by the demo run, which then restores its clone from it; killed
    // as soon as that clone's domain exists: the clone and its overlay go, A stays whole.
    let first = super::crash::Serve::start(&config, true);
    let _guard = DomainGuard::new(dir.path());
    let prefix = format!("paddock-{}-", &instance_id(dir.path())[..8]);
    let is_template = |n: &String| n[prefix.len()..].starts_with('t');
    let clone =
        wait_for("the demo run's clone", Duration::from_secs(1200), async || domains_named(&prefix).into_iter().find(|n| !is_template(n)))
            .await;
    first.sigkill();
    let made = templates(dir.path());
    assert_eq!(made.len(), 1, "template A is finished before its first clone restores: {:?}", template_dirs(dir.path()));
    let second = super::crash::Serve::start(&config, false);
    clean("the killed clone to be reaped", &prefix).await;
    assert!(!domains_named(&clone).contains(&clone));
    assert_eq!(templates(dir.path()), made, "{:?}", template_dirs(dir.path()));
    assert_eq!(template_dirs(dir.path()), [made[0].dir.clone()], "no stray template");
    drop(second);

    // 2. A changed image setting: the demo run starts template B; killed while B boots, the next
    // start removes B's domain, disk, seed and half-made folder, and leaves A as it was.
    let changed = |src: String| src.replacen("memory_mib = 768", "memory_mib = 800", 1);
    std::fs::write(&config, changed(std::fs::read_to_string(&config).unwrap())).unwrap();
    let third = super::crash::Serve::start(&config, true);
    wait_for("template B's domain", Duration::from_secs(300), async || domains_named(&prefix).into_iter().find(is_template)).await;
    assert_eq!(template_dirs(dir.path()).len(), 2, "{:?}", template_dirs(dir.path()));
    third.sigkill();
    let fourth = super::crash::Serve::start(&config, false);
    clean("the cut-short template to be reaped", &prefix).await;
    assert_eq!(template_dirs(dir.path()), [made[0].dir.clone()], "only the finished template A is left");
    assert_eq!(templates(dir.path()), made);
    drop(fourth);

    // 3. The changed image, pooled, beside the bundled guest on a host with one VM slot.
    let out = repo().join("images/out/x86_64");
    warm_fleet(dir.path(), ports, "min_ready = 1\n");
    let src = changed(std::fs::read_to_string(&config).unwrap()).replacen("max_vms = 4\n", "max_vms = 1\n", 1).replacen(
        "[[users]]",
        &format!("{}\n[[users]]", TINY.replace("{out}", &out.display().to_string())),
        1,
    );
    let mut fleet = load_fleet(dir.path(), &src);
    fleet.daemon.public_reads = true;
    let daemon = start(fleet).await;
    let base = format!("http://{}", daemon.addr);
    rustls::crypto::ring::default_provider().install_default().ok();
    let http = reqwest::Client::new();
    let metric = async || {
        let m = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        m.lines().find(|l| l.starts_with("paddock_ready_clones{") && l.contains("image=\"debian-12\"")).map(str::to_string)
    };

    // The first run makes template B (a cold boot, saved), which supersedes A, then restores its clone.
    let first = daemon.runs.trigger("probe", None, manual()).await.unwrap().remove(0);
    let row = wait_for_run(&daemon, &first, Duration::from_secs(1200), finished).await;
    assert_eq!(row.outcome.as_deref(), Some("success"), "{row:?}");
    let (_, timings) = probe_output(&row);
    assert_eq!(timings["start"], "warm", "{timings}");
    assert_eq!(timings["one_handshake"], true, "{timings}");
    let rebuilt = templates(dir.path());
    assert_eq!(rebuilt.len(), 1, "{rebuilt:?}");
    assert_ne!(rebuilt[0].key, made[0].key, "a changed image makes a new template");
    assert!(!made[0].dir.exists(), "the superseded template A is still there: {:?}", template_dirs(dir.path()));

    // From now on at most one VM runs at a time (max_vms = 1), template made: sampled throughout.
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = {
        let (most, prefix) = (most.clone(), prefix.clone());
        tokio::spawn(async move {
            loop {
                let n = tokio::task::spawn_blocking({
                    let p = prefix.clone();
                    move || domains_named(&p).len()
                })
                .await
                .unwrap();
                most.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // The pool fills once the run is done, and /metrics and the dashboard show it.
    let pooled = idle_pool_clone(&daemon).await;
    assert_eq!(metric().await.as_deref().map(|l| l.ends_with(" 1")), Some(true), "{:?}", metric().await);
    let page = http.get(format!("{base}/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(&pooled) && page.contains("(ready pool)"), "dashboard lacks the pool clone {pooled}");

    // A run of another image needs the only slot: the idle clone is given up for it, and
    // the pool does not refill while that run waits or runs.
    let tiny = daemon.runs.trigger("tiny-echo", None, manual()).await.unwrap().remove(0);
    let row = wait_for_run(&daemon, &tiny, Duration::from_secs(600), finished).await;
    assert_eq!(row.outcome.as_deref(), Some("success"), "{row:?}");
    assert!(!pool_rows(&daemon).await.iter().any(|(n, _)| *n == pooled), "the given-up clone is still there");

    // Two triggers: one takes the refilled clone (no restore on its path), the other waits for
    // the slot and restores a clone of its own (which run's launch reaches the manager first is
    // not fixed). Each has its own identity.
    let pooled = idle_pool_clone(&daemon).await;
    let ids = [
        daemon.runs.trigger("probe", None, manual()).await.unwrap().remove(0),
        daemon.runs.trigger("probe", None, manual()).await.unwrap().remove(0),
    ];
    let mut seen = Vec::new();
    let mut starts = Vec::new();
    for id in &ids {
        let row = wait_for_run(&daemon, id, Duration::from_secs(600), finished).await;
        assert_eq!(row.outcome.as_deref(), Some("success"), "{row:?}");
        let (out, timings) = probe_output(&row);
        let start = timings["start"].as_str().unwrap_or_default().to_string();
        if start == "ready-pool" {
            assert_eq!(row.vm_name.as_deref(), Some(pooled.as_str()));
        }
        starts.push(start);
        assert_eq!(timings["one_handshake"], true, "{timings}");
        // The run's own login checked the key paddock pinned for this VM; the guest shows that key.
        let pinned = daemon.store.vm_host_key(row.vm_name.as_deref().unwrap()).await.unwrap();
        if let Some(pinned) = pinned {
            assert!(pinned.contains(&out["key"]), "{pinned} vs {out:?}");
        }
        let now = chrono::Utc::now().timestamp();
        let t: i64 = out["time"].parse().unwrap();
        assert!((now - t).abs() < 120, "clone clock {t} vs host {now}: {out:?}");
        assert_eq!(out["host"], row.vm_name.clone().unwrap());
        seen.push(out);
    }
    starts.sort();
    assert_eq!(starts, ["ready-pool", "warm"]);
    for k in ["rand", "mid", "key", "host"] {
        assert_ne!(seen[0][k], seen[1][k], "both clones have the same {k}: {seen:?}");
        assert!(!seen[0][k].is_empty(), "{seen:?}");
    }
    // And it refills again.
    let again = idle_pool_clone(&daemon).await;
    assert_ne!(again, pooled);
    sampler.abort();
    assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1, "more VMs at once than max_vms = 1");
    assert_eq!(templates(dir.path()), rebuilt, "restores must not change the template");
    daemon.stop().await.unwrap();
}
