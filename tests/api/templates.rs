//! `GET /api/v1/templates` on a real state directory whose template folders are written by
//! `vm::template`'s own writers (`dir_for`, `Template::commit`) and `vm::overlay::create`, as a
//! warm launch writes them, so this test cannot drift from the layout.

use std::path::{Path, PathBuf};

use axum::http::{Method, StatusCode};
use paddock::vm::overlay;
use paddock::vm::template::list::SeedInputs;
use paddock::vm::template::{self, KeyInputs, Template, Templates};
use serde_json::Value;

use crate::common::{Lab, lab_with};
use crate::router::json;
use crate::support::wait_for;

/// A warm image, next to the lab's own; its base disk is `d/warm.qcow2` beside `fleet.toml`.
const WARM_IMAGE: &str = r#"
[[images]]
name = "warm-deb"
os = "linux"
arch = "x86_64"
disk = "d/warm.qcow2"
memory_mib = 1024
vcpus = 1
user = "root"
identity = "cloud-init"
start = "warm"
"#;

const DAEMON_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpKbGPinFIKvvVQexMuxfmVR3auvr57kkIe6mkURtIs paddock";

pub struct TemplateLab {
    pub lab: Lab,
    pub state_dir: PathBuf,
    /// The image's current key.
    pub key: String,
    pub base: PathBuf,
}

fn qemu_img(args: &[&str]) {
    let out = std::process::Command::new("qemu-img").args(args).output().unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A lab with three template folders of `warm-deb`: a ready one on `local` backing two clones'
/// overlays, a stale one (an old key) on `rack-2`, and one still being built on `local`.
pub async fn template_lab(public_reads: bool) -> TemplateLab {
    let seeds = SeedInputs { authorized_keys: vec![DAEMON_KEY.into()], ca_key: None };
    let lab = lab_with(public_reads, WARM_IMAGE, |st| st.template_seeds = Some(seeds.clone())).await;
    let fleet = lab.state.fleet();
    let state_dir = fleet.daemon.state_dir.clone();
    let base = lab.dir.path().join("d/warm.qcow2");
    std::fs::create_dir_all(base.parent().unwrap()).unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "16M"]);
    let image = fleet.image("warm-deb").unwrap();
    let key = Templates::default().key(&KeyInputs { image, authorized_keys: &seeds.authorized_keys, ca_key: None }).unwrap();

    let ready = make(&state_dir, "local", &key, &base, true);
    // Two clones restored from it (their overlays back onto its frozen disk), one VM of
    // another kind (no backing) and a seed beside them.
    overlay::create(&ready.disk(), &overlay::path_for(&state_dir, "paddock-t-c1")).unwrap();
    overlay::create(&ready.disk(), &overlay::path_for(&state_dir, "paddock-t-c2")).unwrap();
    std::fs::write(overlay::dir(&state_dir).join("paddock-t-c1-seed.iso"), b"seed").unwrap();
    make(&state_dir, "rack-2", &"0".repeat(64), &base, true);
    make(&state_dir, "local", &"b".repeat(64), &base, false);
    TemplateLab { lab, state_dir, key, base }
}

/// A template folder as `build_template` leaves it: finished (manifest written) or not.
fn make(state_dir: &Path, host: &str, key: &str, base: &Path, finished: bool) -> Template {
    let dir = template::dir_for(state_dir, host, "warm-deb", key);
    std::fs::create_dir_all(&dir).unwrap();
    let t = Template { dir, key: key.into(), domain: format!("paddock-t-t{}", &key[..8]), port: 26801 };
    overlay::create(base, &t.disk()).unwrap();
    // A save file of 1 MiB of memory (not sparse: it takes its size on disk).
    std::fs::write(t.save_file(), vec![7u8; 1 << 20]).unwrap();
    if finished {
        t.commit().unwrap();
    }
    t
}

fn by_host_and_state<'a>(list: &'a [Value], host: &str, state: &str) -> &'a Value {
    list.iter().find(|t| t["host"] == host && t["state"] == state).unwrap_or_else(|| panic!("no {state} template on {host}: {list:?}"))
}

