//! Warm-start templates (issue 18): an image booted once per host, its memory saved and its
//! disk frozen as a read-only layer, from which each run's clone is restored.
//!
//! A template lives in `state_dir/templates/<host>-<image>-<key16>/`: `disk.qcow2` (the
//! frozen overlay over the image's base disk), `seed.iso` (the template's own cloud-init
//! seed, read-only), `memory.save` (libvirt's save file), `console.log`, and `template.json`,
//! written last: **a folder without `template.json` is a template that was never finished and
//! is removed at start** (`tests/e2e/warm.rs`). A kernel + initrd image's template (the
//! warm-capable bundled guest) has no disk and no seed: only the saved memory, its XML, the
//! console and the manifest, and its clones no overlay. The key is a SHA-256 over the image's
//! settings, its files' contents and what the seed hands over (the daemon's key, the CA), so a
//! change to any of them makes a new template.
//!
//! libvirt restores a save file only under the name, UUID and generation ID it was saved
//! with (`virDomainRestoreFlags` with another XML is refused: "Target domain name … does not
//! match source"; the same for UUID and genid, tried here). So each clone's XML is written
//! into the save file's header before its restore (`rewrite_save_xml`), one restore at a time
//! per template (`Templates::restore_lock`): the header holds the domain XML and libvirt's
//! cookie in a block padded to a fixed length, which a clone's XML of about the same size
//! fits. Nothing else in the file changes.
//!
//! Implementation note: the registry is shared by the owner (which asks it for the domains of
//! templates being built, so reconciliation leaves them alone) and launch attempts (which
//! build and restore); each template has its own async lock, so a build or a restore of one
//! image never waits for another's.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::checksums::Checksums;
use crate::config::{Boot, Image};

pub mod list;
pub mod pool;

const MAGIC: &[u8; 16] = b"LibvirtQemudSave";
/// libvirt's save header: the magic and 19 little-endian u32 words (version, data length,
/// was-running, format, cookie offset, unused).
const HEADER: usize = 16 + 19 * 4;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("reading {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("writing {}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{} is not a libvirt save file", path.display())]
    NotASave { path: PathBuf },
    #[error("the clone's domain XML ({len} bytes) does not fit the {room}-byte header of {}", path.display())]
    TooLarge { path: PathBuf, len: usize, room: usize },
    #[error("the saved domain XML has no {what}")]
    Xml { what: &'static str },
    #[error("the saved domain XML names the template's disk, and the clone has no overlay on it")]
    NoOverlay,
}

/// The files of one template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub dir: PathBuf,
    pub key: String,
    /// The domain name it was saved under.
    pub domain: String,
    /// The SSH port its saved XML forwards.
    pub port: u16,
}

impl Template {
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    pub fn save_file(&self) -> PathBuf {
        self.dir.join("memory.save")
    }
    pub fn seed(&self) -> PathBuf {
        self.dir.join("seed.iso")
    }
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The domain XML libvirt saved, kept aside: the save file's header holds the last
    /// clone's XML after a restore.
    pub fn saved_xml(&self) -> PathBuf {
        self.dir.join("saved.xml")
    }
    fn manifest(dir: &Path) -> PathBuf {
        dir.join("template.json")
    }

    /// Marks the template finished: its manifest is written last.
    pub fn commit(&self) -> Result<(), TemplateError> {
        let path = Self::manifest(&self.dir);
        let text = serde_json::json!({ "key": self.key, "domain": self.domain, "port": self.port }).to_string();
        let tmp = self.dir.join("template.json.new");
        std::fs::write(&tmp, text).map_err(|source| TemplateError::Write { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, &path).map_err(|source| TemplateError::Write { path, source })
    }

    /// A finished template in `dir`, if its manifest is there.
    pub fn load(dir: &Path) -> Option<Template> {
        let text = std::fs::read_to_string(Self::manifest(dir)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(Template {
            dir: dir.to_path_buf(),
            key: v["key"].as_str()?.to_string(),
            domain: v["domain"].as_str()?.to_string(),
            port: u16::try_from(v["port"].as_u64()?).ok()?,
        })
    }
}

/// The folder of all templates.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("templates")
}

/// The folder of the template of `image` on `host` with `key`.
pub fn dir_for(state_dir: &Path, host: &str, image: &str, key: &str) -> PathBuf {
    dir(state_dir).join(format!("{host}-{image}-{}", &key[..key.len().min(16)]))
}

/// What a template is made from besides the image: what its seed hands over.
pub struct KeyInputs<'a> {
    pub image: &'a Image,
    pub authorized_keys: &'a [String],
    pub ca_key: Option<&'a str>,
}

