//! The embedded recorder's credentials: the daemon's own API tokens. Any live token of a user
//! still in `fleet.toml` may read; maintainers and admins may also submit results, under their
//! user name (which scopes their idempotency keys).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::{Fleet, Role};
use crate::recorder::{Authenticator, Principal};
use crate::store::Store;

pub struct ApiTokens {
    pub store: Store,
    pub fleet: Arc<Fleet>,
}

impl Authenticator for ApiTokens {
    fn authenticate<'a>(&'a self, secret: &'a str) -> Pin<Box<dyn Future<Output = Option<Principal>> + Send + 'a>> {
        Box::pin(async move {
            let user = match self.store.token_user(secret).await {
                Ok(u) => u?,
                Err(e) => {
                    tracing::warn!(error = %crate::error::chain(&e), "checking a recorder credential failed");
                    return None;
                }
            };
            let u = self.fleet.user(&user)?;
            Some(Principal { name: u.name.clone(), may_submit: u.role >= Role::Maintainer })
        })
    }
}
