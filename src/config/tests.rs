//! Validation error messages, each checked exactly.

use std::path::Path;

use super::*;

const GOOD: &str = include_str!("../../fleet.toml");

fn errors(src: &str) -> Vec<String> {
    match parse(src, Path::new("fleet.toml")) {
        Ok(_) => panic!("expected errors"),
        Err(LoadError::Invalid(e)) => e.iter().map(|e| e.to_string()).collect(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn repo_fleet_is_valid() {
    let fleet = parse(GOOD, Path::new("fleet.toml")).unwrap();
    assert_eq!(fleet.hosts[0].accelerator, Accelerator::Tcg);
    assert_eq!(fleet.jobs[0].steps.len(), 3);
    assert!(fleet.jobs[0].stop_if_failure);
    let s = fleet.jobs[0].schedule.as_ref().unwrap();
    assert_eq!(s.tz, chrono_tz::Europe::Berlin);
}

/// Replaces the first occurrence of `from` in the repo's fleet with `to`.
fn with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "fixture text `{from}` not in fleet.toml");
    GOOD.replacen(from, to, 1)
}

fn line_of(src: &str, needle: &str) -> usize {
    src[..src.find(needle).unwrap()].matches('\n').count() + 1
}

/// Found by feeding the `fleet_toml` fuzz target deep nesting: toml gives this error no span, and its bare message
/// ("recursion limit") did not say what was wrong.
#[test]
fn too_deep_nesting_says_so() {
    let src = format!("[{}b]\n", "a.".repeat(100_000));
    assert_eq!(
        errors(&src),
        ["fleet.toml: nested too deeply: more levels of tables, arrays or dotted keys than the TOML parser \
          accepts (recursion limit)"]
    );
}

#[test]
fn syntax_error_names_line_and_column() {
    let src = with("max_vms = 4", "max_vms = = 4");
    let l = line_of(&src, "max_vms = = 4");
    assert_eq!(errors(&src), vec![format!("fleet.toml:{l}:11: extra `=`, expected nothing")]);
}

#[test]
fn unknown_key_is_an_error() {
    let src = with("max_vms = 4", "max_vms = 4\nmax_vmz = 5");
    let l = line_of(&src, "max_vmz");
    let e = errors(&src);
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with(&format!("fleet.toml:{l}:1: unknown field `max_vmz`, expected one of")), "{}", e[0]);
}

#[test]
fn wrong_type_is_an_error() {
    let src = with("max_vms = 4", "max_vms = \"four\"");
    let l = line_of(&src, "max_vms = \"four\"");
    assert_eq!(errors(&src), vec![format!("fleet.toml:{l}:11: invalid type: string \"four\", expected i64")]);
}

#[test]
fn missing_key_is_an_error() {
    let src = with("user = \"root\"\n", "");
    let e = errors(&src);
    assert_eq!(e.len(), 1);
    assert!(e[0].ends_with("missing field `user`"), "{}", e[0]);
}

#[test]
fn unknown_image_in_job_lists_known_ones() {
    let src = with("images = [\"tiny-x86_64\"]", "images = [\"tiny-x86_64\", \"win7\"]");
    let l = line_of(&src, "\"win7\"");
    assert_eq!(
        errors(&src),
        vec![format!(
            "fleet.toml:{l}:26: jobs[0].images: no image named `win7`; known: `tiny-x86_64`, `tiny-aarch64`, `tiny-s390x`, `debian-12`"
        )]
    );
}

#[test]
fn unknown_maintainer() {
    let src = with("maintainers = [\"alice\"]", "maintainers = [\"bob\"]");
    let l = line_of(&src, "[\"bob\"]");
    assert_eq!(errors(&src), vec![format!("fleet.toml:{l}:16: jobs[0].maintainers: no user named `bob`; known: `alice`, `root-admin`")]);
}

#[test]
fn bad_cron_expression() {
    let src = with("schedule = \"0 2 * * *\"", "schedule = \"0 25 * * *\"");
    let l = line_of(&src, "0 25");
    let e = errors(&src);
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with(&format!("fleet.toml:{l}:12: jobs[0].schedule: bad cron expression `0 25 * * *`: ")), "{}", e[0]);
}

#[test]
fn bad_time_zone() {
    let src = with("timezone = \"Europe/Berlin\"", "timezone = \"Mars/Olympus\"");
    let l = line_of(&src, "Mars");
    assert_eq!(
        errors(&src),
        vec![format!(
            "fleet.toml:{l}:12: jobs[0].timezone: unknown time zone `Mars/Olympus`; expected an IANA name like \"Europe/Berlin\""
        )]
    );
}

