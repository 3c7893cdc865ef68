//! Two real hypervisors: the machine's `qemu:///system` and a donor host started by the test
//! (`tests/support/donor.rs`: a user's session libvirtd reached over `qemu+ssh://` through an
//! sshd of the test's own). Host ports of these tests: 24200-24399 (sshd 24200-24249, guest
//! forwards from 24300). Donor users `pdkdonor1`, `pdkdonor2`, … one per test so that tests
//! may run at once.

mod support;

use std::time::{Duration, Instant};

use paddock::libvirt::{HostHandle, HostOptions, HostStatus, LibvirtError};
use support::donor::Donor;

const SSHD_PORTS: std::ops::RangeInclusive<u16> = 24200..=24249;

/// The donor is a separate hypervisor reached only over SSH, and a frozen session libvirtd
/// (SIGSTOP of the donor's own daemon, never the system one) makes the host go down within
/// its call deadline instead of hanging its callers; after SIGCONT it comes back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_donor_libvirtd_goes_down_within_the_deadline_and_comes_back() {
    let donor = Donor::start("pdkdonor1", SSHD_PORTS);
    let options = HostOptions { call_timeout: Duration::from_secs(3), connect_timeout: Duration::from_secs(60) };
    let host = HostHandle::spawn_with("donor", &donor.uri, options);
    let status = host.wait_connected().await;
    assert!(matches!(status, HostStatus::Up(_)), "donor not up: {status:?}\nsshd log:\n{}", donor.sshd_log());
    assert!(host.list().await.unwrap().is_empty(), "a new donor has no domains");
    assert!(!donor.libvirtd_pids().is_empty(), "the donor's session libvirtd runs as its own user");
    let system = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(system.contains("Uid:\t0"), "tests run as root, the donor's daemon does not");

    let frozen = donor.signal_libvirtd(libc::SIGSTOP);
    assert!(!frozen.is_empty());
    let t = Instant::now();
    let err = host.list().await.expect_err("a frozen daemon answers nothing");
    let waited = t.elapsed();
    assert!(matches!(err, LibvirtError::Timeout { .. }), "{err:?}");
    assert!(waited < Duration::from_secs(6), "the call took {waited:?}, past its 3 s deadline");
    let HostStatus::Down { reason, .. } = host.status() else { panic!("host not down: {:?}", host.status()) };
    assert!(reason.contains("list") && reason.contains("donor"), "{reason}");
    // While down, calls fail at once rather than queueing behind the stuck thread.
    let t = Instant::now();
    assert!(matches!(host.is_active("x").await, Err(LibvirtError::Down { .. })));
    assert!(t.elapsed() < Duration::from_millis(500), "a call to a down host waited {:?}", t.elapsed());

    donor.signal_libvirtd(libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !host.status().is_up() {
        assert!(Instant::now() < deadline, "donor did not come back: {:?}", host.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(host.list().await.unwrap().is_empty());
}
