//! `fleet.toml`: reading, validating and describing the fleet.
//!
//! The file is parsed into spanned serde types (`raw`), then validated into the
//! plain domain types of `model`. Every error names the file, line, column and
//! key path, and all errors are reported at once rather than the first alone.

pub mod duration;
mod live;
mod model;
mod raw;
mod size;
mod validate;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use live::{FleetUpdater, JobChanges, LiveFleet, live, restart_only_changes};
pub use model::*;

/// One thing wrong with a `fleet.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; `None` when the problem is with the file as a whole.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The key path, e.g. `jobs[2].images`; empty for syntax errors.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    fn at(file: &Path, src: &str, span: Option<Range<usize>>, path: String, message: String) -> Self {
        let (line, column) = match span {
            Some(r) => {
                let (l, c) = line_col(src, r.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigError { file: file.to_path_buf(), line, column, path, message }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if self.path.is_empty() { write!(f, ": {}", self.message) } else { write!(f, ": {}: {}", self.path, self.message) }
    }
}

/// Everything wrong with a `fleet.toml`, in file order.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
}

/// Reads and validates the fleet file at `path`.
pub fn load(path: &Path) -> Result<Fleet, LoadError> {
    let src = std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
    parse(&src, path)
}

/// Validates `src` as if it had been read from `path` (used for error messages
/// and to resolve relative paths).
pub fn parse(src: &str, path: &Path) -> Result<Fleet, LoadError> {
    let raw: raw::RawFleet = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => {
            let mut message = e.message().trim_end().to_string();
            // toml's one error without a span; alone, "recursion limit" tells an admin nothing.
            // Found by feeding the `fleet_toml` fuzz target deeply nested inputs.
            if e.span().is_none() && message == "recursion limit" {
                message = "nested too deeply: more levels of tables, arrays or dotted keys than the TOML \
                           parser accepts (recursion limit)"
                    .to_string();
            }
            return Err(LoadError::Invalid(vec![ConfigError::at(path, src, e.span(), String::new(), message)]));
        }
    };
    let mut v = validate::Validator::new(src, path);
    let fleet = v.fleet(raw);
    if v.errors.is_empty() {
        Ok(fleet)
    } else {
        let mut errors = v.errors;
        errors.sort_by_key(|e| (e.line, e.column));
        Err(LoadError::Invalid(errors))
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|i| before.len() - i).unwrap_or(before.len() + 1);
    (line, col)
}

#[cfg(test)]
mod machine_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod reference_tests;