#[test]
fn bad_durations() {
    let src = with("timeout = \"1m\"", "timeout = \"90\"");
    let l = line_of(&src, "\"90\"");
    assert_eq!(
        errors(&src),
        vec![format!("fleet.toml:{l}:11: jobs[0].steps[0].timeout: `90`: number without a unit; write e.g. \"90s\" or \"90m\"")]
    );
    let src = with("max_hold = \"24h\"", "max_hold = \"2y\"");
    let l = line_of(&src, "\"2y\"");
    assert_eq!(errors(&src), vec![format!("fleet.toml:{l}:12: daemon.max_hold: `2y`: unknown unit `y`; expected s, m, h or d")]);
}

#[test]
fn bad_ssh_key() {
    let src = with("ssh_keys = [\"ssh-ed25519 AAAAC3", "ssh_keys = [\"ssh-ed25519 AAAAXX");
    let l = line_of(&src, "AAAAXX");
    let e = errors(&src);
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with(&format!("fleet.toml:{l}:13: users[0].ssh_keys[0]: not an OpenSSH public key (")), "{}", e[0]);
}

#[test]
fn bad_port_ranges() {
    for (range, msg) in [
        ("22299-22200", "`22299-22200`: the range ends before it starts"),
        ("80-90", "`80-90`: ports below 1024 are privileged; start at 1024 or above"),
        ("lots", "`lots` is not a port range like \"22200-22299\""),
    ] {
        let src = with("ssh_ports = \"22200-22299\"", &format!("ssh_ports = \"{range}\""));
        let l = line_of(&src, "ssh_ports");
        assert_eq!(errors(&src), vec![format!("fleet.toml:{l}:13: daemon.ssh_ports: {msg}")]);
    }
}

#[test]
fn bad_enum_values() {
    let src = with("accelerator = \"tcg\"", "accelerator = \"hvf\"");
    let l = line_of(&src, "\"hvf\"");
    assert_eq!(errors(&src), vec![format!("fleet.toml:{l}:15: hosts[0].accelerator: `hvf` is not allowed; expected one of `kvm`, `tcg`")]);
    let src = with("arch = \"x86_64\"", "arch = \"m68k\"");
    let l = line_of(&src, "\"m68k\"");
    assert_eq!(
        errors(&src),
        vec![format!(
            "fleet.toml:{l}:8: images[0].arch: `m68k` is not allowed; expected one of `x86_64`, `aarch64`, `s390x`, `ppc64le`, `riscv64`"
        )]
    );
}

#[test]
fn duplicate_names() {
    let src = with("name = \"root-admin\"", "name = \"alice\"");
    let l = line_of(&src, "name = \"alice\"\nrole = \"admin\"");
    assert_eq!(errors(&src), vec![format!("fleet.toml:{l}:8: users[1].name: duplicate user name `alice`")]);
}

#[test]
fn unsupported_schema_version() {
    let src = with("version = 1", "version = 2");
    assert_eq!(errors(&src), vec!["fleet.toml:3:11: version: schema version 2 is not supported; this paddock reads version 1".to_string()]);
}

#[test]
fn bad_uri_and_address() {
    let src = with("uri = \"qemu:///system\"", "uri = \"xen:///\"");
    let l = line_of(&src, "xen:");
    assert_eq!(
        errors(&src),
        vec![format!(
            "fleet.toml:{l}:7: hosts[0].uri: `xen:///` is not a libvirt URI paddock can use; expected qemu:///system, qemu+ssh://HOST/system or test:///..."
        )]
    );
    let src = with("address = \"127.0.0.1\"", "address = \"localhost\"");
    let l = line_of(&src, "\"localhost\"");
    assert_eq!(errors(&src), vec![format!("fleet.toml:{l}:11: hosts[0].address: `localhost` is not an IP address")]);
}

#[test]
fn boot_source_rules() {
    let src = with("initrd = \"images/out/x86_64/initrd.img\"\n", "");
    let l = line_of(&src, "[[images]]");
    assert_eq!(errors(&src), vec![format!("fleet.toml:{l}:1: images[0]: `kernel` and `initrd` go together; give both")]);
}

#[test]
fn several_errors_are_all_reported_in_file_order() {
    let src = with("accelerator = \"tcg\"", "accelerator = \"hvf\"").replacen("vcpus = 1", "vcpus = 0", 1);
    let e = errors(&src);
    assert_eq!(e.len(), 2);
    assert!(e[0].contains("hosts[0].accelerator"));
    assert_eq!(e[1], format!("fleet.toml:{}:9: images[0].vcpus: must be a positive number, got 0", line_of(&src, "vcpus = 0")));
}

