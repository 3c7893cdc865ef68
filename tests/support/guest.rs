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

/// An `[[images]]` table named `name`: the bundled x86_64 kernel with an empty initramfs
/// (written into `dir`), so the kernel boots, finds no `/init` and no root device, panics
/// and loops in its panic handler (busy: keep its boot deadline short): SSH never answers.
/// `earlyprintk` puts the boot on the console from its first second, and the empty
/// initramfs spares the unpacking of the real one: under TCG at load 9, the panic came
/// 10 s after the start instead of 13-32 s with the real initramfs (console from 0.5-1.6 s,
/// not 4-11 s). `lines` are more keys of the table (`boot_timeout = "15s"`).
pub fn mute_image(dir: &std::path::Path, name: &str, lines: &str) -> String {
    // A cpio "newc" archive holding only its trailer: what `cpio -o -H newc </dev/null` writes.
    // Its 13 header fields: inode, mode, uid, gid, nlink (1), mtime, size, four device numbers,
    // the name's length (with its NUL) and a checksum.
    let fields = [0u32, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0];
    let mut cpio: Vec<u8> =
        std::iter::once("070701".to_string()).chain(fields.iter().map(|f| format!("{f:08X}"))).collect::<String>().into_bytes();
    cpio.extend_from_slice(b"TRAILER!!!\0");
    cpio.resize(cpio.len().next_multiple_of(512), 0);
    let initrd = dir.join(format!("{name}-empty-initrd.img"));
    std::fs::write(&initrd, &cpio).unwrap();
    format!(
        r#"
[[images]]
name = "{name}"
os = "linux"
arch = "x86_64"
kernel = "{kernel}"
initrd = "{initrd}"
cmdline = "console=ttyS0 earlyprintk=ttyS0 no_timer_check"
memory_mib = 256
vcpus = 1
user = "root"
{lines}
"#,
        kernel = guest().join("vmlinuz").display(),
        initrd = initrd.display(),
    )
}
