//! A run's artifacts as files to deliver with its result: the document's `extras.artifacts`
//! names them, the run's folder (`<logs>/<run>/artifacts/`) holds them.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// One artifact to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFile {
    /// The name it is published under (its file name in the run's folder).
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

/// What every delivered artifact says about itself.
pub const DESCRIPTION: &str = "run artifact";

/// The artifacts `doc` lists that are still on disk under `<logs>/<run_id>/artifacts/`. A name
/// that is not one plain file name (the guest chose it) is never joined to a path.
pub fn listed(logs: &Path, run_id: &str, doc: &Value) -> Vec<RunFile> {
    let Some(items) = doc.pointer("/extras/artifacts").and_then(Value::as_array) else { return Vec::new() };
    if !plain_name(run_id) {
        return Vec::new();
    }
    let dir = logs.join(run_id).join("artifacts");
    items
        .iter()
        .filter_map(|a| a.get("name")?.as_str())
        .filter(|n| plain_name(n))
        .filter_map(|name| {
            let path = dir.join(name);
            let meta = std::fs::symlink_metadata(&path).ok().filter(|m| m.is_file())?;
            Some(RunFile { name: name.to_owned(), path, size: meta.len() })
        })
        .collect()
}

fn plain_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\\', '\0'])
}

/// `?auth_key=…&filename=…&description=…&visible=yes`, percent-encoded, for pony-build's `/upload`.
pub fn upload_query(auth_key: &str, filename: &str) -> String {
    format!("auth_key={}&filename={}&description={}&visible=yes", encode(auth_key), encode(filename), encode(DESCRIPTION))
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where a pony-build server takes uploads, from its XML-RPC URL: pony-build's client replaces
/// the trailing `xmlrpc` with `upload`; a paddock recorder's `…/xmlrpc/<token>` form drops the
/// token too (the upload's credential is the result's auth_key).
pub fn upload_url(xmlrpc_url: &str) -> String {
    let u = xmlrpc_url.trim_end_matches('/');
    let base = match u.rsplit_once("/xmlrpc") {
        Some((head, tail)) if tail.is_empty() || (tail.starts_with('/') && !tail[1..].contains('/')) => head,
        _ => u,
    };
    format!("{base}/upload")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_listed_files_on_disk_are_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let art = dir.path().join("run-1/artifacts");
        std::fs::create_dir_all(&art).unwrap();
        std::fs::write(art.join("a.txt"), b"abc").unwrap();
        std::fs::write(dir.path().join("run-1/secret"), b"no").unwrap();
        let doc = serde_json::json!({"extras": {"artifacts": [
            {"name": "a.txt"}, {"name": "gone.txt"}, {"name": "../secret"}, {"name": ".."}, {"name": 7}
        ]}});
        let files = listed(dir.path(), "run-1", &doc);
        assert_eq!(files, [RunFile { name: "a.txt".into(), path: art.join("a.txt"), size: 3 }]);
        assert!(listed(dir.path(), "../run-1", &doc).is_empty());
        assert!(listed(dir.path(), "run-1", &serde_json::json!({})).is_empty());
    }

    #[test]
    fn upload_urls_follow_pony_builds_client() {
        assert_eq!(upload_url("http://pb.example/xmlrpc"), "http://pb.example/upload");
        assert_eq!(upload_url("http://pb.example/pb-dev/xmlrpc"), "http://pb.example/pb-dev/upload");
        assert_eq!(upload_url("http://h:1/recorder/xmlrpc/pdk_secret"), "http://h:1/recorder/upload");
        assert_eq!(upload_query("k 1", "a&b.txt"), "auth_key=k%201&filename=a%26b.txt&description=run%20artifact&visible=yes");
    }
}
