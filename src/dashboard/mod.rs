//! The dashboard: server-rendered HTML (askama) of the fleet at a glance and of
//! one run, with a little vanilla JS for the live log pane (rust-embed assets).
//!
//! Everything but live follow works without JS. Auth: when the daemon has
//! public reads, the pages are open; otherwise open `/?token=pdk_...` once: the
//! token is checked, stored in an HttpOnly, SameSite=Strict cookie, and the
//! browser is redirected to the same page without it in the address. The API
//! accepts that cookie for GET requests only, so the page's `EventSource`
//! authenticates and no mutating call can be forged from another site.

mod view;

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::api::{ApiError, Reader, Shared, TOKEN_COOKIE};
pub use view::{Dashboard, GridRow};

#[derive(rust_embed::RustEmbed)]
#[folder = "src/dashboard/static/"]
struct Assets;

pub fn router(state: Shared) -> Router {
    Router::new().route("/", get(index)).route("/runs/{id}", get(run_page)).route("/static/{file}", get(asset)).with_state(state)
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    token: Option<String>,
    follow: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
struct Login {
    reason: String,
}

/// Handles `?token=`: a good token becomes a cookie and the address loses it.
async fn token_login(s: &Shared, token: &str, back: &str) -> Response {
    match s.store.token_user(token).await {
        Ok(Some(_)) => {
            let cookie = format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000");
            let mut resp = Redirect::to(back).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Ok(None) => (StatusCode::UNAUTHORIZED, Login { reason: "That token is unknown or revoked.".into() }).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn refused(e: ApiError) -> Response {
    match e {
        ApiError::Unauthenticated(reason) => (StatusCode::UNAUTHORIZED, Login { reason }).into_response(),
        other => other.into_response(),
    }
}

async fn index(State(s): State<Shared>, reader: Result<Reader, ApiError>, Query(q): Query<PageQuery>) -> Response {
    if let Some(t) = &q.token {
        return token_login(&s, t, "/").await;
    }
    if let Err(e) = reader {
        return refused(e);
    }
    match view::dashboard(&s, q.follow.as_deref()).await {
        Ok(page) => page.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn run_page(
    State(s): State<Shared>,
    reader: Result<Reader, ApiError>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    if let Some(t) = &q.token {
        return token_login(&s, t, &format!("/runs/{id}")).await;
    }
    if let Err(e) = reader {
        return refused(e);
    }
    match view::run_page(&s, &id).await {
        Ok(page) => page.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn asset(Path(file): Path<String>) -> Response {
    match Assets::get(&file) {
        Some(f) => {
            let ctype = match file.rsplit('.').next() {
                Some("css") => "text/css; charset=utf-8",
                Some("js") => "text/javascript; charset=utf-8",
                Some("svg") => "image/svg+xml",
                _ => "application/octet-stream",
            };
            ([(header::CONTENT_TYPE, ctype), (header::CACHE_CONTROL, "max-age=300")], f.data.into_owned()).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}
