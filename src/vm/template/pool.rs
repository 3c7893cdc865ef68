//! Warm-start templates on hosts with an `image_pool` (issue 18): a template there is only
//! volumes in that pool, written by the host's own libvirt, so it works on a host that is
//! another machine (`qemu+ssh://`), where the daemon cannot write a file.
//!
//! One template is four volumes named `paddock-<instance8>-tpl-<image>-<key16>` plus a role:
//! `.disk.qcow2` (the template's overlay over the image's base volume; once saved, only ever
//! a backing file of clones' overlays), `.seed.iso` (its cloud-init seed), `.memory.save`
//! (created empty, then written by `virDomainSaveFlags` on the host) and `.template.json`, the
//! manifest, written last: **a template without its manifest was never finished and its
//! volumes are removed by the next reconciliation pass** (when its domain is not being built
//! and they were last changed before the pass began). The manifest holds the key, the domain
//! name and port the template was saved with, and the domain XML libvirt saved (the save
//! file's header holds the last clone's XML after a restore).
//!
//! Per clone the save file's header — libvirt's 92-byte header, then the domain XML and
//! cookie in a zero-padded block — is read with `virStorageVolDownload` (offset 0, the
//! header's length), rewritten by [`super::rewrite_save_xml`] in a private scratch file, and
//! written back in place with `virStorageVolUpload`; the memory image behind it never moves.
//! The volume names carry the daemon's instance, so templates of another paddock using the
//! same pool are never touched.

use std::path::{Path, PathBuf};

use crate::libvirt::storage::{self, StorageError};
use crate::libvirt::warm_pool::{self, PoolVolume};

/// What follows a template's base name, per volume.
pub const DISK: &str = ".disk.qcow2";
pub const SEED: &str = ".seed.iso";
pub const SAVE: &str = ".memory.save";
pub const MANIFEST: &str = ".template.json";
const ROLES: [&str; 4] = [MANIFEST, SAVE, DISK, SEED];

/// libvirt's save header before the XML block (as `super::HEADER`).
const HEADER: u64 = 16 + 19 * 4;
/// The most a save header's XML block or a manifest may hold.
const MAX_BLOCK: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PoolTemplateError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Template(#[from] super::TemplateError),
    #[error("volume {volume} is not a libvirt save file")]
    NotASave { volume: String },
    #[error("the manifest {volume} cannot be read: {reason}")]
    Manifest { volume: String, reason: String },
}

/// A finished template in a host's pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolTemplate {
    /// `paddock-<instance8>-tpl-<image>-<key16>`: its volumes are this plus a role.
    pub base: String,
    pub image: String,
    pub key: String,
    /// The domain name and SSH port it was saved with.
    pub domain: String,
    pub port: u16,
    /// The domain XML libvirt saved.
    pub saved_xml: String,
    /// Paths of its disk and save volumes on the host.
    pub disk: String,
    pub save: String,
}

impl PoolTemplate {
    pub fn volume(&self, role: &str) -> String {
        format!("{}{role}", self.base)
    }
}

/// The start of every template volume name of `instance`.
pub fn prefix(instance: &str) -> String {
    format!("paddock-{}-tpl-", &instance[..instance.len().min(8)])
}

/// The base name of the template of `image` with `key`.
pub fn base_name(instance: &str, image: &str, key: &str) -> String {
    format!("{}{image}-{}", prefix(instance), &key[..key.len().min(16)])
}

/// The domain a template of `key` is built and saved as (the same name a local one has).
pub fn domain_name(instance: &str, key: &str) -> String {
    format!("paddock-{}-t{}", &instance[..instance.len().min(8)], &key[..key.len().min(8)])
}

/// `(base, role)` of a template volume name under `prefix`.
fn split(name: &str, prefix: &str) -> Option<(String, &'static str)> {
    let role = ROLES.into_iter().find(|r| name.ends_with(r))?;
    let base = &name[..name.len() - role.len()];
    let rest = base.strip_prefix(prefix)?;
    let (image, key) = rest.rsplit_once('-')?;
    (!image.is_empty() && key.len() == 16 && key.bytes().all(|b| b.is_ascii_hexdigit())).then(|| (base.to_string(), role))
}

/// The manifest, written as the last volume of a template.
pub fn manifest_json(t: &PoolTemplate) -> String {
    serde_json::json!({ "key": t.key, "image": t.image, "domain": t.domain, "port": t.port, "saved_xml": t.saved_xml }).to_string()
}

