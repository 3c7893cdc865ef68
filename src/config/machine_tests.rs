//! Validation of `[[machines]]`: every mistake names file, line and key.

use std::path::Path;

use super::*;

const GOOD: &str = include_str!("../../fleet.toml");
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKVQ4ZlC/DCTfJt/QRKzoV1EhzzDfvKOzQoLdCgLnEX4";

/// The repo's fleet with one machine (its lines as given) and a job on it.
fn fleet_with(machine: &str) -> String {
    format!(
        "{GOOD}\n[[machines]]\n{machine}\n\n[[jobs]]\nname = \"on-mac\"\nimages = [\"mac\"]\n\n[[jobs.steps]]\nname = \"t\"\ntype = \"test\"\ncommand = \"true\"\n"
    )
}

fn base(extra: &str) -> String {
    format!("name = \"mac\"\nhost = \"local\"\ndomain = \"macos-14\"\nssh_port = 23210\nhost_key = \"{KEY}\"\nuser = \"admin\"\n{extra}")
}

fn errors(src: &str) -> Vec<String> {
    match parse(src, Path::new("fleet.toml")) {
        Ok(_) => panic!("expected errors"),
        Err(LoadError::Invalid(e)) => e.iter().map(|e| e.to_string()).collect(),
        Err(e) => panic!("{e}"),
    }
}

fn line_of(src: &str, needle: &str) -> usize {
    src[..src.rfind(needle).unwrap()].matches('\n').count() + 1
}

#[test]
fn a_machine_is_validated_and_jobs_may_name_it() {
    let src = fleet_with(&base("snapshot = \"clean\"\nafter = \"revert\"\nos = \"macos\"\narch = \"aarch64\""));
    let fleet = parse(&src, Path::new("fleet.toml")).unwrap();
    let m = fleet.machine("mac").unwrap();
    assert_eq!((m.host.as_str(), m.domain.as_str(), m.snapshot.as_deref(), m.ssh_port), ("local", "macos-14", Some("clean"), 23210));
    assert_eq!((m.after, m.os, m.arch, m.shell), (AfterRun::Revert, Os::Macos, Arch::Aarch64, Shell::Sh));
    assert!(matches!(&m.host_key, HostKeyPolicy::Pinned(k) if k.to_openssh().unwrap() == KEY));
    assert_eq!(fleet.job("on-mac").unwrap().images, ["mac"]);
    // What a run reports: the machine's platform, os and arch; never an image to launch.
    let guest = fleet.run_target("mac").unwrap();
    assert_eq!((guest.platform.as_str(), guest.os, guest.arch, guest.user.as_str()), ("mac", Os::Macos, Arch::Aarch64, "admin"));
    assert!(fleet.image("mac").is_none());
}

#[test]
fn machine_mistakes_name_file_line_and_key() {
    let cases: [(&str, &str, &str); 7] = [
        ("host = \"local\"", "host = \"nowhere\"", "machines[0].host: no host named `nowhere`; known: `local`"),
        ("ssh_port = 23210", "ssh_port = 22250", "machines[0].ssh_port: port 22250 is inside daemon.ssh_ports (22200-22299)"),
        ("ssh_port = 23210", "ssh_port = 70000", "machines[0].ssh_port: must be a whole number from 1 to 65535, got 70000"),
        (&format!("host_key = \"{KEY}\""), "host_key = \"console\"", "machines[0].host_key: a machine's host key is pinned"),
        ("user = \"admin\"\n", "user = \"admin\"\nafter = \"revert\"\n", "machines[0].after: `after = \"revert\"` needs a `snapshot`"),
        ("user = \"admin\"\n", "user = \"admin\"\nafter = \"destroy\"\n", "machines[0].after: `destroy` is not allowed"),
        ("name = \"mac\"", "name = \"debian-12\"", "machines[0].name: duplicate image or machine name `debian-12`"),
    ];
    for (from, to, want) in cases {
        let machine = base("").replacen(from, to, 1);
        let src = fleet_with(&machine);
        let needle = to.lines().last().unwrap();
        let l = line_of(&src, needle);
        let e = errors(&src);
        assert!(
            e.iter().any(|e| e.starts_with(&format!("fleet.toml:{l}:")) && e.contains(want)),
            "{to}: want line {l} `{want}`, got {e:?}"
        );
    }
}

#[test]
fn two_machines_on_one_host_never_share_a_port_or_domain() {
    let second = base("").replace("name = \"mac\"", "name = \"mac2\"").replace("macos-14", "macos-15");
    let src = format!("{}\n[[machines]]\n{second}\n", fleet_with(&base("")));
    let e = errors(&src);
    assert!(e.iter().any(|e| e.contains("machines[1]: machine `mac2` has the host and the port or domain of `mac`")), "{e:?}");
}