#[test]
fn relative_paths_resolve_against_the_file() {
    let fleet = parse(GOOD, Path::new("/etc/paddock/fleet.toml")).unwrap();
    assert_eq!(fleet.daemon.state_dir, Path::new("/etc/paddock/state"));
    match &fleet.images[0].boot {
        Boot::Kernel { kernel, .. } => {
            assert_eq!(kernel, Path::new("/etc/paddock/images/out/x86_64/vmlinuz"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn schedule_fires_across_dst_like_cron() {
    use chrono::TimeZone;
    let fleet = parse(GOOD, Path::new("fleet.toml")).unwrap();
    let s = fleet.jobs[0].schedule.as_ref().unwrap();
    // 2026-03-29: Berlin moves from CET (UTC+1) to CEST (UTC+2) at 02:00, so 02:00 does not exist.
    let before = chrono::Utc.with_ymd_and_hms(2026, 3, 27, 12, 0, 0).unwrap();
    let fires = s.upcoming(before, 3);
    assert_eq!(fires[0], chrono::Utc.with_ymd_and_hms(2026, 3, 28, 1, 0, 0).unwrap());
    // The skipped local 02:00 runs at 03:00 CEST (01:00 UTC), as cron does, then 02:00 CEST.
    assert_eq!(fires[1], chrono::Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap());
    assert_eq!(fires[2], chrono::Utc.with_ymd_and_hms(2026, 3, 30, 0, 0, 0).unwrap());
}

#[test]
fn donor_limits_parse() {
    let src = with(
        "vcpus = 4\n",
        "vcpus = 4\nwindows = [\"Mon-Fri 20:00-07:00\", \"Sat,Sun 00:00-24:00\"]\ntimezone = \"Europe/Berlin\"\nhard_stop = true\n\
         jobs = [\"demo\"]\nimages = [\"tiny-x86_64\"]\nquarantine_after = 5\nnotify_command = \"logger paddock\"\n",
    );
    let fleet = parse(&src, Path::new("fleet.toml")).unwrap();
    let l = &fleet.hosts[0].limits;
    assert_eq!(l.windows.len(), 2);
    assert_eq!(l.timezone, chrono_tz::Europe::Berlin);
    assert!(l.hard_stop);
    assert_eq!(l.jobs.as_deref(), Some(&["demo".to_string()][..]));
    assert!(l.allows_image("tiny-x86_64") && !l.allows_image("other"));
    assert!(l.allows_job(Some("demo")) && !l.allows_job(Some("nightly")) && l.allows_job(None));
    assert_eq!(l.quarantine_after, 5);
    assert_eq!(l.notify_command.as_deref(), Some("logger paddock"));
    // A host with no limits: always open, everything allowed, quarantine after 3.
    let plain = parse(GOOD, Path::new("fleet.toml")).unwrap();
    let p = &plain.hosts[0].limits;
    assert!(p.windows.is_empty() && p.jobs.is_none() && p.images.is_none());
    assert_eq!(p.quarantine_after, 3);
}

#[test]
fn windows_open_and_close_in_the_donors_time_zone() {
    use chrono::TimeZone;
    let src = with("vcpus = 4\n", "vcpus = 4\nwindows = [\"Mon-Fri 20:00-07:00\"]\ntimezone = \"Europe/Berlin\"\n");
    let fleet = parse(&src, Path::new("fleet.toml")).unwrap();
    let l = &fleet.hosts[0].limits;
    // 2026-11-24 is a Tuesday; Berlin is UTC+1 in November.
    let utc = |d, h, m| chrono::Utc.with_ymd_and_hms(2026, 11, d, h, m, 0).unwrap();
    assert!(!l.open_at(utc(24, 18, 59)), "Tue 19:59 Berlin is before the window");
    assert!(l.open_at(utc(24, 19, 0)), "Tue 20:00 Berlin opens it");
    assert!(l.open_at(utc(25, 5, 59)), "Wed 06:59 Berlin is Tuesday night's window");
    assert!(!l.open_at(utc(25, 6, 0)), "Wed 07:00 Berlin closes it");
    assert!(l.open_at(utc(28, 5, 0)), "Sat 06:00 Berlin is still Friday night's window");
    assert!(!l.open_at(utc(28, 20, 0)), "Sat 21:00 Berlin: no window on Saturdays");
    assert!(!l.open_at(utc(30, 5, 0)), "Mon 06:00 Berlin: Sunday had no window");
}

#[test]
fn bad_donor_limits() {
    let src = with(
        "vcpus = 4\n",
        "vcpus = 4\nwindows = [\"Mon-Fry 20:00-07:00\", \"daily 25:00-07:00\"]\ntimezone = \"Mars/Olympus\"\n\
         images = [\"win7\"]\njobs = [\"nightly\"]\nquarantine_after = 0\n",
    );
    let l = line_of(&src, "windows =");
    assert_eq!(
        errors(&src),
        vec![
            format!(
                "fleet.toml:{l}:12: hosts[0].windows[0]: `Mon-Fry 20:00-07:00` is not a window like \"Mon-Fri 20:00-07:00\": unknown day in `Mon-Fry`"
            ),
            format!(
                "fleet.toml:{l}:35: hosts[0].windows[1]: `daily 25:00-07:00` is not a window like \"Mon-Fri 20:00-07:00\": `25:00` is not HH:MM"
            ),
            format!(
                "fleet.toml:{}:12: hosts[0].timezone: unknown time zone `Mars/Olympus`; expected an IANA name like \"Europe/Berlin\"",
                l + 1
            ),
            format!(
                "fleet.toml:{}:11: hosts[0].images: no image named `win7`; known: `tiny-x86_64`, `tiny-aarch64`, `tiny-s390x`, `debian-12`",
                l + 2
            ),
            format!("fleet.toml:{}:9: hosts[0].jobs: no job named `nightly`; known: `demo`, `arches`, `debian-build`", l + 3),
            format!("fleet.toml:{}:20: hosts[0].quarantine_after: must be a positive number, got 0", l + 4),
        ]
    );
    let src = with("vcpus = 4\n", "vcpus = 4\ntimezone = \"Europe/Berlin\"\n");
    let l = line_of(&src, "timezone = \"Europe/Berlin\"\n");
    assert_eq!(errors(&src), vec![format!("fleet.toml:{l}:12: hosts[0].timezone: `timezone` without `windows`")]);
}

#[test]
fn emulation_boot_factors_name_known_arches() {
    let fleet = parse(GOOD, Path::new("fleet.toml")).unwrap();
    assert_eq!(fleet.daemon.emulation_boot_factor.get(&Arch::S390x), Some(&2.0));
    let src = with("aarch64 = 2.0, s390x = 2.0", "m68k = 2.0");
    let l = line_of(&src, "m68k");
    let e = errors(&src);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with(&format!("fleet.toml:{l}:34: daemon.emulation_boot_factor.m68k: unknown arch `m68k`; expected one of")),
        "{}",
        e[0]
    );
    let src = with("aarch64 = 2.0, s390x = 2.0", "aarch64 = 0.5");
    assert_eq!(errors(&src).len(), 1);
}

#[test]
fn image_pool_is_optional_and_must_be_a_pool_name() {
    let fleet = parse(GOOD, Path::new("fleet.toml")).unwrap();
    assert_eq!(fleet.hosts[0].image_pool, None, "by default a host reads image files by path");
    let src = with("vcpus = 4\n", "vcpus = 4\nimage_pool = \"paddock-images\"\n");
    let fleet = parse(&src, Path::new("fleet.toml")).unwrap();
    assert_eq!(fleet.hosts[0].image_pool.as_deref(), Some("paddock-images"));
    let src = with("vcpus = 4\n", "vcpus = 4\nimage_pool = \"/var/lib/x\"\n");
    let l = line_of(&src, "image_pool");
    assert_eq!(errors(&src), vec![format!("fleet.toml:{l}:14: hosts[0].image_pool: `/var/lib/x` is not a storage pool name")]);
}

#[test]
fn secret_env_values_come_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tok"), "s3cret\n").unwrap();
    let src = with(
        "env = { GREETING = \"hello from paddock\" }",
        "env = { GREETING = \"hello from paddock\", TOKEN = { from_file = \"tok\" }, HOME_DIR = { from_env = \"HOME\" } }",
    );
    let fleet = parse(&src, &dir.path().join("fleet.toml")).unwrap();
    let job = &fleet.jobs[0];
    assert_eq!(job.env["TOKEN"], "s3cret", "one trailing newline is dropped");
    assert_eq!(job.env["HOME_DIR"], std::env::var("HOME").unwrap());
    assert_eq!(job.secret_env.iter().collect::<Vec<_>>(), ["HOME_DIR", "TOKEN"]);
    assert!(!job.secret_env.contains("GREETING"));

    let src = with(
        "env = { GREETING = \"hello from paddock\" }",
        "env = { TOKEN = { from_file = \"/nonexistent/pdkt-tok\" }, K = { from_env = \"PDKT_NOT_SET_ANYWHERE\" } }",
    );
    let l = line_of(&src, "env = { TOKEN");
    let e = errors(&src);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with(&format!("fleet.toml:{l}:17: jobs[0].env.TOKEN: cannot read /nonexistent/pdkt-tok")), "{e:?}");
    assert!(
        e[1].starts_with(&format!("fleet.toml:{l}:62: jobs[0].env.K: the daemon's environment has no variable `PDKT_NOT_SET_ANYWHERE`")),
        "{e:?}"
    );
}

#[test]
fn libvirt_deadlines_default_and_parse() {
    let fleet = parse(GOOD, Path::new("fleet.toml")).unwrap();
    assert_eq!(fleet.daemon.libvirt_timeout, crate::libvirt::DEFAULT_CALL_TIMEOUT);
    assert_eq!(fleet.daemon.libvirt_connect_timeout, crate::libvirt::DEFAULT_CONNECT_TIMEOUT);
    let src =
        with("ssh_ports = \"22200-22299\"", "ssh_ports = \"22200-22299\"\nlibvirt_timeout = \"5s\"\nlibvirt_connect_timeout = \"20s\"");
    let fleet = parse(&src, Path::new("fleet.toml")).unwrap();
    assert_eq!(fleet.daemon.libvirt_timeout, std::time::Duration::from_secs(5));
    assert_eq!(fleet.daemon.libvirt_connect_timeout, std::time::Duration::from_secs(20));
    let src = with("ssh_ports = \"22200-22299\"", "ssh_ports = \"22200-22299\"\nlibvirt_timeout = \"5\"");
    let l = line_of(&src, "\"5\"");
    assert_eq!(
        errors(&src),
        vec![format!("fleet.toml:{l}:19: daemon.libvirt_timeout: `5`: number without a unit; write e.g. \"5s\" or \"5m\"")]
    );
}

#[test]
fn repo_fleet_has_debian_12_with_a_per_vm_identity_and_debian_build_with_inputs() {
    let fleet = parse(GOOD, Path::new("fleet.toml")).unwrap();
    let img = fleet.image("debian-12").unwrap();
    assert_eq!(img.host_key, HostKeyPolicy::PerVm);
    assert!(matches!(&img.boot, Boot::Disk { base } if base.ends_with("images/out/debian-12/disk.qcow2")));
    let job = fleet.job("debian-build").unwrap();
    assert_eq!(job.images, ["debian-12"]);
    assert_eq!(job.inputs.len(), 1);
    assert!(job.inputs[0].path.is_absolute() && job.inputs[0].path.ends_with("examples/wordcount"));
    assert_eq!(job.inputs[0].dest, "/root/wordcount");
    assert_eq!(job.inputs[0].max_bytes, 1 << 20);
}

#[test]
fn identity_rules() {
    // cloud-init and a host key together: the key would be ignored, so it is an error.
    let src = with("identity = \"cloud-init\"", "identity = \"cloud-init\"\nhost_key = \"console\"");
    let l = line_of(&src, "host_key = \"console\"");
    assert_eq!(
        errors(&src),
        [format!(
            "fleet.toml:{l}:12: images[3].host_key: an image with an `identity` gets a host key generated for each VM; remove `host_key`"
        )]
    );
    let src = with("identity = \"cloud-init\"", "identity = \"magic\"");
    let l = line_of(&src, "identity = \"magic\"");
    assert_eq!(
        errors(&src),
        [format!("fleet.toml:{l}:12: images[3].identity: `magic` is not allowed; expected one of `cloud-init`, `cmdline`")]
    );
    // Neither: say what is missing.
    let src = with("identity = \"cloud-init\"\n", "");
    let e = errors(&src);
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("images[3].host_key: missing `host_key`"), "{e:?}");
    // cloud-init on a kernel image.
    let src = with("identity = \"cmdline\"", "identity = \"cloud-init\"");
    let e = errors(&src);
    assert!(e.len() == 1 && e[0].contains("images[0].identity: `identity = \"cloud-init\"` needs a `disk` image"), "{e:?}");
    let src = with("identity = \"cloud-init\"", "identity = \"cmdline\"");
    let e = errors(&src);
    assert!(e.len() == 1 && e[0].contains("images[3].identity: `identity = \"cmdline\"` needs a `kernel` + `initrd` image"), "{e:?}");
    // The bundled kernel images take theirs from the command line (the repo's fleet does so).
    assert_eq!(parse(GOOD, Path::new("fleet.toml")).unwrap().images[0].host_key, HostKeyPolicy::PerVm);
}

#[test]
fn input_rules() {
    let src = with(
        "inputs = [{ path = \"examples/wordcount\", dest = \"/root/wordcount\", max_size = \"1M\" }]",
        "inputs = [{ path = \"examples/nope\", dest = \"root/../x\", max_size = \"lots\" }]",
    );
    let l = line_of(&src, "examples/nope");
    let e = errors(&src);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with(&format!("fleet.toml:{l}:")), "{e:?}");
    assert!(e[0].contains("jobs[2].inputs[0].dest: `root/../x` is not an absolute guest path"), "{e:?}");
    assert!(e[1].contains("jobs[2].inputs[0].max_size: `lots` is not a size"), "{e:?}");
    let src = with("max_size = \"1M\"", "max_size = \"2G\", extra = 1");
    assert!(errors(&src)[0].contains("unknown field `extra`"));
    assert_eq!(validate::parse_size("16M"), Some(16 << 20));
    assert_eq!(validate::parse_size("512k"), Some(512 << 10));
    assert_eq!(validate::parse_size("100"), Some(100));
    assert_eq!(validate::parse_size("1X"), None);
}

