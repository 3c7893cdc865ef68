//! The recorder's HTTP surface: the router, the REST/JSON wire types, submission auth, and the
//! one mapping from errors to HTTP statuses.

use std::net::SocketAddr;
use std::time::Instant;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::model::{BagError, ClientInfo, ResultDoc, ResultKey};
use super::store::{Filter, History, HistoryMark, PackageHealth, StoredResult, Summary};
use super::{Attached, FileInfo, NewFile, Origin, Recorder, RecorderError, wire, xmlrpc};

/// The REST and XML-RPC routes plus `pages` (the HTML pages and feeds of `web.rs`, passed
/// in so that this file does not depend on `web.rs`, which uses its errors), with its state
/// applied; see `recorder::router`.
///
/// Submission auth, always: REST callers send `Authorization: Bearer <secret>`; XML-RPC callers
/// post to `/xmlrpc/<secret>` (any pony-build client can be pointed at that URL unchanged) or send
/// the same Bearer header. A submission's credential and Content-Type (`application/json` for
/// REST, `text/xml` for XML-RPC) are checked before its body is read. Reads are public unless
/// `private_reads` is set.
pub(super) fn router(rec: Recorder, pages: Router<Recorder>) -> Router {
    let limit = rec.config().body_limit;
    Router::new()
        .route("/api/v1/results", post(submit).get(search))
        .route("/api/v1/results/{key}", get(result_json))
        .route("/api/v1/packages", get(packages_json))
        .route("/api/v1/packages/{package}/tagsets", get(tagsets_json))
        .route("/api/v1/tagsets/{id}/history", get(history_json))
        .route("/api/v1/missing", get(missing_json))
        .route("/api/v1/build-requests", post(build_request))
        .route("/api/v1/results/{key}/files", get(files_json))
        .route("/results/{key}/files/{name}", get(file_download))
        .route("/upload", post(upload))
        .route("/xmlrpc", post(xmlrpc_plain))
        .route("/xmlrpc/{token}", post(xmlrpc_with_token))
        .merge(pages)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(rec.clone(), private_reads))
        .with_state(rec)
}

/// The cookie the daemon's dashboard keeps its API token in; pages under the daemon's
/// `/recorder` read it too (GET only), so a signed-in browser sees them with private reads.
const DASHBOARD_COOKIE: &str = "paddock_token";

/// The credential a request presents, in order: `Authorization: Bearer`, `?token=` (pages and
/// feeds opened in a browser or a feed reader), pony-build's `/xmlrpc/<token>`, and for GET the
/// dashboard's cookie.
fn presented_credential(req: &axum::extract::Request) -> Option<String> {
    if let Some(b) = bearer(req.headers()) {
        return Some(b.to_owned());
    }
    let from_query = req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    if let Some(t) = from_query {
        return Some(t.to_owned());
    }
    if let Some(t) = req.uri().path().strip_prefix("/xmlrpc/") {
        return Some(t.to_owned());
    }
    if req.method() == axum::http::Method::GET || req.method() == axum::http::Method::HEAD {
        return req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == DASHBOARD_COOKIE)
            .map(|(_, v)| v.to_owned());
    }
    None
}