fn parse_manifest(base: &str, text: &[u8], disk: String, save: String) -> Result<PoolTemplate, PoolTemplateError> {
    let bad = |reason: String| PoolTemplateError::Manifest { volume: format!("{base}{MANIFEST}"), reason };
    let v: serde_json::Value = serde_json::from_slice(text).map_err(|e| bad(e.to_string()))?;
    let s = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| bad(format!("no {k}")));
    Ok(PoolTemplate {
        base: base.to_string(),
        image: s("image")?,
        key: s("key")?,
        domain: s("domain")?,
        port: v["port"].as_u64().and_then(|p| u16::try_from(p).ok()).ok_or_else(|| bad("no port".into()))?,
        saved_xml: s("saved_xml")?,
        disk,
        save,
    })
}

/// Every finished template of `instance` in `pool` on `uri` (blocking). This is what a
/// listing of a pool host's templates reads: the pool itself, not the daemon's state dir.
pub fn list(uri: &str, pool: &str, instance: &str) -> Result<Vec<PoolTemplate>, PoolTemplateError> {
    let vols = warm_pool::volumes(uri, pool, &prefix(instance))?;
    let mut out = Vec::new();
    for v in vols.iter().filter(|v| v.name.ends_with(MANIFEST)) {
        let Some((base, _)) = split(&v.name, &prefix(instance)) else { continue };
        if let Some(t) = finished(uri, pool, &base, &vols)? {
            out.push(t);
        }
    }
    Ok(out)
}

/// One template's volumes in a pool, as the templates listing shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct Surveyed {
    pub base: String,
    pub image: String,
    /// The first 16 hex digits of its key (from its volumes' names).
    pub key16: String,
    /// Its manifest: `None` while it is being built (or a crash cut its build short, which
    /// reconciliation finishes removing).
    pub template: Option<PoolTemplate>,
    /// When its manifest, the last volume of a build, was written.
    pub made_at: Option<std::time::SystemTime>,
    /// Bytes its volumes take on the host.
    pub bytes: u64,
    /// Volumes of the pool backed by its disk: the overlays of its clones.
    pub clones: usize,
    /// Their names (a clone's is `<vm>-overlay.qcow2`), so the VM manager can keep the count
    /// current between listings as clones come and go.
    pub clone_volumes: Vec<String>,
}

/// The most templates [`survey`] reads the manifests of in one pool (a host that grew more
/// volumes named like templates does not make a listing read without end).
pub const MAX_SURVEYED: usize = 256;

/// Every template of `instance` in `pool` on `uri`, finished or not, with the bytes its
/// volumes take and the clones its disk backs (blocking; one listing of the pool, plus one
/// read per manifest), the first [`MAX_SURVEYED`] by name.
pub fn survey(uri: &str, pool: &str, instance: &str) -> Result<Vec<Surveyed>, PoolTemplateError> {
    let all = warm_pool::volumes(uri, pool, "")?;
    let prefix = prefix(instance);
    let mut bases: Vec<String> = all.iter().filter_map(|v| split(&v.name, &prefix)).map(|(b, _)| b).collect();
    bases.sort();
    bases.dedup();
    bases.truncate(MAX_SURVEYED);
    let mut out = Vec::new();
    for base in bases {
        let mine: Vec<&PoolVolume> = all.iter().filter(|v| split(&v.name, &prefix).is_some_and(|(b, _)| b == base)).collect();
        let manifest = mine.iter().find(|v| v.name.ends_with(MANIFEST));
        let template = match manifest {
            Some(_) => finished(uri, pool, &base, &all)?,
            None => None,
        };
        let disk = mine.iter().find(|v| v.name.ends_with(DISK)).map(|v| v.path.as_str());
        let clone_volumes: Vec<String> =
            disk.map_or_else(Vec::new, |d| all.iter().filter(|v| v.backing.as_deref() == Some(d)).map(|v| v.name.clone()).collect());
        let Some((image, key16)) = base[prefix.len()..].rsplit_once('-') else { continue };
        out.push(Surveyed {
            image: image.to_string(),
            key16: key16.to_string(),
            template,
            made_at: manifest.and_then(|m| m.modified),
            bytes: mine.iter().map(|v| v.allocation).sum(),
            clones: clone_volumes.len(),
            clone_volumes,
            base,
        });
    }
    Ok(out)
}

/// The finished template `base`, if its manifest and every other volume are there
/// (blocking).
pub fn load(uri: &str, pool: &str, instance: &str, base: &str) -> Result<Option<PoolTemplate>, PoolTemplateError> {
    let vols = warm_pool::volumes(uri, pool, &prefix(instance))?;
    finished(uri, pool, base, &vols)
}

