//! A job's `inputs`: host files and folders uploaded into the guest over SFTP before the
//! first step. **An input is measured before anything is sent: a missing one, one over its
//! `max_size`, or one holding anything but plain files and folders (a symlink, a device)
//! fails the run with a reason naming it, and nothing of it reaches the guest.**

use std::path::PathBuf;

use crate::config::Input;
use crate::ssh::{Session, SshError};

/// The most entries (files and folders) one input may hold.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input {} is missing", path.display())]
    Missing { path: PathBuf },
    #[error("reading input {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("input {} holds {} which is neither a file nor a folder; inputs hold only those", input.display(), entry.display())]
    NotPlain { input: PathBuf, entry: PathBuf },
    #[error("input {} holds more than {cap} bytes (its max_size)", path.display())]
    TooLarge { path: PathBuf, cap: u64 },
    #[error("input {} holds more than {MAX_ENTRIES} files and folders", path.display())]
    TooMany { path: PathBuf },
    #[error("input {} has a name that is not UTF-8: {}", path.display(), entry.display())]
    Name { path: PathBuf, entry: PathBuf },
    #[error("uploading input {} to {dest}", path.display())]
    Upload { path: PathBuf, dest: String, source: Box<SshError> },
}

/// What one input sends: folders to create (parents first), then files.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub dirs: Vec<String>,
    /// `(local file, guest path, size)`.
    pub files: Vec<(PathBuf, String, u64)>,
    pub bytes: u64,
}

/// Walks `input` on the host and checks it against its bounds; reads no file contents.
pub fn plan(input: &Input) -> Result<Plan, InputError> {
    let root = &input.path;
    let meta = match std::fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(InputError::Missing { path: root.clone() });
        }
        Err(source) => {
            return Err(InputError::Read { path: root.clone(), source });
        }
    };
    let mut plan = Plan::default();
    if meta.is_file() {
        if let Some((parent, _)) = input.dest.rsplit_once('/')
            && !parent.is_empty()
        {
            plan.dirs.push(parent.to_string());
        }
        add_file(&mut plan, input, root.clone(), input.dest.clone(), meta.len())?;
        return Ok(plan);
    }
    if !meta.is_dir() {
        return Err(InputError::NotPlain { input: root.clone(), entry: root.clone() });
    }
    plan.dirs.push(input.dest.clone());
    // Breadth-first, sorted, so parents come before children and the order is stable.
    let mut queue = std::collections::VecDeque::from([(root.clone(), input.dest.clone())]);
    let mut entries = 0usize;
    while let Some((dir, remote)) = queue.pop_front() {
        let mut children: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|source| InputError::Read { path: dir.clone(), source })?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|source| InputError::Read { path: dir.clone(), source })?;
        children.sort();
        for child in children {
            entries += 1;
            if entries > MAX_ENTRIES {
                return Err(InputError::TooMany { path: root.clone() });
            }
            let name = child
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| InputError::Name { path: root.clone(), entry: child.clone() })?
                .to_string();
            let guest = format!("{remote}/{name}");
            let m = std::fs::symlink_metadata(&child).map_err(|source| InputError::Read { path: child.clone(), source })?;
            if m.is_dir() {
                plan.dirs.push(guest.clone());
                queue.push_back((child, guest));
            } else if m.is_file() {
                add_file(&mut plan, input, child, guest, m.len())?;
            } else {
                return Err(InputError::NotPlain { input: root.clone(), entry: child });
            }
        }
    }
    Ok(plan)
}

fn add_file(plan: &mut Plan, input: &Input, local: PathBuf, guest: String, size: u64) -> Result<(), InputError> {
    plan.bytes = plan.bytes.saturating_add(size);
    if plan.bytes > input.max_bytes {
        return Err(InputError::TooLarge { path: input.path.clone(), cap: input.max_bytes });
    }
    plan.files.push((local, guest, size));
    Ok(())
}

/// Uploads every input (each planned in full before its first byte is sent).
/// Returns the number of files and bytes sent.
pub async fn upload(session: &Session, inputs: &[Input]) -> Result<(usize, u64), InputError> {
    let (mut files, mut bytes) = (0usize, 0u64);
    for input in inputs {
        let walked = input.clone();
        let plan = tokio::task::spawn_blocking(move || plan(&walked))
            .await
            .map_err(|e| InputError::Read { path: input.path.clone(), source: std::io::Error::other(e.to_string()) })??;
        let up = |dest: &str| {
            let (path, dest) = (input.path.clone(), dest.to_string());
            move |source| InputError::Upload { path, dest, source: Box::new(source) }
        };
        for dir in &plan.dirs {
            session.create_dirs(dir).await.map_err(up(dir))?;
        }
        for (local, guest, size) in &plan.files {
            let data = tokio::fs::read(local).await.map_err(|source| InputError::Read { path: local.clone(), source })?;
            // The file may have grown since it was measured: the cap holds for what is sent.
            if data.len() as u64 > *size && plan.bytes - size + data.len() as u64 > input.max_bytes {
                return Err(InputError::TooLarge { path: input.path.clone(), cap: input.max_bytes });
            }
            session.upload(guest, &data).await.map_err(up(guest))?;
            files += 1;
            bytes += data.len() as u64;
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn input(path: &Path, dest: &str, cap: u64) -> Input {
        Input { path: path.into(), dest: dest.into(), max_bytes: cap }
    }

    #[test]
    fn a_folder_plans_parents_first_and_a_file_lands_at_dest() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("tests/cases")).unwrap();
        std::fs::write(src.join("Makefile"), "all:\n").unwrap();
        std::fs::write(src.join("tests/cases/one.in"), "abc").unwrap();
        let p = plan(&input(&src, "/root/src", 1 << 20)).unwrap();
        assert_eq!(p.dirs, ["/root/src", "/root/src/tests", "/root/src/tests/cases"]);
        let guest: Vec<&str> = p.files.iter().map(|f| f.1.as_str()).collect();
        assert_eq!(guest, ["/root/src/Makefile", "/root/src/tests/cases/one.in"]);
        assert_eq!(p.bytes, 8);

        let f = plan(&input(&src.join("Makefile"), "/opt/x/Makefile", 100)).unwrap();
        assert_eq!(f.dirs, ["/opt/x"]);
        assert_eq!(f.files[0].1, "/opt/x/Makefile");
    }

    #[test]
    fn missing_oversized_and_symlinked_inputs_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let e = plan(&input(&gone, "/x", 10)).unwrap_err();
        assert!(e.to_string().contains("gone") && e.to_string().contains("missing"), "{e}");

        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("big"), vec![0u8; 11]).unwrap();
        let e = plan(&input(&src, "/x", 10)).unwrap_err();
        assert!(matches!(e, InputError::TooLarge { cap: 10, .. }), "{e}");

        std::fs::remove_file(src.join("big")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", src.join("link")).unwrap();
        let e = plan(&input(&src, "/x", 10)).unwrap_err();
        assert!(e.to_string().contains("link"), "{e}");
    }
}