#[tokio::test]
async fn templates_are_listed_with_their_state_size_and_clones_for_readers_only() {
    let t = template_lab(false).await;
    let s = &t.lab.state;
    // Read like the fleet and VM views: a token of any role, none refused without public reads.
    let (st, _) = json(s, Method::GET, "/api/v1/templates", None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, body) = json(s, Method::GET, "/api/v1/templates", Some(&t.lab.bob), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let list = body.as_array().unwrap().clone();
    assert_eq!(list.len(), 3, "{body}");
    assert!(list.iter().all(|x| x["image"] == "warm-deb"), "{body}");

    let ready = by_host_and_state(&list, "local", "ready");
    assert_eq!(ready["key"], t.key.as_str());
    assert_eq!(ready["clones"], 2, "two overlays back onto its disk: {ready}");
    assert!(ready["disk_bytes"].as_u64().unwrap() >= 1 << 20, "{ready}");
    let made = chrono::DateTime::parse_from_rfc3339(ready["made_at"].as_str().unwrap()).unwrap();
    assert!((chrono::Utc::now() - made.to_utc()).num_seconds().abs() < 60, "{ready}");

    // Host `rack-2` holds a `-`: the folder is split by the fleet's own names.
    let stale = by_host_and_state(&list, "rack-2", "stale");
    assert_eq!(stale["key"], "0".repeat(64));
    assert_eq!(stale["clones"], 0);

    let building = by_host_and_state(&list, "local", "building");
    assert_eq!(building["key"], "b".repeat(16), "a build in progress is named by its key's prefix: {building}");
    assert!(building["made_at"].is_null(), "{building}");

    // A changed image file changes the image's key: the ready template is stale now.
    qemu_img(&["resize", "-q", t.base.to_str().unwrap(), "32M"]);
    let (_, body) = json(s, Method::GET, "/api/v1/templates", Some(&t.lab.bob), None).await;
    let list = body.as_array().unwrap().clone();
    let was_ready = list.iter().find(|x| x["key"] == t.key.as_str()).unwrap();
    assert_eq!(was_ready["state"], "stale", "{body}");
    assert_eq!(was_ready["clones"], 2, "{body}");
    assert!(t.state_dir.join("templates").is_dir());
}

/// A real VM manager over the hosts named `hosts` of the lab's fleet with `extra` (only those:
/// the lab's `local` host is not this test's), as instance `instance`, with a store and state
/// directory of its own. It lists the pools of those hosts as the daemon's does.
async fn manager(extra: &str, hosts: &[&str], instance: &str) -> (tempfile::TempDir, paddock::vm::VmManager) {
    let dir = tempfile::Builder::new().prefix("pdkl6-").tempdir().unwrap();
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, format!("{}{extra}", include_str!("fleet.toml"))).unwrap();
    let fleet = paddock::config::load(&path).unwrap();
    std::fs::create_dir_all(&fleet.daemon.state_dir).unwrap();
    let mut cfg = paddock::vm::ManagerConfig::from_fleet(&fleet, instance, paddock::vm::Readiness::DomainRunning);
    // Nothing is uploaded into the pools: only their templates are looked at.
    cfg.images.clear();
    let hosts = fleet.hosts.iter().filter(|h| hosts.contains(&h.name.as_str())).cloned().collect();
    let store = paddock::store::Store::open(&dir.path().join("vms.db")).await.unwrap();
    let vms = paddock::vm::VmManager::start(cfg, hosts, store).await.unwrap();
    (dir, vms)
}

