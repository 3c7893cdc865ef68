//! Choosing a host for a VM: arch match and room (VM count, memory, vCPUs);
//! down, cooling, drained, quarantined and closed (outside the donor's
//! windows) hosts are skipped; hosts whose donor disallows the job or image
//! never count; hosts that take images from a storage pool wait until the
//! image's current version is there. Pure functions over a view of the hosts.

use crate::config::{Capacity, Image};

/// Resources a host's VMs hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub vms: u32,
    pub memory_mib: u64,
    pub vcpus: u32,
}

impl Usage {
    pub fn add(&mut self, image: &Image) {
        self.vms += 1;
        self.memory_mib += image.memory_mib;
        self.vcpus += image.vcpus;
    }

    /// Takes back what `add(image)` added.
    pub fn remove(&mut self, image: &Image) {
        self.vms = self.vms.saturating_sub(1);
        self.memory_mib = self.memory_mib.saturating_sub(image.memory_mib);
        self.vcpus = self.vcpus.saturating_sub(image.vcpus);
    }

    /// Whether `image` fits next to this usage within `cap`.
    pub fn fits(&self, image: &Image, cap: &Capacity) -> bool {
        self.vms < cap.max_vms && self.memory_mib + image.memory_mib <= cap.memory_mib && self.vcpus + image.vcpus <= cap.vcpus
    }
}

/// Adds to `used` the room of each template being built (`builds`: host, image), unless a VM
/// of that image on that host waits for it (`waiting`: host, image name of VMs placed and not
/// yet restored). Such a VM holds its slot already, and the template's domain is gone (saved)
/// before the VM's clone is restored, so they never run at the same time: counting both would
/// count one domain twice (a pool refill waiting on the template lock, or the launch that
/// builds it). With no such VM (the launch that started the build was cancelled, its VM torn
/// down) the template's domain holds the room on its own.
pub fn add_template_builds(used: &mut [Usage], builds: &[(usize, &Image)], waiting: &[(usize, &str)]) {
    for (host, image) in builds {
        let covered = waiting.iter().any(|(h, i)| h == host && *i == image.name);
        if !covered && let Some(u) = used.get_mut(*host) {
            u.add(image);
        }
    }
}

/// What placement knows about one host.
#[derive(Debug, Clone)]
pub struct HostView {
    pub capacity: Capacity,
    /// Connected and not cooling down after failed launches.
    pub available: bool,
    /// `Some(false)` when the host is known to lack an emulator for the image's
    /// arch; `None` when unknown (never connected yet).
    pub runs_arch: Option<bool>,
    pub used: Usage,
    /// A previous attempt of this request failed there.
    pub tried: bool,
    /// The donor allows this request's job and image there (a lasting no).
    pub allowed: bool,
    /// The image's current version is on the host (always true for hosts that
    /// read image files by path). False means wait: an upload is under way.
    pub image_present: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Host(usize),
    /// Some host could take it later (when room frees up or it comes back).
    Wait,
    /// No configured host could ever run it.
    Never,
}

/// The host for `image`: among available hosts that run its arch and have room,
/// untried ones first, then the most free memory (spreading load); ties go to
/// the host listed first in the config.
pub fn place(image: &Image, hosts: &[HostView]) -> Placement {
    let could_ever = hosts.iter().any(|h| h.allowed && h.runs_arch != Some(false) && Usage::default().fits(image, &h.capacity));
    if !could_ever {
        return Placement::Never;
    }
    hosts
        .iter()
        .enumerate()
        .filter(|(_, h)| h.available && h.allowed && h.image_present && h.runs_arch == Some(true) && h.used.fits(image, &h.capacity))
        .min_by_key(|(i, h)| (h.tried, std::cmp::Reverse(h.capacity.memory_mib - h.used.memory_mib), *i))
        .map_or(Placement::Wait, |(i, _)| Placement::Host(i))
}

