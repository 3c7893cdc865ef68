//! Who is calling: bearer tokens resolved through the store to a user of
//! `fleet.toml`, and the role checks every handler makes.

use axum::extract::FromRequestParts;
use axum::http::Method;
use axum::http::request::Parts;

use super::{ApiError, Shared};
use crate::config::{Job, Role};

/// The cookie the dashboard stores a token in (GET requests only).
pub const TOKEN_COOKIE: &str = "paddock_token";

/// A caller allowed to read: a known user, or anyone when reads are public.
#[derive(Debug, Clone)]
pub struct Reader(pub Option<Actor>);

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Actor {
    pub user: String,
    pub role: Role,
}

impl Actor {
    /// Admins may start any job; maintainers only the jobs that list them.
    pub fn may_run(&self, job: &Job) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Maintainer if job.maintainers.contains(&self.user) => Ok(()),
            Role::Maintainer => Err(ApiError::Forbidden(format!(
                "`{}` does not maintain job `{}` (its maintainers: {})",
                self.user,
                job.name,
                if job.maintainers.is_empty() { "none".into() } else { job.maintainers.join(", ") }
            ))),
            Role::Viewer => Err(ApiError::Forbidden(format!(
                "`{}` is a viewer; starting or stopping runs needs a maintainer of `{}` or an admin",
                self.user, job.name
            ))),
        }
    }
}

fn token_from(parts: &Parts) -> Result<Option<String>, ApiError> {
    if let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let h = h.to_str().map_err(|_| ApiError::Unauthenticated("the Authorization header is not text".into()))?;
        let Some(t) = h.strip_prefix("Bearer ") else {
            return Err(ApiError::Unauthenticated("the Authorization header must be `Bearer pdk_...`".into()));
        };
        return Ok(Some(t.trim().to_string()));
    }
    if parts.method == Method::GET || parts.method == Method::HEAD {
        return Ok(cookie(parts, TOKEN_COOKIE));
    }
    Ok(None)
}

pub(crate) fn cookie(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

async fn resolve(state: &Shared, token: &str) -> Result<Actor, ApiError> {
    let Some(user) = state.store.token_user(token).await? else {
        return Err(ApiError::Unauthenticated("the token is unknown or revoked".into()));
    };
    let fleet = state.fleet();
    let Some(u) = fleet.user(&user) else {
        return Err(ApiError::Unauthenticated(format!("the token's user `{user}` is no longer in fleet.toml")));
    };
    Ok(Actor { user: u.name.clone(), role: u.role })
}

impl FromRequestParts<Shared> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Self::Rejection> {
        match token_from(parts)? {
            Some(t) => resolve(state, &t).await,
            None => Err(ApiError::Unauthenticated("this needs a token: `Authorization: Bearer pdk_...`".into())),
        }
    }
}

impl FromRequestParts<Shared> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Self::Rejection> {
        match token_from(parts)? {
            // A token that is sent must be good even when reads are public.
            Some(t) => Ok(Reader(Some(resolve(state, &t).await?))),
            None if state.public_reads => Ok(Reader(None)),
            None => Err(ApiError::Unauthenticated("reading needs a token: `Authorization: Bearer pdk_...`".into())),
        }
    }
}
