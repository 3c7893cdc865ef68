//! What the API and CLI show of warm-start templates: every template folder under the state
//! directory and every template in the pool of a host with an `image_pool` (as the VM
//! manager last listed it), whose host and
//! image it is, whether it is still being built, ready, or stale (its key is no longer the one
//! the image would get now), when it was made, what it takes on disk and how many clones it
//! backs.
//!
//! Everything here is read where `template.rs` and `template/pool.rs` write it — a pool's
//! templates by the VM manager, which lists them on its reconciliation passes and as templates
//! and clones come and go (`vm/manager/templates.rs`; a request reads its last listing, never
//! the host) — so the listing needs almost no word from the VM manager otherwise: a folder
//! without `template.json` (a pool template without its manifest volume) is a build under way (a crash's leftovers are removed at start
//! and by reconciliation), and a clone is an overlay in `overlays/` (a volume of the pool)
//! whose backing file is the template's disk. A diskless template (a kernel image's) backs no
//! overlay: its clones are the live VMs the VM manager says were restored from its key
//! ([`Restored`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{KeyInputs, Template, Templates, dir, qcow2_backing};
use crate::config::{Fleet, Start};

/// What every warm seed hands over besides the image (the daemon's login key and the fleet
/// CA), so the current key of an image can be computed as a launch would.
#[derive(Debug, Clone, Default)]
pub struct SeedInputs {
    pub authorized_keys: Vec<String>,
    /// The fleet CA's public line; used for images that trust it, as the executor does.
    pub ca_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListedState {
    /// Its folder exists, its manifest is not written yet.
    Building,
    Ready,
    /// Its key is not the image's current one (the image or what its seed hands over
    /// changed, or the image is gone or no longer warm); removed once no clone uses it.
    Stale,
}

impl ListedState {
    pub fn as_str(self) -> &'static str {
        match self {
            ListedState::Building => "building",
            ListedState::Ready => "ready",
            ListedState::Stale => "stale",
        }
    }
}

/// One template folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub dir: PathBuf,
    /// `None` when the folder's name matches no host of the fleet.
    pub host: Option<String>,
    pub image: Option<String>,
    /// The full key of a finished template; the 16-character prefix its folder is named by
    /// while it is being built.
    pub key: String,
    pub state: ListedState,
    /// When its manifest was written (it is written last).
    pub made_at: Option<DateTime<Utc>>,
    /// Bytes its files take on disk (allocated blocks: the frozen disk is sparse).
    pub disk_bytes: u64,
    /// Overlays in `overlays/` (volumes of its pool) backed by its disk; for a diskless
    /// template, the live VMs restored from it.
    pub clones: usize,
    /// The host's pool when it is volumes there (then `dir` is its volumes' base name).
    pub pool: Option<String>,
}

/// A live VM restored from a template: its host and the template's key (`VmSnapshot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub host: String,
    pub key: String,
}

/// The current key of each warm image, computed once per listing (`None` inside: the key
/// cannot be computed, an image file is gone, so no template has it).
#[derive(Default)]
struct CurrentKeys(std::collections::HashMap<String, Option<String>>);

impl CurrentKeys {
    /// A finished template's state: stale when its image is gone or no longer warm, or
    /// (with `seeds` to tell by) its key is not the image's current one.
    fn state(&mut self, key: &str, image: Option<&str>, fleet: &Fleet, seeds: Option<&SeedInputs>, templates: &Templates) -> ListedState {
        let Some(img) = image.and_then(|i| fleet.image(i)).filter(|i| i.start == Start::Warm) else { return ListedState::Stale };
        let Some(s) = seeds else { return ListedState::Ready };
        let now = self
            .0
            .entry(img.name.clone())
            .or_insert_with(|| {
                let ca = if img.trusts_fleet_ca { s.ca_key.as_deref() } else { None };
                templates.key(&KeyInputs { image: img, authorized_keys: &s.authorized_keys, ca_key: ca }).ok()
            })
            .clone();
        if now.as_deref() == Some(key) { ListedState::Ready } else { ListedState::Stale }
    }
}