/// Which constraint no host meets, for a request placement answered `Never`
/// for: said to the run instead of letting it wait for a host that can never take it.
pub fn never_reason(image: &Image, hosts: &[HostView]) -> String {
    if hosts.is_empty() {
        return "no hosts are configured".into();
    }
    let allowed: Vec<&HostView> = hosts.iter().filter(|h| h.allowed).collect();
    if allowed.is_empty() {
        return "no host's donor allows this job and image".into();
    }
    let arch: Vec<&&HostView> = allowed.iter().filter(|h| h.runs_arch != Some(false)).collect();
    if arch.is_empty() {
        return format!("no host runs arch {}", image.arch);
    }
    let vms = arch.iter().any(|h| h.capacity.max_vms > 0);
    let memory = arch.iter().map(|h| h.capacity.memory_mib).max().unwrap_or(0);
    let vcpus = arch.iter().map(|h| h.capacity.vcpus).max().unwrap_or(0);
    let mut short = Vec::new();
    if !vms {
        short.push("every host that runs its arch has max_vms = 0".to_string());
    }
    if image.memory_mib > memory {
        short.push(format!("it needs {} MiB of memory, the most any host of its arch offers is {memory} MiB", image.memory_mib));
    }
    if image.vcpus > vcpus {
        short.push(format!("it needs {} vCPUs, the most any host of its arch offers is {vcpus}", image.vcpus));
    }
    if short.is_empty() {
        // Each constraint is met by some host, but not all by one.
        short.push("no single host of its arch has both its memory and its vCPUs".into());
    }
    short.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Arch, Os};

    fn img(mem: u64, cpus: u32) -> Image {
        let mut i = crate::libvirt::domain_xml::tests::image("t", Os::Linux, Arch::X86_64, crate::libvirt::domain_xml::tests::disk_boot());
        i.memory_mib = mem;
        i.vcpus = cpus;
        i
    }

    fn view(max_vms: u32, mem: u64, cpus: u32) -> HostView {
        HostView {
            capacity: Capacity { max_vms, memory_mib: mem, vcpus: cpus },
            available: true,
            runs_arch: Some(true),
            used: Usage::default(),
            tried: false,
            allowed: true,
            image_present: true,
        }
    }

    #[test]
    fn picks_the_host_with_most_free_memory_that_fits() {
        let hosts = [view(2, 1024, 2), view(4, 4096, 4), view(8, 8192, 1)];
        // The biggest host has only one vCPU; a 2-vCPU guest goes to the 4 GiB one.
        assert_eq!(place(&img(512, 2), &hosts), Placement::Host(1));
        assert_eq!(place(&img(512, 1), &hosts), Placement::Host(2));
    }

    #[test]
    fn full_hosts_mean_wait_and_impossible_images_mean_never() {
        let mut h = view(1, 1024, 1);
        h.used.add(&img(512, 1));
        assert_eq!(place(&img(512, 1), &[h.clone()]), Placement::Wait);
        assert_eq!(place(&img(2048, 1), &[h.clone()]), Placement::Never);
        let mut other_arch = view(4, 4096, 4);
        other_arch.runs_arch = Some(false);
        assert_eq!(place(&img(512, 1), &[other_arch.clone()]), Placement::Never);
        // Unknown arch support (host never connected): wait for it.
        other_arch.runs_arch = None;
        assert_eq!(place(&img(512, 1), &[other_arch]), Placement::Wait);
    }

    #[test]
    fn unavailable_and_tried_hosts_are_avoided() {
        let mut down = view(4, 8192, 4);
        down.available = false;
        let mut tried = view(4, 4096, 4);
        tried.tried = true;
        let small = view(4, 1024, 4);
        assert_eq!(place(&img(512, 1), &[down.clone(), tried.clone(), small]), Placement::Host(2));
        assert_eq!(place(&img(512, 1), &[down.clone(), tried]), Placement::Host(1));
        assert_eq!(place(&img(512, 1), &[down]), Placement::Wait);
    }

    #[test]
    fn hosts_whose_donor_disallows_the_job_or_image_are_never_used() {
        let mut no = view(4, 8192, 4);
        no.allowed = false;
        let yes = view(4, 1024, 4);
        assert_eq!(place(&img(512, 1), &[no.clone(), yes]), Placement::Host(1));
        assert_eq!(place(&img(512, 1), &[no]), Placement::Never);
    }

    #[test]
    fn hosts_without_the_current_image_version_mean_wait() {
        let mut uploading = view(4, 8192, 4);
        uploading.image_present = false;
        let small = view(4, 1024, 4);
        assert_eq!(place(&img(512, 1), &[uploading.clone(), small]), Placement::Host(1));
        assert_eq!(place(&img(512, 1), &[uploading.clone()]), Placement::Wait);
        uploading.image_present = true;
        assert_eq!(place(&img(512, 1), &[uploading]), Placement::Host(0));
    }

    #[test]
    fn a_template_being_built_holds_room_once() {
        let warm = img(1024, 1);
        let mut other = img(512, 1);
        other.name = "other".into();
        let cap = view(2, 4096, 4);
        // The launch that builds it and a pool refill waiting on its lock: two slots, for the
        // two clones to come; the template's domain runs in the builder's slot meanwhile.
        let mut used = vec![Usage::default()];
        used[0].add(&warm);
        used[0].add(&warm);
        add_template_builds(&mut used, &[(0, &warm)], &[(0, "t"), (0, "t")]);
        assert_eq!(used[0], Usage { vms: 2, memory_mib: 2048, vcpus: 2 });
        let mut full = cap.clone();
        full.used = used[0];
        assert_eq!(place(&other, &[full]), Placement::Wait);
        // The builder's launch was cancelled, the refill still waits: still one slot each.
        let mut used = vec![Usage::default()];
        used[0].add(&warm);
        add_template_builds(&mut used, &[(0, &warm)], &[(0, "t")]);
        assert_eq!(used[0].vms, 1);
        // Nobody waits for it any more: the template's domain holds its own room, so a host
        // of one slot takes nothing else until the build ends.
        let mut used = vec![Usage::default()];
        add_template_builds(&mut used, &[(0, &warm)], &[]);
        assert_eq!(used[0], Usage { vms: 1, memory_mib: 1024, vcpus: 1 });
        let mut one = view(1, 4096, 4);
        one.used = used[0];
        assert_eq!(place(&other, &[one]), Placement::Wait);
        // A VM of another image, or of this image on another host, does not cover it.
        let mut used = vec![Usage::default(), Usage::default()];
        add_template_builds(&mut used, &[(0, &warm)], &[(0, "other"), (1, "t")]);
        assert_eq!((used[0].vms, used[1].vms), (1, 0));
    }

    #[test]
    fn never_says_which_constraint_no_host_meets() {
        let host = |mem, cpus, arch: Option<bool>, allowed| HostView {
            capacity: Capacity { max_vms: 2, memory_mib: mem, vcpus: cpus },
            available: true,
            runs_arch: arch,
            used: Usage::default(),
            tried: false,
            allowed,
            image_present: true,
        };
        let big = img(8192, 2);
        let hosts = [host(4096, 4, Some(true), true), host(2048, 8, None, true)];
        assert_eq!(place(&big, &hosts), Placement::Never);
        assert_eq!(never_reason(&big, &hosts), "it needs 8192 MiB of memory, the most any host of its arch offers is 4096 MiB");
        assert_eq!(never_reason(&img(512, 16), &hosts), "it needs 16 vCPUs, the most any host of its arch offers is 8");
        assert_eq!(never_reason(&img(4096, 8), &hosts), "no single host of its arch has both its memory and its vCPUs");
        assert_eq!(never_reason(&img(512, 1), &[host(4096, 4, Some(false), true)]), "no host runs arch x86_64");
        assert_eq!(never_reason(&img(512, 1), &[host(4096, 4, Some(true), false)]), "no host's donor allows this job and image");
    }
}
