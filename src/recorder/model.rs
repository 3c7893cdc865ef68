//! The recorder's domain types: a build result (client info, steps, extras), its key and its tagset,
//! and the one validation path every protocol goes through to build them.

use std::fmt;

use serde_json::Value as Json;

use super::wire;

/// A free-form bag of extra keys a client sent beyond the ones the recorder understands.
/// Kept verbatim so nothing a pony-build client sends is lost.
pub type Bag = serde_json::Map<String, Json>;

/// What a build client says about itself and the build as a whole (pony-build's `client_info`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientInfo {
    pub package: String,
    pub arch: String,
    pub host: String,
    pub tags: Vec<String>,
    pub success: bool,
    /// Seconds the whole build took, if the client said.
    pub duration: Option<f64>,
    pub extra: Bag,
}

/// One build step (pony-build's entries in `results`).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub step_type: String,
    pub command: String,
    /// The command's exit status; 0 is success.
    pub status: i64,
    pub output: String,
    pub errout: String,
    pub duration: Option<f64>,
    pub extra: Bag,
}

/// A whole build result as the recorder stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultDoc {
    pub client_info: ClientInfo,
    pub steps: Vec<Step>,
    pub extras: Bag,
}

/// The recorder's key for a stored result. pony-build keys are decimal strings of an integer,
/// so ours are too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResultKey(pub i64);

impl fmt::Display for ResultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for ResultKey {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse().map(ResultKey)
    }
}

/// The identity of a platform: the client's tags plus `__package=`, `__arch=`, `__host=`,
/// sorted and without duplicates so that equal sets compare equal (pony-build used a frozenset).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tagset(Vec<String>);

impl Tagset {
    pub fn of(ci: &ClientInfo) -> Tagset {
        let mut tags = ci.tags.clone();
        tags.push(format!("__package={}", ci.package));
        tags.push(format!("__arch={}", ci.arch));
        tags.push(format!("__host={}", ci.host));
        Tagset::from_tags(tags)
    }

    pub fn from_tags(mut tags: Vec<String>) -> Tagset {
        tags.sort();
        tags.dedup();
        Tagset(tags)
    }

    pub fn tags(&self) -> &[String] {
        &self.0
    }

    /// The canonical text stored in the database (a JSON array of the sorted tags).
    pub fn canonical(&self) -> String {
        serde_json::to_string(&self.0).expect("a list of strings always serialises")
    }

    pub fn from_canonical(s: &str) -> Tagset {
        Tagset(serde_json::from_str(s).unwrap_or_default())
    }

    /// The tags a person wants to read: the client's own tags, without the `__` bookkeeping ones.
    pub fn display_tags(&self) -> Vec<&str> {
        self.0.iter().filter(|t| !t.starts_with("__")).map(String::as_str).collect()
    }
}

/// Why a submitted bag was refused. `path` names the offending value (`client_info.success`,
/// `results[3].status`), so the fault a client gets points at its own mistake.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BagError {
    #[error("{path}: missing")]
    Missing { path: String },
    #[error("{path}: expected {expected}, got {got}")]
    WrongType { path: String, expected: &'static str, got: &'static str },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: &'static str },
}

/// Longest package, arch, host or tag accepted; these end up in URLs and index keys.
const MAX_NAME: usize = 256;

pub(super) fn check_name(s: String, path: &str) -> Result<String, BagError> {
    if s.is_empty() {
        return Err(BagError::Invalid { path: path.to_owned(), reason: "must not be empty" });
    }
    if s.len() > MAX_NAME {
        return Err(BagError::Invalid { path: path.to_owned(), reason: "longer than 256 bytes" });
    }
    if s.chars().any(char::is_control) {
        return Err(BagError::Invalid { path: path.to_owned(), reason: "contains control characters" });
    }
    Ok(s)
}

impl ClientInfo {
    /// Validate a `client_info` bag (through `wire`, the one validation path).
    pub fn from_json(v: Json) -> Result<ClientInfo, BagError> {
        wire::from_value(v, wire::ClientInfoSeed, "client_info")
    }

    /// Only the identity fields, for `check_should_build`, which pony-build clients call
    /// before they have a `success` to report.
    pub fn tagset_from_json(mut v: Json) -> Result<Tagset, BagError> {
        if let Json::Object(bag) = &mut v {
            bag.entry("success").or_insert(Json::Bool(false));
        }
        ClientInfo::from_json(v).map(|ci| Tagset::of(&ci))
    }

