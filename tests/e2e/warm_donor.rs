//! Warm starts on a pool host (issue 18): the real second libvirt host of `support::donor`
//! (a user's session daemon over `qemu+ssh://`) with the debian-12 image and
//! `start = "warm"`. The template there is only volumes in the donor's pool, written by the
//! donor's libvirt; clones are restored from it with their own identity. Donor user
//! `pdkm4-1`, its sshd on 24400-24419, guests 24420-24439.

use std::collections::BTreeMap;
use std::time::Duration;

use paddock::runs::Trigger;
use paddock::vm::template::pool as tpool;

use super::support::donor::{Donor, POOL};
use super::*;

/// What a clone reads right after it came up: RNG bytes, clock, hostname, machine-id, host key.
const PROBE: &str = r#"
[[jobs]]
name = "probe"
images = ["debian-12"]
maintainers = ["alice"]
[[jobs.steps]]
name = "probe"
type = "test"
command = "echo rand=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'); echo time=$(date +%s); echo host=$(hostname); echo mid=$(cat /etc/machine-id); echo key=$(cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub); echo probed; sleep 15"
"#;

/// Runs the probe job once: the VM, the host key pinned for it (read while it runs), what the
/// clone read and the run's timings.
async fn probe(daemon: &Daemon, dir: &Path) -> (String, String, BTreeMap<String, String>, serde_json::Value) {
    let id = daemon.runs.trigger("probe", None, Trigger::Manual { by: "alice".into() }).await.unwrap().remove(0);
    let log = dir.join("state/logs").join(&id).join("run.log");
    // Its output, or its end (a run that failed says why below, without the whole wait).
    wait_until("the probe's output", Duration::from_secs(1500), async || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("probed")
            || daemon.store.run(&id).await.unwrap().is_some_and(|r| finished(&r))
    })
    .await;
    let vm = daemon.store.run(&id).await.unwrap().unwrap().vm_name.expect("the run's VM");
    let pinned = daemon.store.vm_host_key(&vm).await.unwrap();
    let row = wait_for_run(daemon, &id, Duration::from_secs(300), finished).await;
    assert_eq!(row.outcome.as_deref(), Some("success"), "{row:?}");
    let pinned = pinned.expect("a pinned host key while the VM runs");
    let (out, timings) = probe_output(&row);
    (vm, pinned, out, timings)
}

fn probe_output(row: &RunRow) -> (BTreeMap<String, String>, serde_json::Value) {
    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    let out = doc["results"][0]["output"].as_str().unwrap_or_default().to_string();
    let map = out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect();
    (map, doc["extras"]["timings"].clone())
}

/// An idle ready-pool clone on the donor other than `not`, once there is one.
async fn idle_clone(daemon: &Daemon, not: Option<&str>) -> String {
    wait_for("an idle ready-pool clone on the donor", Duration::from_secs(900), async || {
        daemon.store.vms().await.unwrap().into_iter().find_map(|v| {
            let idle = v.run_id.as_deref() == Some(paddock::vm::READY_POOL_RUN) && v.state == "ready" && v.host.as_deref() == Some("donor");
            (idle && Some(v.name.as_str()) != not).then_some(v.name)
        })
    })
    .await
}

