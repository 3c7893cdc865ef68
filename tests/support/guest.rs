//! The bundled x86_64 guest (`images/build-guest.sh`), built once per test process.

use std::path::PathBuf;

use super::repo;

/// Runs `images/build-guest.sh x86_64` once per process (quick, a no-op, when the image is current).
pub fn ensure_guest_image() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| build("x86_64"));
}

/// Runs `images/build-guest.sh x86_64-warm` once per process: the bundled guest's variant that
/// may start warm (Debian's generic kernel with VMGENID, the QEMU guest agent); its folder.
pub fn ensure_warm_guest_image() -> PathBuf {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| build("x86_64-warm"));
    repo().join("images/out/x86_64-warm")
}

fn build(flavour: &str) {
    let status = std::process::Command::new("bash")
        .arg(repo().join("images/build-guest.sh"))
        .arg(flavour)
        .current_dir(repo())
        .status()
        .expect("run images/build-guest.sh");
    assert!(status.success(), "images/build-guest.sh {flavour} failed");
}

/// The guest's folder (`vmlinuz`, `initrd.img`), built first only when its files are missing.
pub fn guest() -> PathBuf {
    let out = repo().join("images/out/x86_64");
    if !out.join("initrd.img").exists() || !out.join("vmlinuz").exists() {
        ensure_guest_image();
    }
    out
}

/// A host key made by a test for the bundled guest (which has none of its own): the kernel
/// command-line words that hand it over (`paddock.hostkey=`, `paddock.hostpub=`,
/// `paddock.principal=NAME`) and its public line, for tests of the `console`, `file:` and
/// pinned host-key policies. paddock's own `identity = "cmdline"` makes one per VM instead.
pub struct TestHostKey {
    pub cmdline: String,
    pub public: String,
}

pub fn test_host_key(principal: &str) -> TestHostKey {
    let id = paddock::vm::seed::Identity::generate(principal).unwrap();
    let cmdline = paddock::libvirt::domain_xml::identity_cmdline(&id.private_pem().unwrap(), &id.public_line(), principal);
    TestHostKey { cmdline: cmdline.trim().to_string(), public: id.public_line() }
}
