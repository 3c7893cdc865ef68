//! Who may submit to and read from a recorder: fixed submission tokens (standalone
//! `--token NAME=SECRET`), compared without leaking timing and kept only as SHA-256 digests, or
//! an [`Authenticator`] supplied by the embedding program (the daemon: its API tokens).

use std::future::Future;
use std::pin::Pin;

use sha2::{Digest, Sha256};

/// A caller a presented secret was resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The submitter name kept in each result's receipt, and the scope of its idempotency keys.
    pub name: String,
    /// Whether this caller may store results and reservations, or only read.
    pub may_submit: bool,
}

/// Resolves a presented secret to a caller. The daemon implements it over its own API tokens so
/// the embedded recorder accepts exactly the credentials the rest of the daemon does.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, secret: &'a str) -> Pin<Box<dyn Future<Output = Option<Principal>> + Send + 'a>>;
}

/// A submitter's name and secret, as configured (`--token NAME=SECRET`).
#[derive(Clone)]
pub struct SubmitToken {
    pub name: String,
    pub secret: String,
}

impl std::fmt::Debug for SubmitToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmitToken").field("name", &self.name).field("secret", &"<redacted>").finish()
    }
}

pub(super) struct TokenSet {
    digests: Vec<(String, [u8; 32])>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

impl TokenSet {
    pub(super) fn new(tokens: &[SubmitToken]) -> TokenSet {
        TokenSet { digests: tokens.iter().map(|t| (t.name.clone(), digest(&t.secret))).collect() }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Compares against every token, whatever matches, so the time taken says nothing about
    /// which token (or how much of one) was right. Digests make the lengths equal.
    pub(super) fn check(&self, presented: &str) -> Option<&str> {
        let d = digest(presented);
        let mut found = None;
        for (name, want) in &self.digests {
            let diff = want.iter().zip(d.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(name.as_str());
            }
        }
        found
    }
}

pub(super) fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_right_submitter() {
        let set = TokenSet::new(&[
            SubmitToken { name: "lab1".into(), secret: "s3cret".into() },
            SubmitToken { name: "lab2".into(), secret: "other".into() },
        ]);
        assert_eq!(set.check("other"), Some("lab2"));
        assert_eq!(set.check("s3cre"), None);
        assert_eq!(set.check(""), None);
    }
}
