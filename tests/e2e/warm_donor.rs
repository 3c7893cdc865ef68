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
    wait_until("the probe's output", Duration::from_secs(1500), async || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("probed")
    })
    .await;
    let vm = daemon.store.run(&id).await.unwrap().unwrap().vm_name.expect("the run's VM");
    let pinned = daemon.store.vm_host_key(&vm).await.unwrap().expect("a pinned host key while the VM runs");
    let row = wait_for_run(daemon, &id, Duration::from_secs(300), finished).await;
    assert_eq!(row.outcome.as_deref(), Some("success"), "{row:?}");
    let (out, timings) = probe_output(&row);
    (vm, pinned, out, timings)
}

fn probe_output(row: &RunRow) -> (BTreeMap<String, String>, serde_json::Value) {
    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    let out = doc["results"][0]["output"].as_str().unwrap_or_default().to_string();
    let map = out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect();
    (map, doc["extras"]["timings"].clone())
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
/// making that template removed the older one; a second clone of it gets an identity of its
/// own too (RNG, host key — each the one pinned —, hostname, machine-id, clock); each clone's
/// overlay goes with its run and the template stays. 3. A superseded template goes from the
/// pool only once no volume there is backed by its disk.
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

    // A second clone of the same template.
    let (vm2, pinned2, out2, timings) = probe(&daemon, dir.path()).await;
    assert_eq!(timings["start"], "warm", "{timings}");
    for (vm, pinned, out) in [(&vm1, &pinned1, &out1), (&vm2, &pinned2, &out2)] {
        // The run's own login checked the key paddock pinned for this VM; the guest shows it.
        assert!(pinned.contains(&out["key"]), "{pinned} vs {out:?}");
        assert_eq!(&out["host"], vm);
        let t: i64 = out["time"].parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - t).abs() < 300, "clone clock {t}: {out:?}");
    }
    for k in ["rand", "mid", "key", "host"] {
        assert!(!out1[k].is_empty() && out1[k] != out2[k], "both clones have the same {k}: {out1:?} {out2:?}");
    }
    wait_until("the clones' overlays to go", Duration::from_secs(120), async || {
        let v = donor.volumes();
        !v.iter().any(|v| v.starts_with(&vm1) || v.starts_with(&vm2)) && !donor.domains().iter().any(|d| d.starts_with(&prefix))
    })
    .await;
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
