//! The bundled x86_64 guest (`images/build-guest.sh`), built once per test process.

use std::path::PathBuf;

use super::repo;

/// Runs `images/build-guest.sh x86_64` once per process (quick, a no-op, when the image is current).
pub fn ensure_guest_image() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let status = std::process::Command::new("bash")
            .arg(repo().join("images/build-guest.sh"))
            .arg("x86_64")
            .current_dir(repo())
            .status()
            .expect("run images/build-guest.sh");
        assert!(status.success(), "images/build-guest.sh failed");
    });
}

/// The guest's folder (`vmlinuz`, `initrd.img`, host key), built first only when its files are missing.
pub fn guest() -> PathBuf {
    let out = repo().join("images/out/x86_64");
    if !out.join("initrd.img").exists() || !out.join("vmlinuz").exists() {
        ensure_guest_image();
    }
    out
}