/// The dashboard's fleet page as `bob` sees it.
async fn dashboard(lab: &Lab) -> String {
    use tower::ServiceExt;
    let req =
        axum::http::Request::builder().uri("/").header("authorization", format!("Bearer {}", lab.bob)).body(axum::body::Body::empty());
    let resp = paddock::daemon::app(lab.state.clone()).oneshot(req.unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    String::from_utf8(axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap()
}

/// The pool rows of `host` once the VM manager's listing of it has ended (`listed_at` set).
async fn listed(lab: &Lab, host: &str) -> Vec<Value> {
    wait_for("the VM manager's listing of the pool", std::time::Duration::from_secs(30), async || {
        let (st, body) = json(&lab.state, Method::GET, "/api/v1/templates", Some(&lab.bob), None).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let rows: Vec<Value> = body.as_array().unwrap().iter().filter(|t| t["host"] == host).cloned().collect();
        rows.iter().all(|t| t["listed_at"].is_string()).then_some(rows)
    })
    .await
}

/// A host with an `image_pool` whose pool cannot be listed (here: a pool its libvirt does not
/// have) is one `unlisted` row naming the host and its pool, with a reason that quotes no URI
/// and when the listing was tried; the state directory's templates are listed beside it as
/// ever (its scratch folder of pool save headers is none).
#[tokio::test]
async fn a_pool_host_that_cannot_be_listed_is_shown_as_unlisted_and_the_rest_still_are() {
    let host = r#"
[[hosts]]
name = "pdkp5-pooled"
uri = "test:///default"
accelerator = "kvm"
address = "127.0.0.1"
max_vms = 2
memory_mib = 4096
vcpus = 4
image_pool = "pdkp5-no-such-pool"
"#;
    let extra = format!("{WARM_IMAGE}{host}");
    let (_vm_dir, vms) = manager(&extra, &["pdkp5-pooled"], "feedc0de").await;
    let seeds = SeedInputs { authorized_keys: vec![DAEMON_KEY.into()], ca_key: None };
    let lab = lab_with(false, &extra, |st| {
        st.template_seeds = Some(seeds.clone());
        st.instance_id = Some("feedc0de".into());
        st.vms = Some(vms.clone());
    })
    .await;
    let fleet = lab.state.fleet();
    let state_dir = fleet.daemon.state_dir.clone();
    let base = lab.dir.path().join("d/warm.qcow2");
    std::fs::create_dir_all(base.parent().unwrap()).unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "16M"]);
    let key = Templates::default()
        .key(&KeyInputs { image: fleet.image("warm-deb").unwrap(), authorized_keys: &seeds.authorized_keys, ca_key: None })
        .unwrap();
    make(&state_dir, "local", &key, &base, true);
    // The scratch folder of pool templates' save headers is no template.
    std::fs::create_dir_all(state_dir.join("templates/.pool-headers")).unwrap();

    let rows = listed(&lab, "pdkp5-pooled").await;
    let (st, body) = json(&lab.state, Method::GET, "/api/v1/templates", Some(&lab.bob), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 2, "{body}");
    let local = by_host_and_state(list, "local", "ready");
    assert!(local["pool"].is_null() && local["error"].is_null() && local["listed_at"].is_string(), "{local}");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let unlisted = by_host_and_state(&rows, "pdkp5-pooled", "unlisted");
    assert_eq!(unlisted["pool"], "pdkp5-no-such-pool", "{unlisted}");
    let why = unlisted["error"].as_str().unwrap();
    assert!(why.contains("could not be listed") && !why.contains("test:///"), "{unlisted}");
    assert!(unlisted["image"].is_null() && unlisted["clones"] == 0, "{unlisted}");
    vms.stop();
}

/// A pool of the test driver's fake host (`test:///FILE`: every connection reads FILE again)
/// holding a template of instance `feedc0de` that is being built (its disk and save volumes, no
/// manifest) and one clone's overlay backed by its disk.
const POOL_HOST: &str = r#"<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads><active>2</active><mhz>2000</mhz><model>x86_64</model></cpu>
  <memory>4194304</memory>
  <pool type='dir'>
    <name>pdkl6-pool</name>
    <uuid>35bb2ad9-388a-cdfe-461a-b8907f6e5301</uuid>
    <capacity>1000000000</capacity>
    <allocation>0</allocation>
    <available>1000000000</available>
    <target><path>/pdkl6-pool</path></target>
    <volume type='file'>
      <name>paddock-feedc0de-tpl-warm-deb-0123456789abcdef.disk.qcow2</name>
      <capacity>16777216</capacity>
      <allocation>1048576</allocation>
      <target><format type='qcow2'/></target>
    </volume>
    <volume type='file'>
      <name>paddock-feedc0de-tpl-warm-deb-0123456789abcdef.memory.save</name>
      <capacity>2097152</capacity>
      <allocation>2097152</allocation>
    </volume>
    <volume type='file'>
      <name>paddock-feedc0de-1a2b3c4d-overlay.qcow2</name>
      <capacity>16777216</capacity>
      <allocation>65536</allocation>
      <target><format type='qcow2'/></target>
      <backingStore><path>/pdkl6-pool/paddock-feedc0de-tpl-warm-deb-0123456789abcdef.disk.qcow2</path><format type='qcow2'/></backingStore>
    </volume>
  </pool>
