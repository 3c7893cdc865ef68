//! The real Debian 12 image (`images/build-debian.sh`) booted from its own disk under
//! TCG, with its identity from a per-VM cloud-init seed: a job compiles and tests a C
//! program uploaded as its `inputs` (the good cases pass); a broken test case fails the build
//! with the failing test's output; the system `ssh` client checks the per-VM host keys
//! and the per-VM principal of a grant's certificate, before and after revoke.
//!
//! Boots are slow here (60-130 s each, more when several share the two cores), so the
//! whole story runs on two VMs booted at once in one test, plus one crash test and one on a
//! donor host.

use std::process::Command;
use std::time::{Duration, Instant};

use paddock::runs::Trigger;

use super::*;

/// Builds the debian-12 disk if it is missing (a no-op when its stamp is current;
/// concurrent test processes wait for each other on the script's lock).
pub fn ensure_debian_image() -> PathBuf {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let status = Command::new("bash").arg(repo().join("images/build-debian.sh")).status().expect("run images/build-debian.sh");
        assert!(status.success(), "images/build-debian.sh failed");
    });
    repo().join("images/out/debian-12/disk.qcow2")
}

/// The debian-12 image (cloud-init identity) as fleet TOML.
const DEBIAN_IMAGE: &str = r#"
[[images]]
name = "debian-12"
os = "linux"
arch = "x86_64"
disk = "{disk}"
memory_mib = 768
vcpus = 1
user = "root"
identity = "cloud-init"
trusts_fleet_ca = true
boot_timeout = "12m"
"#;

/// One local TCG host and the debian-12 image, user `alice` with `alice_keys`, then `jobs`.
pub(super) fn debian_toml(dir: &Path, ports: &str, alice_keys: &[String], jobs: &str) -> TestFleet {
    let disk = ensure_debian_image();
    TestFleet::local(dir, ports)
        .section(&DEBIAN_IMAGE.replace("{disk}", &disk.display().to_string()))
        .user("alice", "maintainer", alice_keys)
        .section(jobs)
}

/// [`debian_toml`], written to `dir/fleet.toml` and loaded.
pub(super) fn debian_fleet(dir: &Path, ports: &str, alice_keys: &[String], jobs: &str) -> Fleet {
    load_fleet(dir, &debian_toml(dir, ports, alice_keys, jobs).toml())
}

/// A job for a VM that is killed while it boots: its step never runs.
const BOOT_JOB: &str = r#"
[[jobs]]
name = "debian-build"
images = ["debian-12"]
maintainers = ["alice"]
[[jobs.steps]]
name = "build"
type = "build"
command = "true"
"#;