/// Per file (path, size, mtime): its SHA-256, so an unchanged file is hashed once; a miss asks
/// the state dir's [`Checksums`] (which a previous daemon start may have filled) before reading.
#[derive(Default)]
struct FileHashes {
    seen: HashMap<(PathBuf, u64, std::time::SystemTime), String>,
    known: Checksums,
}

impl FileHashes {
    fn of(&mut self, path: &Path) -> Result<String, TemplateError> {
        let read = |source| TemplateError::Read { path: path.to_path_buf(), source };
        let meta = std::fs::metadata(path).map_err(read)?;
        let id = (path.to_path_buf(), meta.len(), meta.modified().map_err(read)?);
        if let Some(h) = self.seen.get(&id) {
            return Ok(h.clone());
        }
        let h = self.known.file(path).map_err(read)?.sha256;
        self.seen.insert(id, h.clone());
        Ok(h)
    }
}

/// The template registry: which templates exist (on disk) and which are being built.
#[derive(Default)]
pub struct Templates {
    hashes: Mutex<FileHashes>,
    /// Per template folder: the lock a build or a restore holds.
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    /// Domains of templates being built (reconciliation leaves them alone).
    building: Mutex<HashSet<String>>,
    /// Where each template being built runs (host name, image): its domain holds room there.
    sites: Mutex<HashMap<String, (String, Image)>>,
}

impl Templates {
    /// A registry whose file hashes are remembered in `known` across daemon starts.
    pub fn with_checksums(known: Checksums) -> Templates {
        Templates { hashes: Mutex::new(FileHashes { seen: HashMap::new(), known }), ..Templates::default() }
    }

    /// The key of the template of `inputs`: settings, file contents, seed inputs. Blocking
    /// (hashes a changed file once).
    pub fn key(&self, inputs: &KeyInputs<'_>) -> Result<String, TemplateError> {
        let mut h = Sha256::new();
        // The settings as the validated image holds them; any change is a new template.
        h.update(format!("{:?}", inputs.image).as_bytes());
        for k in inputs.authorized_keys {
            h.update(b"\0key\0");
            h.update(k.as_bytes());
        }
        h.update(b"\0ca\0");
        h.update(inputs.ca_key.unwrap_or("").as_bytes());
        let files: Vec<&Path> = match &inputs.image.boot {
            Boot::Disk { base } => vec![base],
            Boot::Kernel { kernel, initrd, .. } => vec![kernel, initrd],
        };
        let mut hashes = self.hashes.lock().expect("file hashes lock");
        for f in files {
            h.update(hashes.of(f)?.as_bytes());
        }
        Ok(hex::encode(h.finalize()))
    }

    /// The lock of the template in `dir`: held while it is built and during each restore.
    pub fn lock(&self, dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().expect("template locks").entry(dir.to_path_buf()).or_default().clone()
    }

    pub fn building(&self, domain: &str, on: bool) {
        let mut b = self.building.lock().expect("building templates");
        if on {
            b.insert(domain.to_string());
        } else {
            b.remove(domain);
        }
    }

    /// Domains of templates being built now.
    pub fn building_domains(&self) -> HashSet<String> {
        self.building.lock().expect("building templates").clone()
    }

    /// As `building(domain, true)`, and the build's domain holds room for `image` on `host`
    /// until `building(domain, false)` (see `placement::add_template_builds`).
    pub fn building_at(&self, domain: &str, host: &str, image: &Image) {
        self.sites.lock().expect("template sites").insert(domain.to_string(), (host.to_string(), image.clone()));
        self.building(domain, true);
    }

    /// The host and image of every template being built now.
    pub fn build_sites(&self) -> Vec<(String, Image)> {
        let building = self.building.lock().expect("building templates").clone();
        let mut sites = self.sites.lock().expect("template sites");
        sites.retain(|d, _| building.contains(d));
        sites.values().cloned().collect()
    }
}

/// Every finished template under `state_dir`.
pub fn list(state_dir: &Path) -> Vec<Template> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else { return Vec::new() };
    let mut out: Vec<Template> = entries.flatten().filter_map(|e| Template::load(&e.path())).collect();
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    out
}