fn finished(uri: &str, pool: &str, base: &str, vols: &[PoolVolume]) -> Result<Option<PoolTemplate>, PoolTemplateError> {
    let path = |role: &str| vols.iter().find(|v| v.name == format!("{base}{role}")).map(|v| v.path.clone());
    let (Some(_), Some(disk), Some(save), Some(_)) = (path(MANIFEST), path(DISK), path(SAVE), path(SEED)) else { return Ok(None) };
    let text = warm_pool::read_range(uri, pool, &format!("{base}{MANIFEST}"), 0, MAX_BLOCK)?;
    parse_manifest(base, &text, disk, save).map(Some)
}

/// The save header of volume `save`: libvirt's 92 bytes plus the XML block they announce.
fn read_header(uri: &str, pool: &str, save: &str) -> Result<Vec<u8>, PoolTemplateError> {
    let head = warm_pool::read_range(uri, pool, save, 0, HEADER)?;
    if head.len() as u64 != HEADER || &head[..16] != super::MAGIC {
        return Err(PoolTemplateError::NotASave { volume: save.into() });
    }
    let data_len = u32::from_le_bytes(head[20..24].try_into().expect("4 bytes")) as u64;
    if data_len > MAX_BLOCK {
        return Err(PoolTemplateError::NotASave { volume: save.into() });
    }
    let all = warm_pool::read_range(uri, pool, save, 0, HEADER + data_len)?;
    if all.len() as u64 != HEADER + data_len {
        return Err(PoolTemplateError::NotASave { volume: save.into() });
    }
    Ok(all)
}

/// The domain XML in the header of save volume `save` (blocking; `scratch` is a private
/// file of the daemon, removed before returning).
pub fn read_saved_xml(uri: &str, pool: &str, save: &str, scratch: &Path) -> Result<String, PoolTemplateError> {
    let header = read_header(uri, pool, save)?;
    let file = |source| StorageError::File { path: scratch.display().to_string(), source };
    std::fs::write(scratch, &header).map_err(file)?;
    let xml = super::read_save_xml(scratch);
    let _ = std::fs::remove_file(scratch);
    Ok(xml?)
}

/// Writes `xml` into the header of save volume `save` in place, so the next restore of it
/// brings up that domain (blocking). Only the header crosses the connection, both ways.
pub fn rewrite_header(uri: &str, pool: &str, save: &str, xml: &str, scratch: &Path) -> Result<(), PoolTemplateError> {
    let header = read_header(uri, pool, save)?;
    let file = |source| StorageError::File { path: scratch.display().to_string(), source };
    std::fs::write(scratch, &header).map_err(file)?;
    let rewritten = super::rewrite_save_xml(scratch, xml).map_err(PoolTemplateError::from).and_then(|()| {
        let bytes = std::fs::read(scratch).map_err(file)?;
        // Never more than was read: the memory image behind the header is not touched.
        if bytes.len() != header.len() {
            return Err(PoolTemplateError::NotASave { volume: save.into() });
        }
        Ok(bytes)
    });
    let _ = std::fs::remove_file(scratch);
    warm_pool::write_at(uri, pool, save, 0, &rewritten?)?;
    Ok(())
}

/// Where scratch copies of save headers go: a folder of the state dir that, having no
/// manifest, `super::remove_unfinished` clears at start.
pub fn scratch(state_dir: &Path, name: &str) -> PathBuf {
    let dir = super::dir(state_dir).join(".pool-headers");
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("{name}.head"))
}

/// Removes every volume of template `base`, its manifest first (so a removal cut short
/// leaves an unfinished template, which reconciliation finishes removing). Blocking.
pub fn remove(uri: &str, pool: &str, base: &str) -> Result<(), StorageError> {
    for role in ROLES {
        storage::delete_volume(uri, pool, &format!("{base}{role}"))?;
    }
    Ok(())
}

/// Removes the other templates of `image` of `instance` in `pool` than `keep`, unless a
/// volume of the pool is still backed by one's disk (a clone that still runs, or is held).
/// Returns the base names removed. Blocking.
pub fn remove_superseded(uri: &str, pool: &str, instance: &str, image: &str, keep: &str) -> Result<Vec<String>, StorageError> {
    let all = warm_pool::volumes(uri, pool, "")?;
    let prefix = prefix(instance);
    let mut bases: Vec<(String, String)> = Vec::new();
    for v in &all {
        if let Some((base, role)) = split(&v.name, &prefix)
            && role == DISK
            && base != keep
            && base[prefix.len()..].rsplit_once('-').is_some_and(|(i, _)| i == image)
        {
            bases.push((base, v.path.clone()));
        }
    }
    let mut removed = Vec::new();
    for (base, disk) in bases {
        if all.iter().any(|v| v.backing.as_deref() == Some(disk.as_str())) {
            continue;
        }
        remove(uri, pool, &base)?;
        removed.push(base);
    }
    Ok(removed)
}