/// With `private_reads`, every request must carry a credential the recorder knows (see
/// [`presented_credential`]). Submissions check theirs again in their handlers, so this layer
/// only ever refuses, never grants.
async fn private_reads(State(rec): State<Recorder>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    // An upload's credential is its result's auth_key, checked by the handler.
    if !rec.config().private_reads || req.uri().path() == "/upload" {
        return next.run(req).await;
    }
    match presented_credential(&req) {
        Some(t) if rec.authenticate(&t).await.is_some() => next.run(req).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

/// Errors a handler can end in. Each maps to exactly one status below.
#[derive(Debug)]
pub(super) enum ApiError {
    BadRequest(String),
    Unauthorized,
    /// A known caller that may only read tried to submit.
    Forbidden(String),
    NotFound(String),
    /// The body's Content-Type is not the one this endpoint reads.
    UnsupportedMediaType(String),
    /// The body is longer than `body_limit` (the limit, in bytes).
    TooLarge(usize),
    /// The body could not be read (the client went away or sent a broken chunk).
    Body(String),
    /// The request clashes with what is stored (another file of that name).
    Conflict(String),
    Recorder(RecorderError),
}

impl From<RecorderError> for ApiError {
    fn from(e: RecorderError) -> Self {
        ApiError::Recorder(e)
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl ApiError {
    fn status_and_message(self) -> (StatusCode, String) {
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized => {
                (StatusCode::UNAUTHORIZED, "a valid credential is required (Authorization: Bearer, ?token= or /xmlrpc/<token>)".into())
            }
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::UnsupportedMediaType(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, m),
            ApiError::TooLarge(limit) => (StatusCode::PAYLOAD_TOO_LARGE, format!("request body is larger than the limit of {limit} bytes")),
            ApiError::Body(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Recorder(RecorderError::Invalid(bag)) => (StatusCode::BAD_REQUEST, bag.to_string()),
            ApiError::Recorder(e @ RecorderError::OverLimit { .. }) => (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            ApiError::Recorder(e @ RecorderError::UnknownAuthKey) => (StatusCode::UNAUTHORIZED, e.to_string()),
            ApiError::Recorder(e @ RecorderError::BadFilename(..)) => (StatusCode::BAD_REQUEST, e.to_string()),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::Recorder(
                e @ (RecorderError::Open { .. }
                | RecorderError::Migrate { .. }
                | RecorderError::Database { .. }
                | RecorderError::Closed { .. }
                | RecorderError::Thread(..)),
            ) => {
                tracing::error!(error = ?e, "recorder request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = matches!(self, ApiError::Unauthorized);
        let (status, message) = self.status_and_message();
        let mut r = (status, Json(ErrorBody { error: message })).into_response();
        if unauthorized {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

fn client_ip(ext: &Extensions) -> Option<String> {
    ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// The submitter a request speaks for: `Unauthorized` without a credential the recorder knows,
/// `Forbidden` for one that may only read. There is no anonymous submission.
async fn submitter(rec: &Recorder, presented: Option<&str>) -> Result<String, ApiError> {
    let Some(secret) = presented else {
        return Err(ApiError::Unauthorized);
    };
    match rec.authenticate(secret).await {
        Some(p) if p.may_submit => Ok(p.name),
        Some(p) => Err(ApiError::Forbidden(format!("`{}` may read results but not submit them", p.name))),
        None => Err(ApiError::Unauthorized),
    }
}

/// Refuses a body whose Content-Type is not `want` (parameters such as `charset` allowed).
fn require_content_type(headers: &HeaderMap, want: &str) -> Result<(), ApiError> {
    let got = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = got.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(want) {
        Ok(())
    } else if got.is_empty() {
        Err(ApiError::UnsupportedMediaType(format!("Content-Type must be {want}; none was sent")))
    } else {
        Err(ApiError::UnsupportedMediaType(format!("Content-Type must be {want}, not {got:?}")))
    }
}

/// Reads a body of at most `limit` bytes, once its sender and type have been accepted.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ApiError::TooLarge(limit)),
        Err(e) => Err(ApiError::Body(format!("cannot read the request body: {e}"))),
    }
}

/// The body as JSON, or the message a client gets for a 400.
fn parse_json(body: &[u8]) -> Result<JsonValue, String> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(format!("body is not UTF-8: {e}"));
    }
    serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))
}

#[derive(Serialize)]
struct Submitted {
    result_key: String,
    auth_key: String,
    created: bool,
}

/// A `POST /api/v1/results` body, decoded and validated.
#[derive(Debug)]
pub struct Submission {
    pub doc: ResultDoc,
    pub idempotency_key: Option<String>,
}

/// Why a `POST /api/v1/results` body was refused before anything was stored.
#[derive(Debug, thiserror::Error)]
pub enum SubmissionError {
    /// Not UTF-8, not JSON, not an object, or a top-level key of the wrong shape.
    #[error("{0}")]
    Malformed(String),
    /// A well-formed body whose result does not validate.
    #[error(transparent)]
    Invalid(#[from] BagError),
}

/// The body parser of `POST /api/v1/results`, without the store or the token check.
/// Public so the fuzz targets (`fuzz/`) drive exactly what the endpoint runs on untrusted bytes.
pub fn decode_submission(body: &[u8]) -> Result<Submission, SubmissionError> {
    let malformed = |m: &str| SubmissionError::Malformed(m.to_owned());
    let text = std::str::from_utf8(body).map_err(|e| SubmissionError::Malformed(format!("body is not UTF-8: {e}")))?;
    // Read once, straight into the validated result (`wire`); no JSON tree is built for it.
    let mut de = serde_json::Deserializer::from_str(text);
    let read = serde::de::DeserializeSeed::deserialize(wire::TopSeed, &mut de).and_then(|top| de.end().map(|()| top));
    let mut top = read.map_err(|e| SubmissionError::Malformed(format!("malformed JSON: {e}")))?;
    if top.not_an_object.is_some() {
        return Err(malformed("body must be a JSON object"));
    }
    let idempotency_key = top.idempotency_key().map_err(|()| malformed("idempotency_key: expected a string of 1 to 256 bytes"))?;
    let client_info = top.client_info.ok_or_else(|| malformed("client_info: missing"))?;
    let results = top.results.ok_or_else(|| malformed("results: missing"))?;
    let doc = wire::assemble(client_info, results, top.extras)?;
    Ok(Submission { doc, idempotency_key })
}

async fn submit(
    State(rec): State<Recorder>,
    headers: HeaderMap,
    ext: Extensions,
    body: Body,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let started = Instant::now();
    let submitter = submitter(&rec, bearer(&headers)).await?;
    require_content_type(&headers, "application/json")?;
    let body = read_body(body, rec.config().body_limit).await?;
    let read = Instant::now();
    let Submission { doc, idempotency_key } = decode_submission(&body).map_err(|e| match e {
        SubmissionError::Malformed(m) => ApiError::BadRequest(m),
        SubmissionError::Invalid(bag) => ApiError::Recorder(RecorderError::from(bag)),
    })?;
    drop(body);
    rec.note_request(started, read, Instant::now());
    // The forwarder of another paddock sends the run id as a header as well as in the body.
    let idempotency_key = match idempotency_key {
        Some(k) => Some(k),
        None => idempotency_header(&headers)?,
    };
    let origin = Origin { client_ip: client_ip(&ext), submitter: Some(submitter) };
    let done = rec.ingest_from(doc, idempotency_key, origin).await?;
    let status = if done.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(Submitted { result_key: done.key.to_string(), auth_key: done.auth_key, created: done.created })))
}

fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 256 => Ok(Some(k.to_owned())),
            _ => Err(ApiError::BadRequest("Idempotency-Key: expected text of 1 to 256 bytes".into())),
        },
    }
}

#[derive(Deserialize)]
struct BuildRequestBody {
    client_info: JsonValue,
}

async fn build_request(State(rec): State<Recorder>, headers: HeaderMap, body: Body) -> Result<StatusCode, ApiError> {
    submitter(&rec, bearer(&headers)).await?;
    require_content_type(&headers, "application/json")?;
    let body = read_body(body, rec.config().body_limit).await?;
    let req: BuildRequestBody =
        serde_json::from_value(parse_json(&body).map_err(ApiError::BadRequest)?).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let tagset = ClientInfo::tagset_from_json(req.client_info).map_err(RecorderError::from)?;
    rec.request_build(tagset).await?;
    Ok(StatusCode::ACCEPTED)
}

async fn xmlrpc_plain(State(rec): State<Recorder>, headers: HeaderMap, ext: Extensions, body: Body) -> Response {
    let token = bearer(&headers).map(str::to_owned);
    xmlrpc_common(rec, token, &headers, &ext, body).await
}

async fn xmlrpc_with_token(
    State(rec): State<Recorder>,
    Path(token): Path<String>,
    headers: HeaderMap,
    ext: Extensions,
    body: Body,
) -> Response {
    xmlrpc_common(rec, Some(token), &headers, &ext, body).await
}

async fn xmlrpc_common(rec: Recorder, token: Option<String>, headers: &HeaderMap, ext: &Extensions, body: Body) -> Response {
    let started = Instant::now();
    let xml =
        |status: StatusCode, body: String| (status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"))], body).into_response();
    // A wrong token is refused here even for reads: the caller clearly meant to authenticate.
    let submitter = match token.as_deref() {
        None => None,
        Some(t) => match rec.authenticate(t).await {
            Some(p) if p.may_submit => Some(p.name),
            Some(_) => None,
            None => {
                return xml(StatusCode::OK, xmlrpc::fault_xml(xmlrpc::UNAUTHORIZED, "unknown submission token"));
            }
        },
    };
    if let Err(e) = require_content_type(headers, "text/xml") {
        let (status, message) = e.status_and_message();
        return xml(status, xmlrpc::fault_xml(xmlrpc::PARSE_ERROR, &message));
    }
    let body = match read_body(body, rec.config().body_limit).await {
        Ok(b) => b,
        Err(e) => {
            let (status, message) = e.status_and_message();
            return xml(status, xmlrpc::fault_xml(xmlrpc::PARSE_ERROR, &message));
        }
    };
    let caller = xmlrpc::Caller { client_ip: client_ip(ext), submitter };
    let (status, body) = xmlrpc::handle(&rec, caller, &body, (started, Instant::now())).await;
    xml(status, body)
}

// ---- queries ----

#[derive(Serialize)]
pub(super) struct SummaryJson {
    key: String,
    time: f64,
    time_rfc3339: String,
    package: String,
    arch: String,
    host: String,
    tagset_id: i64,
    tagset: Vec<String>,
    success: bool,
    duration: Option<f64>,
    /// A failure whose platform's next result passed (absent where not worked out).
    #[serde(skip_serializing_if = "Option::is_none")]
    flaky: Option<bool>,
    /// A failure right after a pass (absent where not worked out).
    #[serde(skip_serializing_if = "Option::is_none")]
    after_pass: Option<bool>,
}

impl SummaryJson {
    fn marked(s: &Summary, m: &HistoryMark) -> SummaryJson {
        SummaryJson { flaky: Some(m.flaky), after_pass: Some(m.after_pass), ..SummaryJson::from(s) }
    }
}

/// A platform's history as the REST API gives it.
#[derive(Serialize)]
struct PlatformHistoryJson {
    tagset_id: i64,
    total: usize,
    passed: usize,
    /// Kept for clients of earlier versions; the same as `passed`.
    succeeded: usize,
    /// "3 of last 4 passed".
    summary: String,
    last_pass: Option<SummaryJson>,
    /// While the platform fails, its first failure after the last pass (the likely regression).
    first_failure: Option<SummaryJson>,
    flaky: usize,
    results: Vec<SummaryJson>,
}

impl From<&History> for PlatformHistoryJson {
    fn from(h: &History) -> Self {
        PlatformHistoryJson {
            tagset_id: h.tagset_id,
            total: h.recent.len(),
            passed: h.passed,
            succeeded: h.passed,
            summary: h.summary(),
            last_pass: h.last_pass.as_ref().map(SummaryJson::from),
            first_failure: h.first_failure.as_ref().map(SummaryJson::from),
            flaky: h.recent.iter().filter(|(_, m)| m.flaky).count(),
            results: h.recent.iter().map(|(s, m)| SummaryJson::marked(s, m)).collect(),
        }
    }
}

impl From<&Summary> for SummaryJson {
    fn from(s: &Summary) -> Self {
        SummaryJson {
            key: s.key.to_string(),
            time: s.time,
            time_rfc3339: rfc3339(s.time),
            package: s.package.clone(),
            arch: s.arch.clone(),
            host: s.host.clone(),
            tagset_id: s.tagset_id,
            tagset: s.tagset.tags().to_vec(),
            success: s.success,
            duration: s.duration,
            flaky: None,
            after_pass: None,
        }
    }
}

#[derive(Serialize)]
struct PackageJson {
    package: String,
    platforms: i64,
    failing: i64,
    latest_at: f64,
}

impl From<PackageHealth> for PackageJson {
    fn from(p: PackageHealth) -> Self {
        PackageJson { package: p.package, platforms: p.platforms, failing: p.failing, latest_at: p.latest_at }
    }
}

async fn packages_json(State(rec): State<Recorder>) -> Result<Json<Vec<PackageJson>>, ApiError> {
    Ok(Json(rec.packages().await?.into_iter().map(PackageJson::from).collect()))
}

#[derive(Serialize)]
struct TagsetsJson {
    package: String,
    tagsets: Vec<TagsetJson>,
}

/// A platform's latest result with its history beside it.
#[derive(Serialize)]
struct TagsetJson {
    #[serde(flatten)]
    latest: SummaryJson,
    history: PlatformHistoryJson,
}

async fn tagsets_json(State(rec): State<Recorder>, Path(package): Path<String>) -> Result<Json<TagsetsJson>, ApiError> {
    let histories = rec.package_histories(&package).await?;
    if histories.is_empty() {
        return Err(ApiError::NotFound(format!("no results for package {package:?}")));
    }
    let tagsets = histories
        .iter()
        .filter_map(|h| h.recent.first().map(|(s, m)| TagsetJson { latest: SummaryJson::marked(s, m), history: h.into() }))
        .collect();
    Ok(Json(TagsetsJson { package, tagsets }))
}

#[derive(Serialize)]
struct ResultJson {
    key: String,
    time: f64,
    time_rfc3339: String,
    client_ip: Option<String>,
    submitter: Option<String>,
    tagset: Vec<String>,
    client_info: JsonValue,
    steps: Vec<JsonValue>,
    extras: JsonValue,
    flaky: bool,
    after_pass: bool,
    files: Vec<FileJson>,
}

impl ResultJson {
    fn new(r: StoredResult, mark: HistoryMark, files: Vec<FileJson>) -> Self {
        ResultJson { flaky: mark.flaky, after_pass: mark.after_pass, files, ..r.into() }
    }
}

#[derive(Serialize)]
struct FileJson {
    filename: String,
    description: String,
    visible: bool,
    size: u64,
    uploaded_at: f64,
    /// Where its bytes are served (relative to the recorder's base).
    url: String,
}

fn file_json(base: &str, key: ResultKey, f: FileInfo) -> FileJson {
    FileJson {
        url: format!("{base}/results/{key}/files/{}", urlencode(&f.filename)),
        filename: f.filename,
        description: f.description,
        visible: f.visible,
        size: f.size,
        uploaded_at: f.uploaded_at,
    }
}

async fn result_files(rec: &Recorder, key: ResultKey) -> Result<Vec<FileJson>, ApiError> {
    let base = rec.config().base_path.clone();
    Ok(rec.files(key).await?.into_iter().map(|f| file_json(&base, key, f)).collect())
}

async fn files_json(State(rec): State<Recorder>, Path(key): Path<String>) -> Result<Json<Vec<FileJson>>, ApiError> {
    let key = parse_key(&key)?;
    if rec.get(key).await?.is_none() {
        return Err(ApiError::NotFound(format!("no result with key {key}")));
    }
    Ok(Json(result_files(&rec, key).await?))
}

/// A file's bytes, always as a download: what a build uploaded is never rendered as a page of
/// the recorder's origin.
async fn file_download(State(rec): State<Recorder>, Path((key, name)): Path<(String, String)>) -> Result<Response, ApiError> {
    let key = parse_key(&key)?;
    let Some(bytes) = rec.file_content(key, &name).await? else {
        return Err(ApiError::NotFound(format!("result {key} has no file {name:?}")));
    };
    let disposition = format!("attachment; filename=\"{}\"", name.replace(|c: char| !c.is_ascii_graphic() || c == '"', "_"));
    let mut r = bytes.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

#[derive(Deserialize)]
struct UploadQuery {
    auth_key: Option<String>,
    filename: Option<String>,
    description: Option<String>,
    visible: Option<String>,
}

#[derive(Serialize)]
struct Uploaded {
    result_key: String,
    filename: String,
    /// False when the same file was already there (a repeated upload).
    created: bool,
}

/// pony-build's `POST /upload?auth_key=&filename=&description=&visible=yes|no` with the file's
/// bytes as the body (its client sends them with urllib, form-encoded or not). The auth_key
/// (from `add_results` or `POST /api/v1/results`) is the credential, checked before the body is
/// read; the body is read up to `file_limit`.
async fn upload(
    State(rec): State<Recorder>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let (Some(auth_key), Some(filename)) = (q.auth_key, q.filename) else {
        return Err(ApiError::BadRequest("upload attempt, but missing filename, description, or auth_key".into()));
    };
    let result = rec.upload_target(&auth_key).await?;
    let content = read_body(body, rec.config().file_limit).await?.to_vec();
    let size = content.len();
    let file = NewFile {
        filename: filename.clone(),
        description: q.description.unwrap_or_default(),
        visible: q.visible.as_deref() == Some("yes"),
        content,
    };
    match rec.attach(result, file).await? {
        Attached::Stored => Ok((StatusCode::OK, Json(Uploaded { result_key: result.to_string(), filename, created: true }))),
        Attached::AlreadyThere => Ok((StatusCode::OK, Json(Uploaded { result_key: result.to_string(), filename, created: false }))),
        Attached::NameTaken => Err(ApiError::Conflict(format!("result {result} already has another file named {filename:?}"))),
        Attached::OverResultCap { already } => Err(ApiError::Recorder(RecorderError::OverLimit {
            what: "the result's files (bytes)",
            got: already as usize + size,
            limit: rec.config().result_files_limit as usize,
        })),
    }
}

impl From<StoredResult> for ResultJson {
    fn from(r: StoredResult) -> Self {
        ResultJson {
            key: r.receipt.key.to_string(),
            time: r.receipt.time,
            time_rfc3339: rfc3339(r.receipt.time),
            client_ip: r.receipt.client_ip,
            submitter: r.receipt.submitter,
            tagset: r.tagset.tags().to_vec(),
            client_info: r.doc.client_info.to_json(),
            steps: r.doc.steps.iter().map(|s| s.to_json()).collect(),
            extras: JsonValue::Object(r.doc.extras),
            flaky: false,
            after_pass: false,
            files: Vec::new(),
        }
    }
}

pub(super) fn parse_key(s: &str) -> Result<ResultKey, ApiError> {
    s.parse().map_err(|_| ApiError::BadRequest(format!("{s:?} is not a result key")))
}

async fn result_json(State(rec): State<Recorder>, Path(key): Path<String>) -> Result<Json<ResultJson>, ApiError> {
    let key = parse_key(&key)?;
    match rec.get(key).await? {
        Some(r) => Ok(Json(ResultJson::new(r, rec.mark_of(key).await?, result_files(&rec, key).await?))),
        None => Err(ApiError::NotFound(format!("no result with key {key}"))),
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<u32>,
}

async fn history_json(
    State(rec): State<Recorder>,
    Path(id): Path<i64>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<PlatformHistoryJson>, ApiError> {
    let limit = q.limit.unwrap_or(super::HISTORY_WINDOW).clamp(1, 1000);
    match rec.platform_history(id, limit).await? {
        Some(h) => Ok(Json((&h).into())),
        None => Err(ApiError::NotFound(format!("no tagset with id {id}"))),
    }
}

#[derive(Deserialize)]
struct SearchQuery {
    package: Option<String>,
    arch: Option<String>,
    host: Option<String>,
    tag: Option<String>,
    success: Option<bool>,
    since: Option<String>,
    until: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
}

#[derive(Serialize)]
struct SearchJson {
    results: Vec<SummaryJson>,
    /// Pass as `before` to get the next page; absent on the last page.
    next_before: Option<String>,
}

/// A time bound as unix seconds or RFC 3339.
fn parse_time(name: &str, s: &str) -> Result<f64, ApiError> {
    if let Ok(t) = s.parse::<f64>() {
        return Ok(t);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_micros() as f64 / 1e6)
        .map_err(|e| ApiError::BadRequest(format!("{name}: {s:?} is neither unix seconds nor RFC 3339: {e}")))
}

async fn search(
    State(rec): State<Recorder>,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SearchJson>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let filter = Filter {
        package: q.package,
        arch: q.arch,
        host: q.host,
        tag: q.tag,
        success: q.success,
        since: q.since.as_deref().map(|s| parse_time("since", s)).transpose()?,
        until: q.until.as_deref().map(|s| parse_time("until", s)).transpose()?,
        before: q.before.as_deref().map(parse_key).transpose()?,
        limit,
    };
    let results = rec.search(filter).await?;
    let next_before = if results.len() == limit as usize { results.last().map(|r| r.key.to_string()) } else { None };
    Ok(Json(SearchJson { results: results.iter().map(SummaryJson::from).collect(), next_before }))
}

async fn missing_json(State(rec): State<Recorder>) -> Result<Json<Vec<SummaryJson>>, ApiError> {
    Ok(Json(rec.missing().await?.iter().map(SummaryJson::from).collect()))
}

/// A recorder timestamp (seconds since the epoch) as RFC 3339, for JSON and Atom feeds.
pub(super) fn rfc3339(t: f64) -> String {
    chrono::DateTime::from_timestamp_micros((t * 1e6) as i64)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Percent-encode a path segment (package names are free text).
pub(super) fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
