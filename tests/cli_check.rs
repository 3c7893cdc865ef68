//! `paddock check` as a user runs it: the real binary on the repo's fleet and on broken copies.

use std::path::Path;
use std::process::Command;

fn check(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_paddock")).args(["check", "--config"]).arg(config).output().expect("run paddock check")
}

#[test]
fn accepts_the_repo_fleet_and_prints_a_summary() {
    let out = check(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fleet.toml")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("local"), "{stdout}");
    assert!(stdout.contains("tiny-x86_64"), "{stdout}");
    // Three upcoming fire times for the nightly demo job.
    assert_eq!(stdout.matches(" 02:00 CE").count(), 3, "{stdout}");
}

#[test]
fn refuses_a_broken_fleet_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fleet.toml")).unwrap();
    let bad = good.replacen("images = [\"tiny-x86_64\"]", "images = [\"win7\"]", 1);
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, &bad).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = bad[..bad.find("[\"win7\"]").unwrap()].matches('\n').count() + 1;
    assert!(
        stderr.contains(&format!(
            "{}:{line}:11: jobs[0].images: no image named `win7`; known: `tiny-x86_64`, `tiny-aarch64`, `tiny-s390x`",
            path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = check(Path::new("/nonexistent/fleet.toml"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read /nonexistent/fleet.toml"), "{stderr}");
}

/// The plain bundled guest cannot start warm (its cloud kernel has no VMGENID driver and its
/// initramfs no guest agent): `paddock check` refuses it, naming file, line, key and why, and
/// points at the variant that can; that variant, saying `guest_agent = true`, is accepted.
#[test]
fn refuses_warm_start_for_the_plain_bundled_guest_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fleet.toml")).unwrap();
    let plain = "initrd = \"images/out/x86_64/initrd.img\"\n";
    let bad = good.replacen(plain, &format!("{plain}start = \"warm\"\n"), 1);
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, &bad).unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = bad[..bad.find("start = \"warm\"").unwrap()].matches('\n').count() + 1;
    assert!(
        stderr.contains(&format!(
            "{}:{line}:9: images[0].start: warm start of a `kernel` + `initrd` image needs `guest_agent = true`",
            path.display()
        )) && stderr.contains("the bundled guest's cloud kernel has no VMGENID driver and its initramfs no agent")
            && stderr.contains("images/build-guest.sh x86_64-warm"),
        "{stderr}"
    );
    let warm = good.replacen(plain, "initrd = \"images/out/x86_64-warm/initrd.img\"\nstart = \"warm\"\nguest_agent = true\n", 1).replacen(
        "kernel = \"images/out/x86_64/vmlinuz\"",
        "kernel = \"images/out/x86_64-warm/vmlinuz\"",
        1,
    );
    std::fs::write(&path, &warm).unwrap();
    let out = check(&path);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
}
