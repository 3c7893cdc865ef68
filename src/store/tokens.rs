//! API tokens: issued per user, shown once, stored only as a SHA-256 hash.

use chrono::{DateTime, Utc};
use rand::Rng;
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::{Result, Store, parse_ts, ts};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub user: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A freshly created token; `secret` is never stored and never shown again.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: String,
    /// The whole bearer token: `pdk_<id>_<secret>`.
    pub token: String,
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(&mut buf[..]);
    hex::encode(buf)
}

impl Store {
    pub async fn create_token(&self, user: &str) -> Result<NewToken> {
        let id = random_hex(6);
        let secret = random_hex(24);
        let (user, id2, h) = (user.to_string(), id.clone(), hash(&secret));
        self.call(move |c| {
            c.execute(
                "INSERT INTO api_tokens (id, user, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id2, user, h, ts(Utc::now())],
            )?;
            Ok(())
        })
        .await?;
        Ok(NewToken { token: format!("pdk_{id}_{secret}"), id })
    }

    /// Returns whether a live token with this id existed.
    pub async fn revoke_token(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.call(move |c| {
            let n = c.execute("UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL", params![id, ts(Utc::now())])?;
            Ok(n == 1)
        })
        .await
    }

    /// The user a bearer token belongs to, if it is well-formed, known and not revoked.
    pub async fn token_user(&self, token: &str) -> Result<Option<String>> {
        let Some((id, secret)) = token.strip_prefix("pdk_").and_then(|t| t.split_once('_')) else {
            return Ok(None);
        };
        let (id, want) = (id.to_string(), hash(secret));
        self.call(move |c| {
            let row: Option<(String, String)> = c
                .query_row("SELECT user, hash FROM api_tokens WHERE id = ?1 AND revoked_at IS NULL", [&id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((user, stored)) = row else { return Ok(None) };
            // Both are hex digests of equal length; compare without an early exit.
            let same = stored.len() == want.len() && stored.bytes().zip(want.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if !same {
                return Ok(None);
            }
            c.execute("UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1", params![id, ts(Utc::now())])?;
            Ok(Some(user))
        })
        .await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRow>> {
        self.call(move |c| {
            let mut stmt = c.prepare("SELECT id, user, created_at, revoked_at FROM api_tokens ORDER BY created_at")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, Option<String>>(3)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, user, created, revoked) = row?;
                out.push(TokenRow { id, user, created_at: parse_ts(&created)?, revoked_at: revoked.as_deref().map(parse_ts).transpose()? });
            }
            Ok(out)
        })
        .await
    }

    pub async fn audit(&self, actor: &str, action: &str, subject: &str, detail: &str) -> Result<()> {
        let v = [actor, action, subject, detail].map(str::to_string);
        self.call(move |c| {
            c.execute(
                "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![ts(Utc::now()), v[0], v[1], v[2], v[3]],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_verify_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).await.unwrap();
        let t = store.create_token("alice").await.unwrap();
        assert_eq!(store.token_user(&t.token).await.unwrap().as_deref(), Some("alice"));
        // A token with the right id and a wrong secret is refused.
        let forged = format!("pdk_{}_{}", t.id, "00".repeat(24));
        assert_eq!(store.token_user(&forged).await.unwrap(), None);
        assert_eq!(store.token_user("garbage").await.unwrap(), None);
        // The secret is not in the database.
        let secret = t.token.rsplit('_').next().unwrap().to_string();
        for file in ["s.db", "s.db-wal"] {
            let raw = std::fs::read(dir.path().join(file)).unwrap_or_default();
            assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()), "secret found in {file}");
        }
        assert!(store.revoke_token(&t.id).await.unwrap());
        assert!(!store.revoke_token(&t.id).await.unwrap());
        assert_eq!(store.token_user(&t.token).await.unwrap(), None);
    }
}