/// The system `ssh` client as root on a guest's forwarded port, checking its host key
/// against `known_hosts` (strictly) and logging in with `key` + `cert` only.
fn ssh(port: u16, known_hosts: &Path, key: &Path, cert: &Path, command: &str) -> Command {
    let mut c = Command::new("ssh");
    c.args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes"])
        .args(["-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR", "-o", "HostKeyAlgorithms=ssh-ed25519"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-o")
        .arg(format!("CertificateFile={}", cert.display()))
        .arg("-i")
        .arg(key)
        .args(["-p", &port.to_string(), "root@127.0.0.1", command]);
    c
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn alice_key(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("alice");
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f"]).arg(&key).status().unwrap();
    assert!(st.success());
    (key.clone(), std::fs::read_to_string(dir.join("alice.pub")).unwrap())
}

/// The wordcount sources (at most 1 MiB) and a broken test case on top of them (from
/// `broken`), held on failure: `build`; `test-good` runs the four good cases with the broken one
/// set aside (they pass); `test` puts it back and fails on it.
fn broken_job(name: &str, broken: &Path) -> String {
    let src = repo().join("examples/wordcount");
    format!(
        r#"
[[jobs]]
name = "{name}"
images = ["debian-12"]
maintainers = ["alice"]
inputs = [{{ path = "{src}", dest = "/root/wordcount", max_size = "1M" }}, {{ path = "{broken}", dest = "/root/wordcount/tests/cases" }}]
hold_on_failure = "30m"
[[jobs.steps]]
name = "build"
type = "build"
command = "cd /root/wordcount && make"
timeout = "10m"
[[jobs.steps]]
name = "test-good"
type = "test"
command = "cd /root/wordcount && mkdir -p /root/aside && mv tests/cases/broken.* /root/aside/ && make test"
timeout = "10m"
[[jobs.steps]]
name = "test"
type = "test"
command = "cd /root/wordcount && mv /root/aside/broken.* tests/cases/ && make test"
timeout = "10m"
"#,
        src = src.display(),
        broken = broken.display(),
    )
}

/// Two debian-12 VMs booted at once (each cold boot is the expensive part here, so one VM
/// both shows the good build passing and the broken case failing; a third VM for a run that
/// ends in success would cost a boot: success on debian-12 is shown by the donor test below
/// and by `warm.rs`). Then the identity checks need both VMs alive: each is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_12_builds_tests_and_gives_each_vm_its_own_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = alice_key(dir.path());
    // A broken test case, uploaded on top of the sources by a second input.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("broken.in"), "nine nine nine\n").unwrap();
    std::fs::write(broken.join("broken.out"), "1 3 15 ten\n").unwrap();
    let jobs = [broken_job("debian-broken", &broken), broken_job("debian-broken-too", &broken)].join("\n");
    let fleet = debian_fleet(dir.path(), "24010-24019", &[public], &jobs);
    let daemon = start(fleet).await;
    let _guard = DomainGuard::new(dir.path());
    let by = || Trigger::Manual { by: "alice".into() };
    let bad = daemon.runs.trigger("debian-broken", None, by()).await.unwrap().remove(0);
    let other = daemon.runs.trigger("debian-broken-too", None, by()).await.unwrap().remove(0);

    // Compiled, the four good cases pass; then the broken case fails the build, its result
    // showing the failing case, and the VM is held.
    let held = wait_for_run(&daemon, &bad, Duration::from_secs(900), finished).await;
    assert_eq!((held.state.as_str(), held.outcome.as_deref()), ("held", Some("build-failure")), "{held:?}");
    assert_eq!(held.reason.as_deref(), Some("step `test` failed"));
    let doc: serde_json::Value = serde_json::from_str(held.result_json.as_deref().unwrap()).unwrap();
    let good = doc["results"][1]["output"].as_str().unwrap();
    assert!(good.contains("4 passed, 0 failed"), "{good}");
    let out = doc["results"][2]["output"].as_str().unwrap();
    assert!(out.contains("FAIL broken: expected '1 3 15 ten', got '1 3 15 nine'"), "{out}");
    assert!(out.contains("4 passed, 1 failed"), "{out}");
    let held_too = wait_for_run(&daemon, &other, Duration::from_secs(900), finished).await;
    assert_eq!(held_too.state, "held", "{held_too:?}");
    let (vm_a, vm_b) = (held.vm_name.clone().unwrap(), held_too.vm_name.clone().unwrap());

    // Each VM shows the host key pinned for it; the two differ.
    rustls::crypto::ring::default_provider().install_default().ok();
    let token = daemon.store.create_token("alice").await.unwrap().token;
    let http = reqwest::Client::new();
    let base = format!("http://{}", daemon.addr);
    let vms: serde_json::Value = http.get(format!("{base}/api/v1/vms")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let shown = |name: &str| -> (String, u16) {
        let v = vms.as_array().unwrap().iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("{name} not in {vms}"));
        (v["host_key"].as_str().unwrap().to_string(), v["ssh_port"].as_u64().unwrap() as u16)
    };
    let ((key_a, port_a), (key_b, port_b)) = (shown(&vm_a), shown(&vm_b));
    assert_ne!(key_a.split_whitespace().nth(1), key_b.split_whitespace().nth(1), "two VMs share a host key");

    // A grant on run A: its certificate names A's principal and A's known_hosts line.
    let resp = http
        .post(format!("{base}/api/v1/access"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"run": bad, "duration": "20m", "reason": "look at the failing test"}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let grant: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{grant}");
    assert_eq!(grant["vm_name"].as_str(), Some(vm_a.as_str()));
    let cert = dir.path().join("alice-cert.pub");
    std::fs::write(&cert, format!("{}\n", grant["certificates"][0]["certificate"].as_str().unwrap())).unwrap();
    let known_a = dir.path().join("known_a");
    let line = grant["known_hosts"].as_str().unwrap_or_else(|| panic!("no known_hosts in {grant}"));
    assert_eq!(line, format!("[127.0.0.1]:{port_a} {}", key_a.split_whitespace().take(2).collect::<Vec<_>>().join(" ")));
    std::fs::write(&known_a, format!("{line}\n")).unwrap();
    let listed = Command::new("ssh-keygen").arg("-L").arg("-f").arg(&cert).output().unwrap();
    let listed = text(&listed.stdout);
    assert!(listed.contains(&format!("\n                {vm_a}\n")), "principal is not the VM's:\n{listed}");
    assert!(!listed.contains("permit-port-forwarding") && !listed.contains("permit-agent-forwarding"), "{listed}");
    assert!(!listed.contains("permit-X11-forwarding") && !listed.contains("permit-user-rc"), "{listed}");

    // The system ssh client: A presents exactly the key paddock showed (strict checking
    // against that one line) and accepts the certificate; the failed build is there.
    let out = ssh(port_a, &known_a, &key, &cert, "hostname; cat /root/wordcount/tests/cases/broken.out").output().unwrap();
    assert!(out.status.success(), "login to A failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{vm_a}\n1 3 15 ten\n"));
    // B presents another key, and refuses A's certificate even with B's own key trusted.
    let out = ssh(port_b, &known_a, &key, &cert, "true").output().unwrap();
    assert!(!out.status.success() && text(&out.stderr).contains("Host key verification failed"), "{}", text(&out.stderr));
    let known_b = dir.path().join("known_b");
    std::fs::write(&known_b, format!("[127.0.0.1]:{port_b} {key_b}\n")).unwrap();
    let out = ssh(port_b, &known_b, &key, &cert, "true").output().unwrap();
    assert!(!out.status.success(), "A's certificate logged in to B");
    assert!(text(&out.stderr).contains("Permission denied"), "{}", text(&out.stderr));

    // Revoke while a session is open: the session ends, the certificate stops working
    // at once (long before it expires), and the held VM keeps running.
    let mut session = ssh(port_a, &known_a, &key, &cert, "echo open; exec sleep 600").stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(session.stdout.as_mut().unwrap()), &mut first).unwrap();
    assert_eq!(first, "open\n");
    let id = grant["id"].as_str().unwrap();
    let resp = http.post(format!("{base}/api/v1/access/{id}/revoke")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if session.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the grant's session outlived the revoke");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = ssh(port_a, &known_a, &key, &cert, "true").output().unwrap();
    assert!(!out.status.success(), "login still works after revoke");
    assert!(text(&out.stderr).contains("Permission denied"), "{}", text(&out.stderr));
    assert_eq!(domains_named(&vm_a), vec![vm_a.clone()], "the held VM stays for its hold");

    // Ending the holds removes both VMs with their overlays and seeds.
    for run in [&bad, &other] {
        let resp = http.post(format!("{base}/api/v1/runs/{run}/cancel")).bearer_auth(&token).send().await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    }
    let prefix = format!("paddock-{}-", instance_id(dir.path()));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !domains_named(&prefix).is_empty() || !overlays(dir.path()).is_empty() {
        assert!(Instant::now() < deadline, "left behind: {:?} {:?}", domains_named(&prefix), overlays(dir.path()));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    daemon.stop().await.unwrap();
}

/// SIGKILL of the daemon while a debian-12 VM boots (its overlay and seed written):
/// after a restart the domain, the overlay and the seed are all gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_boot_of_debian_12_leaves_no_overlay_or_seed() {
    let dir = tempfile::tempdir().unwrap();
    debian_fleet(dir.path(), "24030-24039", &[], BOOT_JOB);
    let config = dir.path().join("fleet.toml");
    // --demo triggers every job once at start.
    let first = super::crash::Serve::start(&config, true);
    let _guard = DomainGuard::new(dir.path());
    let prefix = format!("paddock-{}-", instance_id(dir.path()));
    let vm = wait_for("the VM's domain", Duration::from_secs(120), async || domains_named(&prefix).into_iter().next()).await;
    let seed = dir.path().join(format!("state/overlays/{vm}-seed.iso"));
    let overlay = dir.path().join(format!("state/overlays/{vm}.qcow2"));
    assert!(seed.exists() && overlay.exists(), "{:?}", overlays(dir.path()));
    first.sigkill();

    let _second = super::crash::Serve::start(&config, false);
    wait_for("the orphaned VM, overlay and seed to be reaped", Duration::from_secs(60), async || {
        (domains_named(&prefix).is_empty() && overlays(dir.path()).is_empty()).then_some(())
    })
    .await;
}

/// A debian-12 VM on a pool host (`support::donor`: a real second libvirt host, a user's
/// session daemon over `qemu+ssh://`): the disk goes up into the donor's pool, the VM's seed
/// goes up as a volume beside its overlay (no local copy stays), the guest boots with the
/// identity from it and runs a step; after the run neither its seed nor its overlay volume is
/// left there, while the image's volume stays. Donor user `pdkg21`, sshd 26040-26059,
/// guests 26060-26069.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debian_12_vm_on_a_donor_gets_its_seed_as_a_pool_volume_and_leaves_none_after_the_run() {
    use super::support::donor::{Donor, POOL};
    let donor = Donor::start("pdkg21", 26040..=26059);
    let dir = tempfile::Builder::new().prefix("pdkg2-").tempdir().unwrap();
    let job = r#"
[[jobs]]
name = "on-donor"
images = ["debian-12"]
[[jobs.steps]]
name = "who"
type = "build"
command = "echo step-started; hostname; cat /etc/ssh/auth_principals/root; sleep 15"
"#;
    let toml = debian_toml(dir.path(), "26060-26069", &[], job).host("donor", &donor.uri).host_line(&format!("image_pool = \"{POOL}\""));
    let fleet = load_fleet(dir.path(), &toml.toml());
    let daemon = start(fleet).await;
    let id = daemon.runs.trigger("on-donor", None, Trigger::Manual { by: "alice".into() }).await.unwrap().remove(0);
    let log = dir.path().join("state/logs").join(&id).join("run.log");
    wait_until("the step's first line", Duration::from_secs(1200), async || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("step-started")
    })
    .await;
    let vm = daemon.store.run(&id).await.unwrap().unwrap().vm_name.expect("the run's VM");
    assert!(donor.domains().contains(&vm), "the run's VM runs on the donor");
    let (seed, overlay) = (format!("{vm}-seed.iso"), format!("{vm}-overlay.qcow2"));
    let volumes = donor.volumes();
    assert!(volumes.contains(&seed) && volumes.contains(&overlay), "{volumes:?}");
    let xml = String::from_utf8_lossy(&donor.virsh(&["dumpxml", &vm]).stdout).into_owned();
    assert!(xml.contains(donor.pool_dir.join(&seed).to_str().unwrap()), "the seed volume is not attached: {xml}");
    assert!(!xml.contains(dir.path().to_str().unwrap()), "a daemon path in the donor's domain: {xml}");
    assert!(overlays(dir.path()).is_empty(), "a local overlay or seed for a pool host: {:?}", overlays(dir.path()));

    let row = wait_for_run(&daemon, &id, Duration::from_secs(300), finished).await;
    assert_eq!(row.outcome.as_deref(), Some("success"), "{row:?}");
    let doc: serde_json::Value = serde_json::from_str(row.result_json.as_deref().unwrap()).unwrap();
    let out = doc["results"][0]["output"].as_str().unwrap();
    // Hostname and principal come from the seed: the guest is this VM.
    assert_eq!(out.lines().collect::<Vec<_>>(), ["step-started", vm.as_str(), vm.as_str()], "{out}");
    wait_until("the VM's seed and overlay volumes to go", Duration::from_secs(120), async || {
        let v = donor.volumes();
        !v.contains(&seed) && !v.contains(&overlay) && !donor.domains().contains(&vm)
    })
    .await;
    let left = donor.volumes();
    assert!(left.iter().any(|v| v.starts_with("paddock-debian-12-")), "the image's volume stays: {left:?}");
    assert!(!left.iter().any(|v| v.starts_with(&vm)), "{left:?}");
    daemon.stop().await.unwrap();
}