/// At start: removes every template folder that was never finished (no manifest), i.e. a
/// build a crash cut short. Returns what it removed.
pub fn remove_unfinished(state_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else { return Vec::new() };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && Template::load(&p).is_none() && std::fs::remove_dir_all(&p).is_ok() {
            removed.push(p);
        }
    }
    removed
}

/// Removes the other templates of `host`/`image` than `keep`, unless an overlay in
/// `overlays` is still backed by one (a clone that still runs, or is held). Returns what it
/// removed.
pub fn remove_superseded(state_dir: &Path, host: &str, image: &str, keep: &Path, overlays: &Path) -> Vec<PathBuf> {
    let prefix = format!("{host}-{image}-");
    let in_use: HashSet<PathBuf> =
        std::fs::read_dir(overlays).into_iter().flatten().flatten().filter_map(|e| qcow2_backing(&e.path())).collect();
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else { return Vec::new() };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if p == keep || !name.starts_with(&prefix) || name[prefix.len()..].contains('-') {
            continue;
        }
        let t = Template { dir: p.clone(), key: String::new(), domain: String::new(), port: 0 };
        if in_use.contains(&t.disk()) {
            continue;
        }
        if std::fs::remove_dir_all(&p).is_ok() {
            removed.push(p);
        }
    }
    removed
}

/// The backing file a qcow2 image names in its header, if any.
pub fn qcow2_backing(path: &Path) -> Option<PathBuf> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = [0u8; 20];
    f.read_exact(&mut h).ok()?;
    if &h[..4] != b"QFI\xfb" {
        return None;
    }
    let offset = u64::from_be_bytes(h[8..16].try_into().ok()?);
    let size = u32::from_be_bytes(h[16..20].try_into().ok()?) as usize;
    if offset == 0 || size == 0 || size > 4096 {
        return None;
    }
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut name = vec![0u8; size];
    f.read_exact(&mut name).ok()?;
    Some(PathBuf::from(String::from_utf8(name).ok()?))
}

/// The domain XML held in a save file's header.
pub fn read_save_xml(path: &Path) -> Result<String, TemplateError> {
    let (_, data, cookie_offset) = read_header(path)?;
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let end = if cookie_offset > 0 { end.min(cookie_offset) } else { end };
    String::from_utf8(data[..end].to_vec()).map_err(|_| TemplateError::NotASave { path: path.into() })
}

fn read_header(path: &Path) -> Result<([u32; 19], Vec<u8>, usize), TemplateError> {
    let read = |source| TemplateError::Read { path: path.into(), source };
    let mut f = std::fs::File::open(path).map_err(read)?;
    let mut h = [0u8; HEADER];
    f.read_exact(&mut h).map_err(read)?;
    if &h[..16] != MAGIC {
        return Err(TemplateError::NotASave { path: path.into() });
    }
    let mut words = [0u32; 19];
    for (i, w) in words.iter_mut().enumerate() {
        *w = u32::from_le_bytes(h[16 + 4 * i..20 + 4 * i].try_into().expect("4 bytes"));
    }
    let data_len = words[1] as usize;
    if data_len > 16 << 20 {
        return Err(TemplateError::NotASave { path: path.into() });
    }
    let mut data = vec![0u8; data_len];
    f.read_exact(&mut data).map_err(read)?;
    Ok((words, data, words[4] as usize))
}

/// Writes `xml` as the domain XML of the save file at `path`, keeping libvirt's cookie and
/// the header's length, so the next restore of the file brings up that domain.
pub fn rewrite_save_xml(path: &Path, xml: &str) -> Result<(), TemplateError> {
    let (mut words, data, cookie_offset) = read_header(path)?;
    let cookie: &[u8] = if cookie_offset > 0 && cookie_offset < data.len() {
        let end = data[cookie_offset..].iter().position(|b| *b == 0).map(|n| cookie_offset + n).unwrap_or(data.len());
        &data[cookie_offset..end]
    } else {
        &[]
    };
    let mut block = Vec::with_capacity(data.len());
    block.extend_from_slice(xml.as_bytes());
    block.push(0);
    if cookie_offset > 0 {
        words[4] = block.len() as u32;
        block.extend_from_slice(cookie);
        block.push(0);
    }
    if block.len() > data.len() {
        return Err(TemplateError::TooLarge { path: path.into(), len: block.len(), room: data.len() });
    }
    block.resize(data.len(), 0);
    let write = |source| TemplateError::Write { path: path.into(), source };
    let mut f = std::fs::OpenOptions::new().write(true).open(path).map_err(write)?;
    let mut header = Vec::with_capacity(HEADER - 16);
    for w in words {
        header.extend_from_slice(&w.to_le_bytes());
    }
    f.seek(SeekFrom::Start(16)).map_err(write)?;
    f.write_all(&header).map_err(write)?;
    f.write_all(&block).map_err(write)?;
    f.sync_data().map_err(write)
}