#[test]
fn retries_and_priorities_default_parse_and_are_bounded() {
    let fleet = parse(GOOD, Path::new("fleet.toml")).unwrap();
    assert_eq!((fleet.jobs[0].retry_infrastructure, fleet.jobs[0].priority), (0, 0));
    assert_eq!(fleet.daemon.priority_aging, std::time::Duration::from_secs(60));
    assert_eq!(fleet.daemon.upload_timeout, std::time::Duration::from_secs(30 * 60));
    assert_eq!(fleet.daemon.host_cooldown, std::time::Duration::from_secs(60));
    let src = with("name = \"demo\"\n", "name = \"demo\"\nretry_infrastructure = 2\npriority = -5\n");
    let fleet = parse(&src, Path::new("fleet.toml")).unwrap();
    assert_eq!((fleet.jobs[0].retry_infrastructure, fleet.jobs[0].priority), (2, -5));
    let src = with("name = \"demo\"\n", "name = \"demo\"\nretry_infrastructure = 11\npriority = 1001\n");
    let (l1, l2) = (line_of(&src, "retry_infrastructure = 11"), line_of(&src, "priority = 1001"));
    assert_eq!(
        errors(&src),
        vec![
            format!("fleet.toml:{l1}:24: jobs[0].retry_infrastructure: must be a whole number from 0 to 10, got 11"),
            format!("fleet.toml:{l2}:12: jobs[0].priority: must be a whole number from -1000 to 1000, got 1001"),
        ]
    );
    let src = with(
        "ssh_ports = \"22200-22299\"",
        "ssh_ports = \"22200-22299\"\npriority_aging = \"30s\"\nupload_timeout = \"10m\"\nhost_cooldown = \"5s\"",
    );
    let fleet = parse(&src, Path::new("fleet.toml")).unwrap();
    assert_eq!(fleet.daemon.priority_aging, std::time::Duration::from_secs(30));
    assert_eq!(fleet.daemon.upload_timeout, std::time::Duration::from_secs(600));
    assert_eq!(fleet.daemon.host_cooldown, std::time::Duration::from_secs(5));
}

