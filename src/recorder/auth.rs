//! Submission tokens: which submitter a presented secret belongs to, compared without leaking
//! timing, and only their SHA-256 digests kept in memory.

use sha2::{Digest, Sha256};

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