/// The volumes of unfinished templates of `instance` in `pool` (no manifest) whose domain
/// is not in `live` and that were last changed before `cutoff` (a pool that reports no
/// timestamps keeps them: they may belong to a build under way). Blocking.
pub fn unfinished(
    uri: &str,
    pool: &str,
    instance: &str,
    live: &std::collections::HashSet<String>,
    cutoff: std::time::SystemTime,
) -> Result<Vec<String>, StorageError> {
    let prefix = prefix(instance);
    let vols = warm_pool::volumes(uri, pool, &prefix)?;
    let done: std::collections::HashSet<String> =
        vols.iter().filter_map(|v| split(&v.name, &prefix)).filter(|(_, r)| *r == MANIFEST).map(|(b, _)| b).collect();
    Ok(vols
        .into_iter()
        .filter(|v| {
            let Some((base, _)) = split(&v.name, &prefix) else { return false };
            let key = &base[base.len() - 16..];
            !done.contains(&base) && !live.contains(&domain_name(instance, key)) && v.modified.is_some_and(|t| t <= cutoff)
        })
        .map(|v| v.name)
        .collect())
}

/// A reconciliation pass over one pool host: removes the volumes of unfinished templates
/// (see [`unfinished`]), within `limit` per call. Returns the volumes removed.
pub async fn reap_unfinished(
    uri: &str,
    pool: &str,
    instance: &str,
    live: &crate::vm::reconcile::LiveSet,
    limit: std::time::Duration,
) -> Result<Vec<String>, StorageError> {
    let (u, p, i, names, cutoff) =
        (uri.to_string(), pool.to_string(), instance.to_string(), live.names.clone(), std::time::SystemTime::from(live.taken_at));
    let what = format!("listing the templates in pool {pool} on {uri}");
    let stale = storage::with_deadline(what, limit, move || unfinished(&u, &p, &i, &names, cutoff)).await?;
    let mut removed = Vec::new();
    for v in stale {
        let (u, p, name) = (uri.to_string(), pool.to_string(), v.clone());
        storage::with_deadline(format!("deleting volume {v}"), limit, move || storage::delete_volume(&u, &p, &name)).await?;
        removed.push(v);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_volume_names_are_split_by_instance_image_key_and_role() {
        let key = "0123456789abcdef0123";
        let base = base_name("feedc0de99", "debian-12", key);
        assert_eq!(base, "paddock-feedc0de-tpl-debian-12-0123456789abcdef");
        let p = prefix("feedc0de99");
        for role in ROLES {
            assert_eq!(split(&format!("{base}{role}"), &p), Some((base.clone(), role)));
        }
        // Another instance's, a VM's overlay or seed, and an image volume are not templates.
        assert_eq!(split(&format!("{base}{DISK}"), &prefix("0000000000")), None);
        assert_eq!(split("paddock-feedc0de-1a2b3c4d-overlay.qcow2", &p), None);
        assert_eq!(split("paddock-feedc0de-1a2b3c4d-seed.iso", &p), None);
        assert_eq!(split("paddock-debian-12-disk-0123456789abcdef", &p), None);
        assert_eq!(domain_name("feedc0de99", key), "paddock-feedc0de-t01234567");
        // Nothing a VM's or an image's volume sweep matches: per-VM volumes end in
        // `-overlay.qcow2` / `-seed.iso`, image versions in 16 hex digits.
        for role in ROLES {
            let n = format!("{base}{role}");
            assert!(!n.ends_with(crate::libvirt::storage::OVERLAY_SUFFIX) && !n.ends_with(crate::vm::seed::SEED_SUFFIX), "{n}");
        }
    }

    #[test]
    fn a_manifest_round_trips_and_a_broken_one_is_named() {
        let t = PoolTemplate {
            base: "paddock-feedc0de-tpl-deb-0123456789abcdef".into(),
            image: "deb".into(),
            key: "0123456789abcdef0123".into(),
            domain: "paddock-feedc0de-t01234567".into(),
            port: 24400,
            saved_xml: "<domain><name>x</name></domain>".into(),
            disk: "/p/d".into(),
            save: "/p/s".into(),
        };
        let back = parse_manifest(&t.base, manifest_json(&t).as_bytes(), "/p/d".into(), "/p/s".into()).unwrap();
        assert_eq!(back, t);
        let err = parse_manifest(&t.base, b"{\"key\":1}", String::new(), String::new()).unwrap_err();
        assert!(err.to_string().contains(".template.json"), "{err}");
    }
}