/// Every template folder under `state_dir`, sorted by folder. `seeds` gives the current key
/// of each warm image (hashing a changed image file once, through `templates`' cache):
/// blocking, call it off the async runtime. Without `seeds` no template is called stale for
/// its key, only for an image that is gone or no longer warm. `restored` are the live clones
/// the VM manager knows of, which count for templates without a disk.
pub fn list_all(state_dir: &Path, fleet: &Fleet, seeds: Option<&SeedInputs>, templates: &Templates, restored: &[Restored]) -> Vec<Listed> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else { return Vec::new() };
    let backings: Vec<PathBuf> = std::fs::read_dir(crate::vm::overlay::dir(state_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| qcow2_backing(&e.path()))
        .collect();
    let mut current = CurrentKeys::default();
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if !path.is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().to_string();
        // `.pool-headers/` holds scratch copies of pool templates' save headers, no template.
        if name.starts_with('.') {
            continue;
        }
        let (host, image, prefix) = split_name(&name, fleet);
        let manifest = Template::load(&path);
        let state = match &manifest {
            None => ListedState::Building,
            Some(t) => current.state(&t.key, image.as_deref(), fleet, seeds, templates),
        };
        let made_at =
            manifest.as_ref().and_then(|_| std::fs::metadata(path.join("template.json")).ok()?.modified().ok()).map(DateTime::<Utc>::from);
        let disk = path.join("disk.qcow2");
        // A finished template without a disk (a kernel image's) backs no overlay: its clones
        // are the live VMs restored from its key on its host.
        let clones = match &manifest {
            Some(t) if !disk.exists() => restored.iter().filter(|r| Some(&r.host) == host.as_ref() && r.key == t.key).count(),
            _ => backings.iter().filter(|b| **b == disk).count(),
        };
        out.push(Listed {
            host,
            image,
            key: manifest.map(|t| t.key).unwrap_or(prefix),
            state,
            made_at,
            disk_bytes: disk_usage(&path),
            clones,
            pool: None,
            dir: path,
        });
    }
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    out
}

/// The templates of the pool of `host` (one with an `image_pool`) as `surveyed` found them
/// (`template::pool::survey`, which the VM manager runs: a request reads its last listing and
/// never the host), sorted by name. States as in [`list_all`], computed now (a changed image
/// file is hashed once, through `templates`' cache: blocking, call it off the async runtime); a
/// clone is a volume of the pool backed by the template's disk.
pub fn from_survey(
    host: &crate::config::Host,
    surveyed: Vec<super::pool::Surveyed>,
    fleet: &Fleet,
    seeds: Option<&SeedInputs>,
    templates: &Templates,
) -> Vec<Listed> {
    let Some(pool) = &host.image_pool else { return Vec::new() };
    let mut current = CurrentKeys::default();
    surveyed
        .into_iter()
        .map(|s| Listed {
            state: match &s.template {
                None => ListedState::Building,
                Some(t) => current.state(&t.key, Some(s.image.as_str()), fleet, seeds, templates),
            },
            host: Some(host.name.clone()),
            key: s.template.map(|t| t.key).unwrap_or(s.key16),
            image: Some(s.image),
            made_at: s.made_at.map(DateTime::<Utc>::from),
            disk_bytes: s.bytes,
            clones: s.clones,
            pool: Some(pool.clone()),
            dir: PathBuf::from(s.base),
        })
        .collect()
}

/// `<host>-<image>-<key16>` split by the fleet's own names (either may hold a `-`); a folder
/// of a host or image no longer in the fleet keeps only its key.
fn split_name(name: &str, fleet: &Fleet) -> (Option<String>, Option<String>, String) {
    let Some((rest, key)) = name.rsplit_once('-') else { return (None, None, name.to_string()) };
    for h in &fleet.hosts {
        if let Some(image) = rest.strip_prefix(&h.name).and_then(|r| r.strip_prefix('-')) {
            return (Some(h.name.clone()), Some(image.to_string()), key.to_string());
        }
    }
    (None, None, key.to_string())
}

/// The bytes a folder's files take on disk.
fn disk_usage(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// "312 MiB", "1.4 GiB", "96 KiB": a template's size for a table cell.
pub fn human_size(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB * KIB {
        format!("{:.1} GiB", b / (KIB * KIB * KIB))
    } else if b >= KIB * KIB {
        format!("{:.0} MiB", b / (KIB * KIB))
    } else {
        format!("{:.0} KiB", b / KIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Arch, Os};
    use crate::libvirt::domain_xml::tests::{disk_boot, image};

    #[test]
    fn a_folder_name_is_split_by_the_fleets_own_names() {
        let src = include_str!("../../../fleet.toml").replacen("name = \"local\"", "name = \"rack-2\"", 1);
        let fleet = crate::config::parse(&src, Path::new("fleet.toml")).unwrap();
        let key = "0123456789abcdef";
        assert_eq!(split_name(&format!("rack-2-debian-12-{key}"), &fleet), (Some("rack-2".into()), Some("debian-12".into()), key.into()));
        // A host no longer in the fleet: only the key is known.
        assert_eq!(split_name(&format!("gone-debian-12-{key}"), &fleet), (None, None, key.into()));
        assert_eq!(human_size(5 << 20), "5 MiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
    }

    #[test]
    fn a_build_site_lasts_as_long_as_its_build() {
        let t = Templates::default();
        let img = image("deb", Os::Linux, Arch::X86_64, disk_boot());
        t.building_at("paddock-x-t1", "local", &img);
        assert_eq!(t.build_sites(), vec![("local".to_string(), img.clone())]);
        assert!(t.building_domains().contains("paddock-x-t1"));
        t.building("paddock-x-t1", false);
        assert!(t.build_sites().is_empty() && t.building_domains().is_empty());
    }
}