/// What a clone changes in its template's saved XML.
pub struct CloneSpec<'a> {
    pub name: &'a str,
    pub port: u16,
    /// The clone's overlay on the template's frozen disk; none for a diskless (kernel +
    /// initrd) template, whose clone needs nothing but the saved memory.
    pub overlay: Option<&'a Path>,
    pub console: &'a Path,
    /// `<metadata>…</metadata>` of the clone (its mark).
    pub metadata: String,
}

/// The clone's domain XML from its template's saved one: its own name, UUID, VM generation
/// ID (so a kernel with the VMGENID driver reseeds its RNG at once), mark, SSH forward,
/// overlay (whose backing chain libvirt reads from the image, since the template's disk is
/// now a backing file) and console file.
pub fn clone_xml(saved: &str, template: &Template, spec: &CloneSpec<'_>) -> Result<String, TemplateError> {
    let mut xml = replace_element(saved, "name", spec.name).ok_or(TemplateError::Xml { what: "name" })?;
    xml = replace_element(&xml, "uuid", &uuid()).ok_or(TemplateError::Xml { what: "uuid" })?;
    xml = replace_element(&xml, "genid", &uuid()).ok_or(TemplateError::Xml { what: "genid" })?;
    let (start, end) = span(&xml, "<metadata>", "</metadata>").ok_or(TemplateError::Xml { what: "metadata" })?;
    xml.replace_range(start..end, &spec.metadata);
    let forward = format!("start='{}'", template.port);
    if !xml.contains(&forward) {
        return Err(TemplateError::Xml { what: "SSH port forward" });
    }
    xml = xml.replacen(&forward, &format!("start='{}'", spec.port), 1);
    let disk = format!("file='{}'", template.disk().display());
    match (spec.overlay, xml.find(&disk)) {
        (Some(overlay), Some(at)) => {
            xml.replace_range(at..at + disk.len(), &format!("file='{}'", overlay.display()));
            remove_backing_store_after(&mut xml, at);
        }
        (Some(_), None) => return Err(TemplateError::Xml { what: "template disk" }),
        // A clone never writes to the frozen disk every other clone reads.
        (None, Some(_)) => return Err(TemplateError::NoOverlay),
        (None, None) => {}
    }
    let console = format!("'{}'", template.console().display());
    xml = xml.replace(&console, &format!("'{}'", spec.console.display()));
    Ok(xml)
}

fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    // Version 4, variant 1.
    format!("{}-{}-4{}-{:x}{}-{}", &h[0..8], &h[8..12], &h[13..16], 8 | (b[8] & 3), &h[17..20], &h[20..32])
}

fn span(xml: &str, open: &str, close: &str) -> Option<(usize, usize)> {
    let start = xml.find(open)?;
    let end = xml[start..].find(close)? + start + close.len();
    Some((start, end))
}

/// `<tag>old</tag>` (its first occurrence) with `value` as its text.
fn replace_element(xml: &str, tag: &str, value: &str) -> Option<String> {
    let (start, end) = span(xml, &format!("<{tag}>"), &format!("</{tag}>"))?;
    let mut out = xml.to_string();
    out.replace_range(start..end, &format!("<{tag}>{value}</{tag}>"));
    Some(out)
}

