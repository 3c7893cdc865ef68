//! End-to-end checks of the bundled guest on foreign architectures: builds the aarch64 and
//! the big-endian s390x image with `images/build-guest.sh`, boots each under TCG on
//! `qemu:///system` through `bench/baseline.sh --arch`, logs in over SSH on a 127.0.0.1
//! passt forward and asks the guest for its machine name and byte order.

mod support;

use std::fs;
use std::process::Command;

use support::virsh::domains_named;
use support::{free_port, repo, run, value};

/// Generous for emulated boots on a shared 2-core machine: alone, aarch64 reaches SSH in
/// about 4 s and s390x in about 6 s; concurrent tests and builds can multiply that.
const BOOT_DEADLINE_S: u32 = 240;

/// `uname -m`, then the octal dump of the 16-bit word whose first byte is `I` (0x49, octal
/// 111) and whose second is the zero byte od pads with: `000111` on a little-endian
/// machine, `044400` on a big-endian one. Everything here is a busybox applet.
const PROBE: &str = "uname -m; echo -n I | od -to2 | head -n1";

/// What the probe printed, split into the machine name and the od word.
struct Probe {
    machine: String,
    word: String,
}

/// Builds `arch`'s image, boots it with baseline.sh, runs [`PROBE`] and checks what every
/// boot must satisfy: a login within the deadline, the guest's own host key and readiness
/// announced on the architecture's console, and no domain left behind.
fn boot_and_probe(arch: &str) -> Probe {
    run(Command::new(repo().join("images/build-guest.sh")).arg(arch));
    let console = std::env::temp_dir().join(format!("paddock-guest-arch-{arch}-{}.log", std::process::id()));
    let port = free_port();
    let out = run(Command::new(repo().join("bench/baseline.sh"))
        .args(["--arch", arch, "--timeout", &BOOT_DEADLINE_S.to_string()])
        .arg("--console-out")
        .arg(&console)
        .arg(port.to_string())
        .arg(PROBE));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{arch}:\n{stdout}");

    assert_eq!(value(&stdout, "exit_status"), "0");
    let boot: f64 = value(&stdout, "boot_to_ssh_s").parse().expect("boot_to_ssh_s is a number");
    assert!(boot > 0.0 && boot < f64::from(BOOT_DEADLINE_S), "boot_to_ssh_s={boot}");

    // The markers reach the console file only if the kernel was told the right console
    // (ttyAMA0 on aarch64, the SCLP console ttysclp0 on s390x).
    let log = fs::read_to_string(&console).expect("console log copied out");
    fs::remove_file(&console).expect("remove the console log");
    // The key baseline.sh made for this guest: the image has none of its own.
    let host_pub = value(&stdout, "host_key");
    let announced: Vec<&str> =
        log.lines().skip_while(|l| l.trim() != "PADDOCK-HOSTKEY-BEGIN").skip(1).take_while(|l| l.trim() != "PADDOCK-HOSTKEY-END").collect();
    assert_eq!(announced, vec![host_pub.trim()], "host key on the {arch} console:\n{log}");
    assert!(log.lines().any(|l| l.trim() == "PADDOCK-READY"), "no PADDOCK-READY on the {arch} console:\n{log}");

    let leftover = domains_named(&format!("baseline-{port}-"));
    assert!(leftover.is_empty(), "domains left behind: {leftover:?}");

    let mut lines = stdout.lines();
    let machine = lines.next().unwrap_or_default().trim().to_owned();
    let word = lines.next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or_default().to_owned();
    Probe { machine, word }
}

#[test]
fn aarch64_guest_boots_and_is_little_endian() {
    let probe = boot_and_probe("aarch64");
    assert_eq!(probe.machine, "aarch64");
    assert_eq!(probe.word, "000111", "expected little-endian");
}

#[test]
fn s390x_guest_boots_and_is_big_endian() {
    let probe = boot_and_probe("s390x");
    assert_eq!(probe.machine, "s390x");
    assert_eq!(probe.word, "044400", "expected big-endian");
}
