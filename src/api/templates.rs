//! `GET /api/v1/templates`: the warm-start templates in the state directory, read like the
//! fleet and VM views (a reader's token, or none with `public_reads`).

use axum::Json;
use axum::extract::State;

use super::wire::TemplateOut;
use super::{ApiError, Reader, Shared};
use crate::vm::template::list as listing;

pub async fn list(State(s): State<Shared>, _r: Reader) -> Result<Json<Vec<TemplateOut>>, ApiError> {
    Ok(Json(templates_of(&s).await?))
}

/// Listed off the runtime: a changed image file is hashed (once) to tell a stale template.
pub(crate) async fn templates_of(s: &Shared) -> Result<Vec<TemplateOut>, ApiError> {
    let (fleet, seeds, hashes) = (s.fleet(), s.template_seeds.clone(), s.template_hashes.clone());
    let listed = tokio::task::spawn_blocking(move || listing::list_all(&fleet.daemon.state_dir, &fleet, seeds.as_ref(), &hashes))
        .await
        .map_err(|source| ApiError::Task { what: "template listing", source })?;
    Ok(listed
        .into_iter()
        .map(|t| TemplateOut {
            host: t.host,
            image: t.image,
            key: t.key,
            state: t.state.as_str().into(),
            made_at: t.made_at,
            disk_bytes: t.disk_bytes,
            clones: t.clones,
        })
        .collect())
}