    pub fn to_json(&self) -> Json {
        let mut bag = self.extra.clone();
        bag.insert("package".into(), self.package.clone().into());
        bag.insert("arch".into(), self.arch.clone().into());
        bag.insert("host".into(), self.host.clone().into());
        bag.insert("tags".into(), self.tags.clone().into());
        bag.insert("success".into(), self.success.into());
        if let Some(d) = self.duration {
            bag.insert("duration".into(), d.into());
        }
        Json::Object(bag)
    }
}

impl Step {
    /// Validate entry `index` of `results` (through `wire`).
    pub fn from_json(v: Json, index: usize) -> Result<Step, BagError> {
        wire::from_value(v, wire::ExpectMap(wire::StepSeed { index }), "results")
    }

    pub fn to_json(&self) -> Json {
        let mut bag = self.extra.clone();
        bag.insert("name".into(), self.name.clone().into());
        bag.insert("type".into(), self.step_type.clone().into());
        bag.insert("command".into(), self.command.clone().into());
        bag.insert("status".into(), self.status.into());
        bag.insert("output".into(), self.output.clone().into());
        bag.insert("errout".into(), self.errout.clone().into());
        if let Some(d) = self.duration {
            bag.insert("duration".into(), d.into());
        }
        Json::Object(bag)
    }
}

impl ResultDoc {
    /// Validate the three parts of a submission. REST and XML-RPC bodies are read straight
    /// through the same visitors (`wire`), so every protocol refuses exactly the same things.
    pub fn from_json(client_info: Json, results: Json, extras: Option<Json>) -> Result<ResultDoc, BagError> {
        let client_info = wire::from_value(client_info, wire::ClientInfoSeed, "client_info");
        let steps = wire::from_value(results, wire::StepsSeed, "results");
        let extras = extras.map(|e| wire::from_value(e, wire::ExtrasSeed, "extras"));
        wire::assemble(client_info, steps, extras)
    }

    pub fn tagset(&self) -> Tagset {
        Tagset::of(&self.client_info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tagset_adds_identity_tags_sorted() {
        let ci = ClientInfo::from_json(json!({
            "package": "p", "arch": "x86_64", "host": "h", "tags": ["py3", "a"], "success": true
        }))
        .unwrap();
        let ts = Tagset::of(&ci);
        assert_eq!(ts.tags(), ["__arch=x86_64", "__host=h", "__package=p", "a", "py3"]);
        assert_eq!(ts.display_tags(), ["a", "py3"]);
        assert_eq!(Tagset::from_canonical(&ts.canonical()), ts);
    }

    #[test]
    fn extra_keys_are_kept_and_round_trip() {
        let v = json!({"package": "p", "arch": "a", "host": "h", "success": false, "svn_rev": 42, "nested": {"x": [1]}});
        let ci = ClientInfo::from_json(v).unwrap();
        assert_eq!(ci.extra["svn_rev"], json!(42));
        let back = ClientInfo::from_json(ci.to_json()).unwrap();
        assert_eq!(back, ci);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = ClientInfo::from_json(json!({"package": "p", "arch": "a", "host": "h", "success": "yes"})).unwrap_err();
        assert_eq!(err.to_string(), "client_info.success: expected boolean, got string");
        let err = ResultDoc::from_json(
            json!({"package": "p", "arch": "a", "host": "h", "success": true}),
            json!([{"name": "x", "status": 0}, {"name": "y", "status": "zero"}]),
            None,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "results[1].status: expected integer, got string");
    }

    /// Found by the `rest_result` fuzz target: without serde_json's `float_roundtrip`, a long
    /// number parsed to a float one ULP off, so what the store kept (and later read back) was not
    /// the value the client sent, and a second save changed it again.
    #[test]
    fn numbers_survive_the_stored_text_unchanged() {
        let sent = format!(r#"{{"package": "p", "arch": "a", "host": "h", "success": true, "k": 9{}1, "d": 0.1}}"#, "9".repeat(87));
        let ci = ClientInfo::from_json(serde_json::from_str(&sent).unwrap()).unwrap();
        let stored = serde_json::to_string(&ci.to_json()).unwrap();
        let read_back = ClientInfo::from_json(serde_json::from_str(&stored).unwrap()).unwrap();
        assert_eq!(read_back, ci);
        assert_eq!(ci.extra["k"].as_f64(), Some(1e89));
    }
}
