//! Who may have access to what, for how long: a pure function of the fleet's
//! `[access]` policy, the requester and the target.
//!
//! The rules, in order: nothing longer than `access.max_grant`, ever. Viewers
//! may not ask. A run must be held (its VM kept after a failure). Admins are
//! approved at once. A maintainer of a job is approved at once for that job's
//! images and held runs up to `access.auto_approve_max`; anything longer or for
//! another job's machines waits for an admin.

use std::time::Duration;

use crate::config::{Fleet, Role, User};

/// What a request is for, resolved against the fleet and the runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject<'a> {
    /// A fresh VM of this image.
    Image(&'a str),
    /// The held VM of a failed run of `job`.
    HeldRun { run_id: &'a str, job: &'a str, held: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approve,
    /// Allowed to ask, but an admin must decide; the text says why.
    AskAdmin(String),
    /// Not allowed at all; the text says why.
    Refuse(String),
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (h, 0, 0) if h > 0 => format!("{h}h"),
        (0, m, 0) => format!("{m}m"),
        (0, 0, s) => format!("{s}s"),
        (h, m, 0) => format!("{h}h{m}m"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

/// Whether `user` maintains a job that runs on `subject`'s machine.
pub fn maintains(fleet: &Fleet, user: &str, subject: &Subject<'_>) -> bool {
    let mine = |j: &crate::config::Job| j.maintainers.iter().any(|m| m == user);
    match subject {
        Subject::Image(image) => fleet.jobs.iter().any(|j| mine(j) && j.images.iter().any(|i| i == image)),
        Subject::HeldRun { job, .. } => fleet.job(job).is_some_and(mine),
    }
}

/// The decision for a new request of `duration`.
pub fn decide(fleet: &Fleet, user: &User, subject: &Subject<'_>, duration: Duration) -> Decision {
    let policy = &fleet.access;
    if duration.is_zero() {
        return Decision::Refuse("a grant must last longer than zero".into());
    }
    if duration > policy.max_grant {
        return Decision::Refuse(format!(
            "{} is longer than the longest grant this fleet allows ({})",
            human(duration),
            human(policy.max_grant)
        ));
    }
    if user.role == Role::Viewer {
        return Decision::Refuse(format!("`{}` is a viewer; access needs a maintainer or an admin", user.name));
    }
    if let Subject::HeldRun { run_id, held: false, .. } = subject {
        return Decision::Refuse(format!("run {run_id} is not held; only a held run's VM can be entered"));
    }
    if user.role == Role::Admin {
        return Decision::Approve;
    }
    if !maintains(fleet, &user.name, subject) {
        let what = match subject {
            Subject::Image(i) => format!("image `{i}`"),
            Subject::HeldRun { run_id, job, .. } => format!("run {run_id} of job `{job}`"),
        };
        return Decision::AskAdmin(format!("`{}` maintains no job of {what}", user.name));
    }
    if duration > policy.auto_approve_max {
        return Decision::AskAdmin(format!(
            "{} is longer than a maintainer is approved for without an admin ({})",
            human(duration),
            human(policy.auto_approve_max)
        ));
    }
    Decision::Approve
}

/// How long a grant may last in total after an extension by `by`: admins up to
/// `max_grant`; the grant's own user up to what they would be approved for
/// at once. `None`: `by` may not extend it.
pub fn extension_cap(fleet: &Fleet, by: &User, owner: &str, subject: &Subject<'_>) -> Option<Duration> {
    match by.role {
        Role::Admin => Some(fleet.access.max_grant),
        Role::Maintainer if by.name == owner && maintains(fleet, &by.name, subject) => {
            Some(fleet.access.auto_approve_max.min(fleet.access.max_grant))
        }
        Role::Maintainer | Role::Viewer => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const FLEET: &str = r#"
version = 1

[daemon]
listen = "127.0.0.1:0"
state_dir = "/tmp/paddock-policy-test"
ssh_ports = "22400-22409"

[access]
auto_approve_max = "2h"
max_grant = "8h"

[[hosts]]
name = "local"
uri = "test:///default"
accelerator = "tcg"
address = "127.0.0.1"
max_vms = 4
memory_mib = 4096
vcpus = 4

[[images]]
name = "tiny"
os = "linux"
arch = "x86_64"
kernel = "/nonexistent/vmlinuz"
initrd = "/nonexistent/initrd"
memory_mib = 256
vcpus = 1
user = "root"
host_key = "console"
trusts_fleet_ca = true

[[images]]
name = "other"
os = "linux"
arch = "x86_64"
kernel = "/nonexistent/vmlinuz"
initrd = "/nonexistent/initrd"
memory_mib = 256
vcpus = 1
user = "root"
host_key = "console"

[[jobs]]
name = "build"
images = ["tiny"]
maintainers = ["mia"]
hold_on_failure = "1h"
[[jobs.steps]]
name = "make"
type = "build"
command = "true"

[[jobs]]
name = "elsewhere"
images = ["other"]
maintainers = ["otto"]
[[jobs.steps]]
name = "make"
type = "build"
command = "true"

[[users]]
name = "ada"
role = "admin"
ssh_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ada"]

[[users]]
name = "mia"
role = "maintainer"
ssh_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl mia"]

[[users]]
name = "otto"
role = "maintainer"
ssh_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl otto"]

[[users]]
name = "vic"
role = "viewer"
"#;

    pub(crate) fn fleet() -> Fleet {
        crate::config::parse(FLEET, std::path::Path::new("/tmp/fleet.toml")).expect("test fleet parses")
    }

    #[derive(Debug, PartialEq, Eq)]
    enum D {
        Approve,
        Admin,
        Refuse,
    }

    #[test]
    fn policy_table() {
        let fleet = fleet();
        let h = |n: u64| Duration::from_secs(n * 3600);
        let m = |n: u64| Duration::from_secs(n * 60);
        let held = |job| Subject::HeldRun { run_id: "r1", job, held: true };
        let not_held = Subject::HeldRun { run_id: "r1", job: "build", held: false };
        let table: Vec<(&str, Subject<'_>, Duration, D)> = vec![
            // A maintainer: their job's image and held runs, up to auto_approve_max.
            ("mia", Subject::Image("tiny"), m(30), D::Approve),
            ("mia", Subject::Image("tiny"), h(2), D::Approve),
            ("mia", Subject::Image("tiny"), h(2) + Duration::from_secs(1), D::Admin),
            ("mia", held("build"), h(1), D::Approve),
            ("mia", held("build"), h(3), D::Admin),
            // …another job's image or run waits for an admin.
            ("mia", Subject::Image("other"), m(10), D::Admin),
            ("mia", held("elsewhere"), m(10), D::Admin),
            ("otto", Subject::Image("tiny"), m(10), D::Admin),
            // Nothing beyond max_grant, not even for admins.
            ("mia", Subject::Image("tiny"), h(9), D::Refuse),
            ("ada", Subject::Image("tiny"), h(8), D::Approve),
            ("ada", Subject::Image("other"), h(8) + Duration::from_secs(1), D::Refuse),
            ("ada", held("elsewhere"), h(5), D::Approve),
            // Viewers may not ask; runs must be held; zero is no grant.
            ("vic", Subject::Image("tiny"), m(5), D::Refuse),
            ("mia", not_held.clone(), m(5), D::Refuse),
            ("ada", not_held, m(5), D::Refuse),
            ("ada", Subject::Image("tiny"), Duration::ZERO, D::Refuse),
        ];
        for (user, subject, dur, want) in table {
            let u = fleet.user(user).unwrap();
            let got = match decide(&fleet, u, &subject, dur) {
                Decision::Approve => D::Approve,
                Decision::AskAdmin(_) => D::Admin,
                Decision::Refuse(_) => D::Refuse,
            };
            assert_eq!(got, want, "{user} asking {subject:?} for {dur:?}");
        }
    }

    #[test]
    fn reasons_name_the_limits() {
        let fleet = fleet();
        let mia = fleet.user("mia").unwrap();
        assert_eq!(
            decide(&fleet, mia, &Subject::Image("tiny"), Duration::from_secs(3 * 3600)),
            Decision::AskAdmin("3h is longer than a maintainer is approved for without an admin (2h)".into())
        );
        assert_eq!(
            decide(&fleet, mia, &Subject::Image("tiny"), Duration::from_secs(9 * 3600)),
            Decision::Refuse("9h is longer than the longest grant this fleet allows (8h)".into())
        );
        assert_eq!(
            decide(&fleet, mia, &Subject::Image("other"), Duration::from_secs(60)),
            Decision::AskAdmin("`mia` maintains no job of image `other`".into())
        );
    }

    #[test]
    fn extension_caps() {
        let fleet = fleet();
        let u = |n| fleet.user(n).unwrap();
        let tiny = Subject::Image("tiny");
        assert_eq!(extension_cap(&fleet, u("ada"), "mia", &tiny), Some(Duration::from_secs(8 * 3600)));
        assert_eq!(extension_cap(&fleet, u("mia"), "mia", &tiny), Some(Duration::from_secs(2 * 3600)));
        // Not their grant, or not their job's machine, or a viewer: no.
        assert_eq!(extension_cap(&fleet, u("otto"), "mia", &tiny), None);
        assert_eq!(extension_cap(&fleet, u("otto"), "otto", &tiny), None);
        assert_eq!(extension_cap(&fleet, u("vic"), "vic", &tiny), None);
    }
}