#[test]
fn an_images_platform_defaults_to_its_name_and_must_be_a_name() {
    let fleet = parse(GOOD, Path::new("fleet.toml")).unwrap();
    assert_eq!(fleet.images[0].platform, "tiny-x86_64");
    let src = with("name = \"tiny-x86_64\"\n", "name = \"tiny-x86_64\"\nplatform = \"tiny\"\n");
    let fleet = parse(&src, Path::new("fleet.toml")).unwrap();
    assert_eq!(fleet.images[0].platform, "tiny");
    let src = with("name = \"tiny-x86_64\"\n", "name = \"tiny-x86_64\"\nplatform = \"tiny box/1\"\n");
    let l = line_of(&src, "platform =");
    assert_eq!(
        errors(&src),
        vec![format!(
            "fleet.toml:{l}:12: images[0].platform: `tiny box/1` is not a valid platform name; use 1-48 of a-z, A-Z, 0-9, `-`, `_`, `.`"
        )]
    );
}

#[test]
fn retention_is_off_without_its_section_and_checked_with_it() {
    assert_eq!(parse(GOOD, Path::new("fleet.toml")).unwrap().retention, None);
    let src = format!("{GOOD}\n[retention]\nmax_age = \"30d\"\n");
    let r = parse(&src, Path::new("fleet.toml")).unwrap().retention.unwrap();
    assert_eq!((r.keep_last, r.max_age, r.failure_max_age), (10, Some(std::time::Duration::from_secs(30 * 86_400)), None));
    let src = format!("{GOOD}\n[retention]\nmax_age = \"30d\"\nfailure_max_age = \"1d\"\nkeep_last = 0\n");
    let (l1, l2) = (line_of(&src, "failure_max_age"), line_of(&src, "keep_last"));
    assert_eq!(
        errors(&src),
        vec![
            format!("fleet.toml:{l1}:19: retention.failure_max_age: failures are kept at least as long as passes: at least `max_age`"),
            format!("fleet.toml:{l2}:13: retention.keep_last: must be a positive number, got 0"),
        ]
    );
}