/// Removes the `<backingStore …>` element (with everything nested in it) that follows
/// position `at` inside the same `<disk>`, so libvirt reads the chain from the image itself.
fn remove_backing_store_after(xml: &mut String, at: usize) {
    let disk_end = xml[at..].find("</disk>").map(|n| at + n).unwrap_or(xml.len());
    let Some(rel) = xml[at..disk_end].find("<backingStore") else { return };
    let start = at + rel;
    let mut depth = 0usize;
    let mut i = start;
    while i < disk_end {
        let rest = &xml[i..];
        if rest.starts_with("<backingStore") {
            let close = rest.find('>').unwrap_or(rest.len());
            if rest[..close].ends_with('/') {
                if depth == 0 {
                    xml.replace_range(start..i + close + 1, "");
                    return;
                }
            } else {
                depth += 1;
            }
            i += close + 1;
        } else if rest.starts_with("</backingStore>") {
            depth -= 1;
            i += "</backingStore>".len();
            if depth == 0 {
                xml.replace_range(start..i, "");
                return;
            }
        } else {
            i += rest.chars().next().map(char::len_utf8).unwrap_or(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "<domain type='qemu'>\n  <name>paddock-0123abcd-tpl</name>\n  <uuid>49abc093-ff57-45ec-8e8f-d68d5da100d7</uuid>\n  <genid>e5a1cbf2-3518-428b-9a10-4a0cce6b82fb</genid>\n  <metadata>\n    <paddock:vm xmlns:paddock='https://paddock.dev/xmlns/vm/1'><paddock:run>template:debian</paddock:run></paddock:vm>\n  </metadata>\n  <devices>\n    <disk type='file' device='disk'>\n      <source file='/s/templates/t/disk.qcow2' index='2'/>\n      <backingStore type='file' index='3'>\n        <format type='qcow2'/>\n        <source file='/img/base.qcow2'/>\n        <backingStore/>\n      </backingStore>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    <disk type='file' device='disk'>\n      <source file='/s/templates/t/seed.iso'/>\n      <backingStore/>\n    </disk>\n    <interface type='user'><portForward proto='tcp' address='127.0.0.1'><range start='26801' to='22'/></portForward></interface>\n    <serial type='file'><source path='/s/templates/t/console.log'/></serial>\n    <console type='file'><source path='/s/templates/t/console.log'/></console>\n  </devices>\n</domain>\n";

    fn template() -> Template {
        Template { dir: "/s/templates/t".into(), key: "k".into(), domain: "paddock-0123abcd-tpl".into(), port: 26801 }
    }

    #[test]
    fn a_clone_gets_its_own_name_ids_port_disk_and_console() {
        let spec = CloneSpec {
            name: "paddock-0123abcd-c1",
            port: 26802,
            overlay: Some(Path::new("/s/overlays/c1.qcow2")),
            console: Path::new("/s/consoles/c1.log"),
            metadata: "<metadata><paddock:vm xmlns:paddock='x'><paddock:run>run-1</paddock:run></paddock:vm></metadata>".into(),
        };
        let a = clone_xml(SAVED, &template(), &spec).unwrap();
        let b = clone_xml(SAVED, &template(), &spec).unwrap();
        assert!(a.contains("<name>paddock-0123abcd-c1</name>"), "{a}");
        assert!(!a.contains("49abc093") && !a.contains("e5a1cbf2"), "{a}");
        // Fresh UUID and generation ID for every clone.
        let genid = |x: &str| x[x.find("<genid>").unwrap()..x.find("</genid>").unwrap()].to_string();
        assert_ne!(genid(&a), genid(&b));
        assert!(a.contains("<paddock:run>run-1</paddock:run>") && !a.contains("template:debian"));
        assert!(a.contains("start='26802'") && !a.contains("26801"));
        assert!(a.contains("file='/s/overlays/c1.qcow2'") && !a.contains("/s/templates/t/disk.qcow2"));
        // The template's chain is gone from the clone's disk (libvirt reads it from the
        // overlay); the seed disk keeps its own empty chain.
        assert!(!a.contains("/img/base.qcow2"), "{a}");
        assert!(a.contains("/s/templates/t/seed.iso'/>\n      <backingStore/>"), "{a}");
        assert_eq!(a.matches("/s/consoles/c1.log").count(), 2);
        assert!(a.contains("<target dev='vda' bus='virtio'/>"));
    }

    /// The warm-capable bundled guest: no disk, its kernel and initrd are the image's files.
    const SAVED_KERNEL: &str = "<domain type='qemu'>\n  <name>paddock-0123abcd-tpl</name>\n  <uuid>49abc093-ff57-45ec-8e8f-d68d5da100d7</uuid>\n  <genid>e5a1cbf2-3518-428b-9a10-4a0cce6b82fb</genid>\n  <metadata>\n    <paddock:vm xmlns:paddock='https://paddock.dev/xmlns/vm/1'><paddock:run>template:tiny</paddock:run></paddock:vm>\n  </metadata>\n  <os>\n    <kernel>/img/vmlinuz</kernel>\n    <initrd>/img/initrd.img</initrd>\n    <cmdline>console=ttyS0 paddock.principal=paddock-0123abcd-tpl</cmdline>\n  </os>\n  <devices>\n    <interface type='user'><portForward proto='tcp' address='127.0.0.1'><range start='26801' to='22'/></portForward></interface>\n    <serial type='file'><source path='/s/templates/t/console.log'/></serial>\n    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n  </devices>\n</domain>\n";

    #[test]
    fn a_diskless_clone_needs_no_overlay_and_keeps_the_images_kernel() {
        let spec = CloneSpec {
            name: "paddock-0123abcd-c2",
            port: 26803,
            overlay: None,
            console: Path::new("/s/consoles/c2.log"),
            metadata: "<metadata><paddock:vm xmlns:paddock='x'><paddock:run>run-2</paddock:run></paddock:vm></metadata>".into(),
        };
        let a = clone_xml(SAVED_KERNEL, &template(), &spec).unwrap();
        assert!(a.contains("<name>paddock-0123abcd-c2</name>") && !a.contains("49abc093") && !a.contains("e5a1cbf2"), "{a}");
        assert!(a.contains("start='26803'") && a.contains("/s/consoles/c2.log") && !a.contains("/s/templates/t/console.log"), "{a}");
        assert!(a.contains("<kernel>/img/vmlinuz</kernel>") && a.contains("<initrd>/img/initrd.img</initrd>"), "{a}");
        assert!(a.contains("org.qemu.guest_agent.0") && !a.contains("<disk"), "{a}");
        // A disk template's clone without an overlay would write to the frozen disk: refused.
        assert!(matches!(clone_xml(SAVED, &template(), &spec), Err(TemplateError::NoOverlay)));
    }

    #[test]
    fn the_save_header_takes_a_new_xml_and_keeps_the_cookie_and_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.save");
        let (xml, cookie) = ("<domain><name>a</name></domain>\n", "<cookie>c</cookie>\n");
        let data_len = 4096u32;
        let mut f = Vec::new();
        f.extend_from_slice(MAGIC);
        let mut words = [0u32; 19];
        words[0] = 2;
        words[1] = data_len;
        words[2] = 1;
        words[4] = xml.len() as u32 + 1;
        for w in words {
            f.extend_from_slice(&w.to_le_bytes());
        }
        let mut data = format!("{xml}\0{cookie}\0").into_bytes();
        data.resize(data_len as usize, 0);
        f.extend_from_slice(&data);
        f.extend_from_slice(b"QEMU-STREAM");
        std::fs::write(&path, &f).unwrap();
        assert_eq!(read_save_xml(&path).unwrap(), xml);

        let longer = "<domain><name>a-much-longer-name</name></domain>\n";
        rewrite_save_xml(&path, longer).unwrap();
        assert_eq!(read_save_xml(&path).unwrap(), longer);
        let after = std::fs::read(&path).unwrap();
        assert_eq!(after.len(), f.len());
        assert!(after.ends_with(b"QEMU-STREAM"));
        let (words, data, off) = read_header(&path).unwrap();
        assert_eq!(words[1], data_len);
        assert_eq!(off, longer.len() + 1);
        assert!(data[off..].starts_with(cookie.as_bytes()));

        let huge = "x".repeat(5000);
        assert!(matches!(rewrite_save_xml(&path, &huge), Err(TemplateError::TooLarge { .. })));
        std::fs::write(dir.path().join("not"), b"hello").unwrap();
        assert!(read_save_xml(&dir.path().join("not")).is_err());
    }

    #[test]
    fn unfinished_templates_are_removed_and_finished_ones_listed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let done = dir_for(state, "local", "deb", "aaaaaaaaaaaaaaaaaaaa");
        let cut = dir_for(state, "local", "deb", "bbbbbbbbbbbbbbbbbbbb");
        std::fs::create_dir_all(&done).unwrap();
        std::fs::create_dir_all(&cut).unwrap();
        std::fs::write(cut.join("memory.save"), b"partial").unwrap();
        let t = Template { dir: done.clone(), key: "aaaaaaaaaaaaaaaaaaaa".into(), domain: "d".into(), port: 26800 };
        t.commit().unwrap();
        assert_eq!(remove_unfinished(state), vec![cut.clone()]);
        assert!(!cut.exists());
        assert_eq!(list(state), vec![t.clone()]);
        // A newer template supersedes it, unless an overlay is still backed by its disk.
        let overlays = state.join("overlays");
        std::fs::create_dir_all(&overlays).unwrap();
        let newer = dir_for(state, "local", "deb", "cccccccccccccccccccc");
        assert_eq!(remove_superseded(state, "local", "deb", &newer, &overlays), vec![done.clone()]);
        assert!(list(state).is_empty());
    }
}
