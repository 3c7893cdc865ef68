//! Warm starts of the bundled guest (issue 18): its warm-capable variant
//! (`images/build-guest.sh x86_64-warm`: Debian's generic kernel with VMGENID, the QEMU guest
//! agent; `guest_agent = true`) has a diskless template, and each clone gets its own RNG
//! reseed, clock, host key, principal, hostname and machine-id before its first SSH handshake.
//! Ports 24600-24619.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use paddock::runs::Trigger;

use super::*;

fn manual() -> Trigger {
    Trigger::Manual { by: "alice".into() }
}

/// What a clone shows right after it came up: RNG bytes, the clock, hostname, machine-id,
/// host key, and how many VM-fork reseeds its kernel logged (a clone: exactly its own one).
const PROBE: &str = r#"
[[jobs]]
name = "probe"
images = ["tiny"]
maintainers = ["alice"]
[[jobs.steps]]
name = "probe"
type = "test"
command = "echo rand=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'); echo time=$(date +%s); echo host=$(hostname); echo mid=$(cat /etc/machine-id); echo key=$(cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub); echo forks=$(dmesg | grep -c 'crng reseeded due to virtual machine fork')"
"#;

/// One run of the probe as the test saw it: the host's time when its `time=` line reached the
/// run's log, the host key pinned for its VM (read while the VM lives: the pin goes with it),
/// the lines it printed, and the result's timings.
struct Probed {
    row: RunRow,
    seen_at: i64,
    pinned: Option<String>,
    out: BTreeMap<String, String>,
    timings: serde_json::Value,
}

async fn probe(daemon: &Daemon, dir: &Path, id: &str) -> Probed {
    let log = dir.join("state/logs").join(id).join("run.log");
    let mut pinned = None;
    let seen_at = wait_for("the probe's time line in its run log", Duration::from_secs(600), async || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let now = chrono::Utc::now().timestamp();
        if pinned.is_none()
            && let Some(vm) = daemon.store.run(id).await.unwrap().and_then(|r| r.vm_name)
        {
            pinned = daemon.store.vm_host_key(&vm).await.unwrap();
        }
        text.contains("time=").then_some(now)
    })
    .await;
    let row = wait_for_run(daemon, id, Duration::from_secs(300), finished).await;
    assert_eq!(row.outcome.as_deref(), Some("success"), "{row:?}");
    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    let text = doc["results"][0]["output"].as_str().unwrap_or_default().to_string();
    let out = text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect();
    Probed { row, seen_at, pinned, out, timings: doc["extras"]["timings"].clone() }
}

/// A one-host fleet whose image `tiny` is the warm-capable bundled guest built in `out`
/// (`start = "warm"`, `guest_agent = true`, a ready pool of one), with `jobs`.
pub(super) fn warm_guest_fleet_src(dir: &Path, out: &Path, ssh_ports: &str, jobs: &str) -> String {
    fleet_src(dir, ssh_ports, PER_VM, &[], "", jobs)
        .replace(&repo().join("images/out/x86_64").display().to_string(), &out.display().to_string())
        .replacen("boot_timeout = \"3m\"\n", "boot_timeout = \"4m\"\nstart = \"warm\"\nguest_agent = true\nmin_ready = 1\n", 1)
}