#[test]
fn warm_start_is_only_for_images_whose_clones_can_get_fresh_identity() {
    // The debian-12 image (cloud-init identity: guest agent and VM generation ID) may start warm.
    let src = with("identity = \"cloud-init\"", "identity = \"cloud-init\"\nstart = \"warm\"");
    let fleet = parse(&src, Path::new("fleet.toml")).unwrap();
    assert_eq!(fleet.image("debian-12").unwrap().start, Start::Warm);
    assert_eq!(parse(GOOD, Path::new("fleet.toml")).unwrap().images[0].start, Start::Cold);
    // The bundled guest may not: its cloud kernel has no VMGENID driver and its initramfs no
    // guest agent, so its clones would share the template's RNG state and host key.
    let src = with("initrd = \"images/out/x86_64/initrd.img\"\n", "initrd = \"images/out/x86_64/initrd.img\"\nstart = \"warm\"\n");
    let l = line_of(&src, "start = \"warm\"");
    let e = errors(&src);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(&format!(
            "fleet.toml:{l}:9: images[0].start: warm start of a `kernel` + `initrd` image needs `guest_agent = true`, a guest that runs the QEMU guest agent and whose kernel reseeds its RNG on a new VM generation ID (the bundled guest's cloud kernel has no VMGENID driver"
        )) && e[0].contains("images/build-guest.sh x86_64-warm"),
        "{e:?}"
    );
    // Its warm-capable variant, which says it has both, may.
    let src = with(
        "initrd = \"images/out/x86_64/initrd.img\"\n",
        "initrd = \"images/out/x86_64/initrd.img\"\nstart = \"warm\"\nguest_agent = true\n",
    );
    let fleet = parse(&src, Path::new("fleet.toml")).unwrap();
    assert_eq!((fleet.images[0].start, fleet.images[0].guest_agent), (Start::Warm, true));
    assert!(!parse(GOOD, Path::new("fleet.toml")).unwrap().images[0].guest_agent);
    // Without a per-VM identity, no image may: paddock would have no key of the clone's own to push.
    let src = with(
        "identity = \"cmdline\"             # paddock makes each VM its own host key and principal (the image has none)\ntrusts_fleet_ca = true\nboot_timeout = \"2m\"\n",
        "host_key = \"console\"\ntrusts_fleet_ca = true\nboot_timeout = \"2m\"\nstart = \"warm\"\nguest_agent = true\n",
    );
    let l = line_of(&src, "start = \"warm\"");
    assert_eq!(errors(&src).len(), 1, "{:?}", errors(&src));
    assert!(
        errors(&src)[0].starts_with(&format!(
            "fleet.toml:{l}:9: images[0].start: warm start needs a linux `disk` image with `identity = \"cloud-init\"`, or a `kernel` + `initrd` image with `identity = \"cmdline\"` and `guest_agent = true`"
        )),
        "{:?}",
        errors(&src)
    );
    let src = with("initrd = \"images/out/x86_64/initrd.img\"\n", "initrd = \"images/out/x86_64/initrd.img\"\nstart = \"hot\"\n");
    assert!(errors(&src)[0].contains("images[0].start"), "{:?}", errors(&src));
}