</node>
"#;

/// A request lists no host's pool: the templates of a pool host are the VM manager's last
/// listing of it, served with when it was taken while the host can no longer be listed at all,
/// until the manager's next reconciliation pass lists it again and finds it unreachable.
#[tokio::test]
async fn a_pool_listing_is_served_from_the_vm_managers_last_listing_while_the_host_is_unreachable() {
    let hosts = tempfile::Builder::new().prefix("pdkl6-").tempdir().unwrap();
    let file = hosts.path().join("pooled.xml");
    std::fs::write(&file, POOL_HOST).unwrap();
    let host = format!(
        "\n[[hosts]]\nname = \"pdkl6-pooled\"\nuri = \"test://{}\"\naccelerator = \"kvm\"\naddress = \"127.0.0.1\"\nmax_vms = 2\nmemory_mib = 4096\nvcpus = 2\nimage_pool = \"pdkl6-pool\"\n",
        file.display()
    );
    let extra = format!("{WARM_IMAGE}{host}");
    let (_vm_dir, vms) = manager(&extra, &["pdkl6-pooled"], "feedc0de").await;
    let lab = lab_with(false, &extra, |st| {
        st.template_seeds = Some(SeedInputs { authorized_keys: vec![DAEMON_KEY.into()], ca_key: None });
        st.instance_id = Some("feedc0de".into());
        st.vms = Some(vms.clone());
    })
    .await;

    // The start's listing: the template being built, its size, its clone's overlay, and when.
    let rows = listed(&lab, "pdkl6-pooled").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!((&row["state"], &row["image"], &row["key"]), (&"building".into(), &"warm-deb".into(), &"0123456789abcdef".into()), "{row}");
    assert_eq!((&row["pool"], &row["disk_bytes"], &row["clones"]), (&"pdkl6-pool".into(), &(3u64 << 20).into(), &1.into()), "{row}");
    let listed_at = row["listed_at"].as_str().unwrap().to_string();

    // The host cannot be listed any more (its libvirt answers no new connection), yet every
    // request still serves the last listing, marked with its time: none lists the host. The
    // CLI and the dashboard say how old it is.
    std::fs::rename(&file, hosts.path().join("gone.xml")).unwrap();
    assert!(paddock::vm::template::pool::survey(&format!("test://{}", file.display()), "pdkl6-pool", "feedc0de").is_err());
    for _ in 0..3 {
        let (_, body) = json(&lab.state, Method::GET, "/api/v1/templates", Some(&lab.bob), None).await;
        let again: Vec<&Value> = body.as_array().unwrap().iter().filter(|t| t["host"] == "pdkl6-pooled").collect();
        assert_eq!(again, [row], "{body}");
    }
    let page = dashboard(&lab).await;
    assert!(page.contains("pool pdkl6-pool, listed ") && page.contains(" ago"), "the dashboard's card lacks the listing's age");

    // The manager's next pass lists the host again: now it is unlisted, with a reason that
    // quotes no URI and the time of that try.
    vms.reconcile_now().await.unwrap();
    let now = wait_for("the next listing to find the host unreachable", std::time::Duration::from_secs(30), async || {
        let (_, body) = json(&lab.state, Method::GET, "/api/v1/templates", Some(&lab.bob), None).await;
        body.as_array().unwrap().iter().find(|t| t["host"] == "pdkl6-pooled" && t["state"] == "unlisted").cloned()
    })
    .await;
    let why = now["error"].as_str().unwrap();
    assert!(why.contains("could not be listed") && !why.contains("test://") && !why.contains("pooled.xml"), "{now}");
    assert!(now["listed_at"].as_str().unwrap() > listed_at.as_str(), "{now} after {listed_at}");
    vms.stop();
}