/// First a SIGKILL of the daemon binary (`paddock serve --demo`) while the template is being
/// made (its domain runs, its folder has no manifest): the next start removes the domain and
/// the half-made folder with whatever it held (save file, console), so no template is left.
/// Then, on the same state dir, one template (booted once, saved, no disk) made by the
/// restarted daemon serves every check: the run that made it restores a clone, a ready pool
/// (`min_ready = 1`) fills with another (the templates listing counts it as the template's one
/// clone), and two triggers at once get the pooled clone and a freshly restored one. Every
/// clone reads other `/dev/urandom` bytes, presents the host key paddock pinned for it, has
/// its own hostname and machine-id, logged its own VM-fork reseed, and has the host's time
/// although its template was saved long enough before that an unset clock would show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_clones_of_the_bundled_guest_get_their_own_identity_and_the_hosts_time() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "paddock=info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    let out = support::guest::ensure_warm_guest_image();
    let dir = tempfile::tempdir().unwrap();
    let src = warm_guest_fleet_src(dir.path(), &out, "24600-24619", PROBE);
    assert!(src.contains("x86_64-warm/initrd.img") && src.contains("guest_agent = true"), "{src}");
    let mut fleet = load_fleet(dir.path(), &src);
    fleet.daemon.public_reads = true;
    let config = dir.path().join("fleet.toml");
    let state = dir.path().join("state");

    // Killed while the demo run's template is being made: its domain is up, its folder has
    // no manifest yet (the bundled guest boots in seconds, so this is polled for, not waited).
    let first = super::crash::Serve::start(&config, true);
    let _guard = DomainGuard::new(dir.path());
    let prefix = format!("paddock-{}-", &instance_id(dir.path())[..8]);
    let being_made = wait_for("the template being made", Duration::from_secs(300), async || {
        let domain = domains_named(&prefix).into_iter().find(|n| n[prefix.len()..].starts_with('t'))?;
        let dirs = super::warm::template_dirs(dir.path());
        match dirs.as_slice() {
            [folder] if paddock::vm::template::list(&state).is_empty() => Some((domain, folder.clone())),
            _ => None,
        }
    })
    .await;
    first.sigkill();
    let (domain, folder) = being_made;
    assert!(paddock::vm::template::list(&state).is_empty(), "the template was finished before the kill: {folder:?}");
    assert_eq!(domains_named(&domain), vec![domain.clone()], "the template's domain outlives the SIGKILLed daemon");
    let second = super::crash::Serve::start(&config, false);
    wait_until("the cut-short template to be reaped", Duration::from_secs(120), async || {
        domains_named(&prefix).is_empty() && super::warm::template_dirs(dir.path()).is_empty()
    })
    .await;
    assert!(!folder.join("memory.save").exists() && !folder.exists(), "{folder:?}");
    drop(second);

    let daemon = start(fleet).await;

    // The first run makes the template (a cold boot, saved), then restores its clone.
    let first = daemon.runs.trigger("probe", None, manual()).await.unwrap().remove(0);
    let one = probe(&daemon, dir.path(), &first).await;
    assert_eq!(one.timings["start"], "warm", "{}", one.timings);
    assert_eq!(one.timings["one_handshake"], true, "{}", one.timings);
    let made = paddock::vm::template::list(&state);
    assert_eq!(made.len(), 1, "{made:?}");
    // Diskless: the template is its saved memory and XML only; no clone overlay anywhere.
    assert!(made[0].save_file().exists() && made[0].saved_xml().exists() && !made[0].disk().exists(), "{made:?}");
    let saved_at: chrono::DateTime<chrono::Utc> = std::fs::metadata(made[0].save_file()).unwrap().modified().unwrap().into();

    // The pool fills with an idle clone.
    wait_until("an idle ready-pool clone", Duration::from_secs(300), async || {
        daemon.store.vms().await.unwrap().iter().any(|v| v.run_id.as_deref() == Some(paddock::vm::READY_POOL_RUN) && v.state == "ready")
    })
    .await;
    // The listing counts the diskless template's clones (it backs no overlay): the idle one.
    rustls::crypto::ring::default_provider().install_default().ok();
    let url = format!("http://{}/api/v1/templates", daemon.addr);
    let listing: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    let row = listing.as_array().unwrap().iter().find(|t| t["key"] == made[0].key.as_str()).unwrap_or_else(|| panic!("{listing}"));
    assert_eq!((&row["state"], &row["clones"]), (&"ready".into(), &1.into()), "{row}");
    // A clone whose clock were not set would lag by the time since the save: make that more
    // than the check below allows (a wait on the template's age, usually already past).
    let lag = Duration::from_secs(8);
    wait_until("the template to be older than the clock check's margin", Duration::from_secs(60), async || {
        (chrono::Utc::now() - saved_at).to_std().unwrap_or_default() > lag * 2
    })
    .await;

    // Two triggers at once: one takes the pooled clone, the other restores its own.
    let t = Instant::now();
    let ids = [
        daemon.runs.trigger("probe", None, manual()).await.unwrap().remove(0),
        daemon.runs.trigger("probe", None, manual()).await.unwrap().remove(0),
    ];
    // Watched together, so each one's `time=` line is seen as it comes.
    let (two, three) = tokio::join!(probe(&daemon, dir.path(), &ids[0]), probe(&daemon, dir.path(), &ids[1]));
    let all = [one, two, three];
    eprintln!("two clones' probes done in {:.1} s", t.elapsed().as_secs_f64());
    let mut starts: Vec<String> = all[1..].iter().map(|p| p.timings["start"].as_str().unwrap_or_default().to_string()).collect();
    starts.sort();
    assert_eq!(starts, ["ready-pool", "warm"]);
    for p in &all {
        let vm = p.row.vm_name.clone().unwrap();
        assert_eq!(p.timings["one_handshake"], true, "{}", p.timings);
        // The run's own login checked the key paddock pinned for this VM; the guest shows it.
        let pinned = p.pinned.clone().expect("a key pinned for the clone while it ran");
        assert!(!p.out["key"].is_empty() && pinned.contains(&p.out["key"]), "{pinned} vs {:?}", p.out);
        assert_eq!(p.out["host"], vm);
        assert_eq!(p.out["forks"], "1", "{vm}: its kernel logged no (or more than one) VM-fork reseed: {:?}", p.out);
        let t: i64 = p.out["time"].parse().unwrap();
        assert!((p.seen_at - t).abs() <= lag.as_secs() as i64, "{vm}: clock {t}, host {} when the line came: {:?}", p.seen_at, p.out);
    }
    for k in ["rand", "mid", "key", "host"] {
        for (i, a) in all.iter().enumerate() {
            assert!(!a.out[k].is_empty(), "{:?}", a.out);
            for b in &all[i + 1..] {
                assert_ne!(a.out[k], b.out[k], "two clones have the same {k}: {:?} / {:?}", a.out, b.out);
            }
        }
    }
    assert_eq!(paddock::vm::template::list(&state), made, "restores must not change the template");
    assert!(overlays(dir.path()).is_empty(), "a diskless clone has no overlay: {:?}", overlays(dir.path()));
    daemon.stop().await.unwrap();
}