#[test]
fn step_kill_after_is_a_size_or_none_and_console_a_size() {
    let fleet = parse(GOOD, Path::new("fleet.toml")).unwrap();
    assert_eq!(fleet.limits.step_kill_after_bytes, Some(1 << 30));
    assert_eq!(fleet.limits.console_bytes, 8 << 20);
    let src = format!("{GOOD}\n[limits]\nstep_kill_after = \"none\"\nconsole = \"1MiB\"\n");
    let fleet = parse(&src, Path::new("fleet.toml")).unwrap();
    assert_eq!((fleet.limits.step_kill_after_bytes, fleet.limits.console_bytes), (None, 1 << 20));
    let src = format!("{GOOD}\n[limits]\nstep_kill_after = \"lots\"\n");
    let e = errors(&src);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(&format!("fleet.toml:{}:", line_of(&src, "step_kill_after"))) && e[0].contains("limits.step_kill_after"),
        "{e:?}"
    );
}

#[test]
fn a_ready_pool_needs_a_warm_image_and_a_bounded_size() {
    let src = with("identity = \"cloud-init\"", "identity = \"cloud-init\"\nstart = \"warm\"\nmin_ready = 2");
    let fleet = parse(&src, Path::new("fleet.toml")).unwrap();
    assert_eq!(fleet.image("debian-12").unwrap().min_ready, 2);
    assert_eq!(parse(GOOD, Path::new("fleet.toml")).unwrap().images[0].min_ready, 0);
    // A cold image has no template to keep clones of.
    let src = with("identity = \"cloud-init\"", "identity = \"cloud-init\"\nmin_ready = 1");
    let l = line_of(&src, "min_ready = 1");
    let e = errors(&src);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with(&format!("fleet.toml:{l}:13: images[")) && e[0].contains("].min_ready: a ready pool holds restored clones"),
        "{e:?}"
    );
    let src = with("identity = \"cloud-init\"", "identity = \"cloud-init\"\nstart = \"warm\"\nmin_ready = 65");
    let l = line_of(&src, "min_ready = 65");
    assert!(
        errors(&src)[0].starts_with(&format!("fleet.toml:{l}:13: "))
            && errors(&src)[0].contains("must be a whole number from 0 to 64, got 65"),
        "{:?}",
        errors(&src)
    );
}