/// Every file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// 1. SIGKILL of the daemon binary while the template is being made on the donor: after a
/// restart no domain and no volume of it is left there, while a finished template (an older
/// key's, made by hand) is left whole. 2. A run restores a clone from a template that is only
/// volumes in the donor's pool (no save file, disk or seed of it on the daemon's machine), and
/// making that template removed the older one. With the template there, a daemon whose donor
/// keeps a ready pool (`ready = { "debian-12" = 1 }`) restores a second clone for a run, fills
/// the pool with an idle clone (domain and overlay volume on the donor; in /metrics, the
/// dashboard, and the API's and CLI's template listing, which reads the donor's pool and counts
/// the clone), hands that clone to the next trigger and refills; every clone has an identity of
/// its own (RNG, host key — each the one pinned —, hostname, machine-id, clock). The idle clone
/// a stopped daemon leaves is reaped by the next start, and nothing of the instance but its
/// template stays on the donor. 3. A superseded template goes from the pool only once no
/// volume there is backed by its disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_clones_on_a_donor_restore_from_pool_volumes_and_a_sigkill_mid_template_leaves_nothing() {
    let _ = tracing_subscriber::fmt().with_env_filter("paddock=info").with_test_writer().try_init();
    let donor = Donor::start("pdkm4-1", 24400..=24419);
    let dir = tempfile::Builder::new().prefix("pdkm4-").tempdir().unwrap();
    super::debian::debian_fleet(dir.path(), "24420-24439", &[], PROBE);
    let config = dir.path().join("fleet.toml");
    let src = std::fs::read_to_string(&config)
        .unwrap()
        .replacen(
            "name = \"local\"\nuri = \"qemu:///system\"",
            &format!("name = \"donor\"\nuri = \"{}\"\nimage_pool = \"{POOL}\"", donor.uri),
            1,
        )
        .replacen("identity = \"cloud-init\"\n", "identity = \"cloud-init\"\nstart = \"warm\"\n", 1);
    assert!(src.contains("name = \"donor\"") && src.contains("start = \"warm\""));
    let fleet = load_fleet(dir.path(), &src);

    // 1. Killed while the template boots on the donor. Meanwhile a finished template of an
    // older key is made by hand (its manifest is there): no reconciliation may touch it, and
    // the first template made for the current key removes it.
    let first = super::crash::Serve::start(&config, true);
    let instance = instance_id(dir.path());
    let prefix = format!("paddock-{}-", &instance[..8]);
    let tpl_prefix = tpool::prefix(&instance);
    let old = tpool::base_name(&instance, "debian-12", "00000000000000000000");
    let old_disk = format!("{old}{}", tpool::DISK);
    let made_ok = |args: &[&str]| {
        let o = donor.virsh(args);
        assert!(o.status.success(), "virsh {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    // The manifest first: the daemon's passes meanwhile would take the rest for a build cut short.
    let make_old = || {
        for role in [tpool::MANIFEST, tpool::SEED, tpool::SAVE] {
            made_ok(&["vol-create-as", POOL, &format!("{old}{role}"), "1M", "--format", "raw"]);
        }
        made_ok(&["vol-create-as", POOL, &old_disk, "16M", "--format", "qcow2"]);
    };
    make_old();
    let old_volumes: Vec<String> = donor.volumes().into_iter().filter(|v| v.starts_with(&old)).collect();
    assert_eq!(old_volumes.len(), 4, "{old_volumes:?}");
    let current = |v: &String| v.starts_with(&tpl_prefix) && !v.starts_with(&old);

    let template_domain = |d: &String| d.starts_with(&prefix) && d[prefix.len()..].starts_with('t');
    let domain = wait_for("the template's domain on the donor", Duration::from_secs(900), async || {
        donor.domains().into_iter().find(template_domain)
    })
    .await;
    let made: Vec<String> = donor.volumes().into_iter().filter(current).collect();
    assert!(made.iter().any(|v| v.ends_with(tpool::DISK)) && made.iter().any(|v| v.ends_with(tpool::SAVE)), "{made:?}");
    assert!(!made.iter().any(|v| v.ends_with(tpool::MANIFEST)), "a manifest before the save: {made:?}");
    first.sigkill();
    let second = super::crash::Serve::start(&config, false);
    wait_until("the cut-short template to be reaped on the donor", Duration::from_secs(300), async || {
        let v = donor.volumes();
        !donor.domains().iter().any(|d| d.starts_with(&prefix)) && !v.iter().any(|v| v.starts_with(&prefix) && !v.starts_with(&old))
    })
    .await;
    assert!(!donor.domains().contains(&domain));
    let kept: Vec<String> = donor.volumes().into_iter().filter(|v| v.starts_with(&old)).collect();
    assert_eq!(kept, old_volumes, "reconciliation touched a finished template");
    drop(second);

    // 2. A run builds the template in the pool and restores its clone from it.
    let daemon = start(fleet).await;
    let (vm1, pinned1, out1, timings) = probe(&daemon, dir.path()).await;
    assert_eq!(timings["start"], "warm", "{timings}");
    assert_eq!(timings["one_handshake"], true, "{timings}");
    let listed = tpool::list(&donor.uri, POOL, &instance).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let tpl = listed[0].clone();
    assert_eq!(tpl.image, "debian-12");
    let volumes = donor.volumes();
    for role in [tpool::DISK, tpool::SEED, tpool::SAVE, tpool::MANIFEST] {
        assert!(volumes.contains(&tpl.volume(role)), "{role} missing: {volumes:?}");
    }
    assert!(!volumes.iter().any(|v| v.starts_with(&old)), "the superseded template stays: {volumes:?}");
    // Nothing of it on the daemon's machine: no template folder with files, no overlay or seed.
    let local = files_under(&dir.path().join("state/templates"));
    assert!(local.is_empty(), "template files on the daemon's machine: {local:?}");
    assert!(paddock::vm::template::list(&dir.path().join("state")).is_empty());
    assert!(overlays(dir.path()).is_empty(), "{:?}", overlays(dir.path()));

    daemon.stop().await.unwrap();

    // Now that the template exists, the donor keeps a ready pool of one (`ready`). The first
    // run of this daemon restores a second clone (and shows how its VMs are logged into), then
    // the pool fills with a clone restored from the template in the pool, its overlay a volume
    // there; the listing, /metrics and the dashboard show it.
    let pooled_src =
        src.replacen(&format!("image_pool = \"{POOL}\"\n"), &format!("image_pool = \"{POOL}\"\nready = {{ \"debian-12\" = 1 }}\n"), 1);
    assert_ne!(pooled_src, src);
    let mut pooled_fleet = load_fleet(dir.path(), &pooled_src);
    pooled_fleet.daemon.public_reads = true;
    let daemon = start(pooled_fleet).await;
    let (vm2, pinned2, out2, timings) = probe(&daemon, dir.path()).await;
    assert_eq!(timings["start"], "warm", "{timings}");
    let pooled = idle_clone(&daemon, None).await;
    assert!(donor.domains().contains(&pooled), "the pool clone's domain is not on the donor: {:?}", donor.domains());
    let overlay = format!("{pooled}-overlay.qcow2");
    assert!(donor.volumes().contains(&overlay), "its overlay is not a volume of the donor's pool: {:?}", donor.volumes());
    let base = format!("http://{}", daemon.addr);
    rustls::crypto::ring::default_provider().install_default().ok();
    let http = reqwest::Client::new();
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let line = metrics.lines().find(|l| l.starts_with("paddock_ready_clones{") && l.contains("host=\"donor\""));
    assert!(line.is_some_and(|l| l.contains("image=\"debian-12\"") && l.ends_with(" 1")), "{line:?}");
    let page = http.get(format!("{base}/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(&pooled) && page.contains("(ready pool)"), "the dashboard lacks the pool clone {pooled}");
    assert!(page.contains(&tpl.key[..16]) && page.contains(&format!("pool {POOL}")), "the dashboard lacks the pool template");
    // The template in the donor's pool, in the API and the CLI: host, image, key, state, size,
    // and the one clone (the idle one) whose overlay its disk backs.
    let listing: serde_json::Value = http.get(format!("{base}/api/v1/templates")).send().await.unwrap().json().await.unwrap();
    let rows = listing.as_array().unwrap();
    assert_eq!(rows.len(), 1, "only the template in the donor's pool: {listing}");
    let row = &rows[0];
    assert_eq!((&row["host"], &row["pool"], &row["image"]), (&"donor".into(), &POOL.into(), &"debian-12".into()), "{row}");
    assert_eq!((&row["key"], &row["state"], &row["clones"]), (&tpl.key.as_str().into(), &"ready".into(), &1.into()), "{row}");
    assert!(row["disk_bytes"].as_u64().unwrap() > 10 << 20, "its memory image alone is more: {row}");
    assert!(row["made_at"].is_string() && row["error"].is_null(), "{row}");
    let url = base.clone();
    let cli = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_paddock")).args(["templates", "--url", &url]).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{stdout}{}", String::from_utf8_lossy(&cli.stderr));
    let cols: Vec<Vec<&str>> = stdout.lines().map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect()).collect();
    assert_eq!(cols.len(), 2, "a header and the template: {stdout}");
    assert_eq!(cols[1][..4], ["debian-12", "donor", &tpl.key[..16], "ready"], "{stdout}");
    assert!((cols[1][5].ends_with(" MiB") || cols[1][5].ends_with(" GiB")) && cols[1][6] == "1", "{stdout}");

    // A trigger takes the idle clone (no restore on its path), and the pool refills.
    let (vm3, pinned3, out3, timings) = probe(&daemon, dir.path()).await;
    assert_eq!(timings["start"], "ready-pool", "{timings}");
    assert_eq!(vm3, pooled);
    let again = idle_clone(&daemon, Some(pooled.as_str())).await;
    assert!(donor.domains().contains(&again) && donor.volumes().contains(&format!("{again}-overlay.qcow2")));
    daemon.stop().await.unwrap();

    let clones = [(&vm1, &pinned1, &out1), (&vm2, &pinned2, &out2), (&vm3, &pinned3, &out3)];
    for (vm, pinned, out) in clones {
        // The run's own login checked the key paddock pinned for this VM; the guest shows it.
        assert!(pinned.contains(&out["key"]), "{pinned} vs {out:?}");
        assert_eq!(&out["host"], vm);
        let t: i64 = out["time"].parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - t).abs() < 300, "clone clock {t}: {out:?}");
    }
    for k in ["rand", "mid", "key", "host"] {
        for (i, (_, _, a)) in clones.iter().enumerate() {
            for (_, _, b) in &clones[i + 1..] {
                assert!(!a[k].is_empty() && a[k] != b[k], "two clones have the same {k}: {a:?} {b:?}");
            }
        }
    }

    // A clean stop tears the idle clone down on the donor (Daemon::stop -> VmManager::shutdown):
    // its domain and overlay volume are gone before the next start. That start (its fleet keeps
    // no pool) finds nothing of the instance there but its template.
    assert!(!donor.domains().contains(&again), "{:?}", donor.domains());
    assert!(!donor.volumes().contains(&format!("{again}-overlay.qcow2")), "{:?}", donor.volumes());
    let daemon = start(load_fleet(dir.path(), &src)).await;
    wait_until("the idle pool clone to be reaped on the donor", Duration::from_secs(300), async || {
        let v = donor.volumes();
        !v.iter().any(|v| v.starts_with(&prefix) && !v.starts_with(&tpl_prefix)) && !donor.domains().iter().any(|d| d.starts_with(&prefix))
    })
    .await;
    for vm in [&vm1, &vm2, &vm3, &again] {
        assert!(!donor.volumes().iter().any(|v| v.starts_with(vm.as_str())), "a volume of {vm} stays: {:?}", donor.volumes());
    }
    assert_eq!(tpool::list(&donor.uri, POOL, &instance).unwrap(), listed, "restores must not change the template");
    daemon.stop().await.unwrap();

    // 3. A superseded template goes only once nothing in the pool is backed by its disk; the
    // kept one stays whole.
    make_old();
    // Not named like a VM's volume: the in-process manager's passes must leave it alone.
    let user = "pdkm4-backed.qcow2".to_string();
    let backing = donor.pool_dir.join(&old_disk);
    let backing = backing.to_str().unwrap();
    made_ok(&["vol-create-as", POOL, &user, "16M", "--format", "qcow2", "--backing-vol", backing, "--backing-vol-format", "qcow2"]);
    let removed = tpool::remove_superseded(&donor.uri, POOL, &instance, "debian-12", &tpl.base).unwrap();
    assert!(removed.is_empty(), "removed while a volume is backed by it: {removed:?}");
    made_ok(&["vol-delete", &user, "--pool", POOL]);
    let removed = tpool::remove_superseded(&donor.uri, POOL, &instance, "debian-12", &tpl.base).unwrap();
    assert_eq!(removed, vec![old.clone()]);
    let v = donor.volumes();
    assert!(!v.iter().any(|v| v.starts_with(&old)), "{v:?}");
    assert_eq!(tpool::list(&donor.uri, POOL, &instance).unwrap(), listed);
}
