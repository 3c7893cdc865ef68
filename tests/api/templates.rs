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

/// A host with an `image_pool` whose pool cannot be listed (here: a pool its libvirt does not
/// have) is one `unlisted` row naming the host and its pool, with a reason that quotes no URI;
/// the state directory's templates are listed beside it as ever (its scratch folder of pool
/// save headers is none).
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
    let seeds = SeedInputs { authorized_keys: vec![DAEMON_KEY.into()], ca_key: None };
    let lab = lab_with(false, &format!("{WARM_IMAGE}{host}"), |st| {
        st.template_seeds = Some(seeds.clone());
        st.instance_id = Some("feedc0de".into());
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

    let (st, body) = json(&lab.state, Method::GET, "/api/v1/templates", Some(&lab.bob), None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let list = body.as_array().unwrap();
    assert_eq!(list.len(), 2, "{body}");
    let local = by_host_and_state(list, "local", "ready");
    assert!(local["pool"].is_null() && local["error"].is_null(), "{local}");
    let unlisted = by_host_and_state(list, "pdkp5-pooled", "unlisted");
    assert_eq!(unlisted["pool"], "pdkp5-no-such-pool", "{unlisted}");
    let why = unlisted["error"].as_str().unwrap();
    assert!(why.contains("could not be listed") && !why.contains("test:///"), "{unlisted}");
    assert!(unlisted["image"].is_null() && unlisted["clones"] == 0, "{unlisted}");
}