#[test]
fn a_hosts_ready_entry_overrides_the_images_min_ready_and_names_file_line_and_key() {
    let warm = |src: &str| src.replace("identity = \"cloud-init\"", "identity = \"cloud-init\"\nstart = \"warm\"\nmin_ready = 1");
    let host = |src: &str, ready: &str| src.replacen("vcpus = 4\n", &format!("vcpus = 4\nready = {ready}\n"), 1);
    let ready_on = |src: &str| {
        let fleet = parse(src, Path::new("fleet.toml")).unwrap_or_else(|e| panic!("{e}"));
        fleet.image("debian-12").unwrap().min_ready_on(&fleet.hosts[0])
    };
    // Without an entry the image's own size holds; an entry replaces it, 0 included.
    assert_eq!(ready_on(&warm(GOOD)), 1);
    assert_eq!(ready_on(&host(&warm(GOOD), r#"{ "debian-12" = 3 }"#)), 3);
    assert_eq!(ready_on(&host(&warm(GOOD), r#"{ "debian-12" = 0 }"#)), 0);
    // A pool on one host only: the image keeps none elsewhere.
    assert_eq!(
        ready_on(&host(
            &GOOD.replace("identity = \"cloud-init\"", "identity = \"cloud-init\"\nstart = \"warm\""),
            r#"{ "debian-12" = 2 }"#
        )),
        2
    );
    assert_eq!(parse(GOOD, Path::new("fleet.toml")).unwrap().hosts[0].limits.ready, Default::default());

    let refused = |src: String, want: &str| {
        let l = line_of(&src, "ready = {");
        let e = errors(&src);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with(&format!("fleet.toml:{l}:")) && e[0].contains(want), "want `{want}` on line {l}: {e:?}");
    };
    refused(host(&warm(GOOD), r#"{ "debian-13" = 1 }"#), "hosts[0].ready.debian-13: no image named `debian-13`; known: `tiny-x86_64`");
    refused(
        host(&warm(GOOD), r#"{ "tiny-x86_64" = 1 }"#),
        "hosts[0].ready.tiny-x86_64: a ready pool holds restored clones: image `tiny-x86_64` needs `start = \"warm\"`",
    );
    refused(host(&warm(GOOD), r#"{ "debian-12" = 65 }"#), "hosts[0].ready.debian-12: must be a whole number from 0 to 64, got 65");
    // A host with an `image_pool` keeps clones of a disk image (restored from its template in
    // the pool), but not of a kernel + initrd image, whose template is in the state dir.
    let pooled = |src: String| src.replacen("vcpus = 4\n", "vcpus = 4\nimage_pool = \"paddock\"\n", 1);
    assert_eq!(ready_on(&pooled(host(&warm(GOOD), r#"{ "debian-12" = 1 }"#))), 1);
    let warm_tiny =
        |src: String| src.replacen("boot_timeout = \"2m\"\n", "boot_timeout = \"2m\"\nstart = \"warm\"\nguest_agent = true\n", 1);
    assert!(parse(&warm_tiny(host(&warm(GOOD), r#"{ "tiny-x86_64" = 1 }"#)), Path::new("fleet.toml")).is_ok());
    refused(
        pooled(warm_tiny(host(&warm(GOOD), r#"{ "tiny-x86_64" = 1 }"#))),
        "hosts[0].ready.tiny-x86_64: image `tiny-x86_64` boots a `kernel` + `initrd`: its template is kept in the daemon's state dir, so a host with `image_pool` keeps no ready pool of it (only of `disk` images)",
    );
    refused(
        host(&warm(GOOD), r#"{ "debian-12" = 1 }"#).replacen("vcpus = 4\n", "vcpus = 4\nimages = [\"tiny-x86_64\"]\n", 1),
        "hosts[0].ready.debian-12: image `debian-12` is not in this host's `images`",
    );
}
