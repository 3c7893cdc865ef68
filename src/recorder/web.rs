//! The recorder's server-rendered pages (askama templates under `templates/recorder/`) and its
//! Atom feeds. Pages read only through `Recorder`; no JavaScript.

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::http::{ApiError, parse_key, rfc3339, urlencode};
use super::store::{StoredResult, Summary};
use super::{Filter, History, HistoryMark, Recorder};

pub(super) fn routes() -> Router<Recorder> {
    Router::new()
        .route("/", get(index))
        .route("/packages/{package}", get(package_page))
        .route("/results/{key}", get(result_page))
        .route("/missing", get(missing_page))
        .route("/feeds/all.atom", get(feed_all))
        .route("/feeds/failures.atom", get(feed_failures))
        .route("/feeds/packages/{package}", get(feed_package))
        .route("/static/style.css", get(stylesheet))
}

/// The dashboard's stylesheet followed by the recorder's additions, so recorder pages look like
/// the dashboard's whether embedded or standalone.
const STYLE: &str = concat!(include_str!("../dashboard/static/style.css"), "\n", include_str!("../../templates/recorder/recorder.css"));

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")], STYLE).into_response()
}

fn human_time(t: f64) -> String {
    chrono::DateTime::from_timestamp_micros((t * 1e6) as i64).map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default()
}

fn human_duration(d: Option<f64>) -> String {
    match d {
        None => "–".to_owned(),
        Some(s) if s < 60.0 => format!("{s:.1}s"),
        Some(s) => format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64),
    }
}

/// A result as one grid cell or one line of a list.
struct Cell {
    url: String,
    key: String,
    tags: String,
    arch: String,
    host: String,
    package: String,
    ok: bool,
    when: String,
    duration: String,
}

impl Cell {
    fn new(base: &str, s: &Summary) -> Cell {
        Cell {
            url: format!("{base}/results/{}", s.key),
            key: s.key.to_string(),
            tags: s.tagset.display_tags().join(" "),
            arch: s.arch.clone(),
            host: s.host.clone(),
            package: s.package.clone(),
            ok: s.success,
            when: human_time(s.time),
            duration: human_duration(s.duration),
        }
    }
}

struct PackageRow {
    name: String,
    url: String,
    platforms: i64,
    failing: i64,
    latest: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "recorder/index.html")]
struct IndexPage {
    base: String,
    packages: Vec<PackageRow>,
    missing: usize,
}

async fn index(State(rec): State<Recorder>) -> Result<IndexPage, ApiError> {
    let base = rec.config().base_path.clone();
    let packages = rec
        .packages()
        .await?
        .into_iter()
        .map(|p| PackageRow {
            url: format!("{base}/packages/{}", urlencode(&p.package)),
            name: p.package,
            platforms: p.platforms,
            failing: p.failing,
            latest: human_time(p.latest_at),
        })
        .collect();
    let missing = rec.missing().await?.len();
    Ok(IndexPage { base, packages, missing })
}

/// A result linked from a platform's history.
struct Link {
    url: String,
    key: String,
    when: String,
}

impl Link {
    fn new(base: &str, s: &Summary) -> Link {
        Link { url: format!("{base}/results/{}", s.key), key: s.key.to_string(), when: human_time(s.time) }
    }
}

/// One square of a platform's recent runs, oldest first.
struct Run {
    url: String,
    key: String,
    class: &'static str,
}

/// A platform on the package page: its latest result and its history.
struct Platform {
    cell: Cell,
    summary: String,
    runs: Vec<Run>,
    first_failure: Option<Link>,
    last_pass: Option<Link>,
    flaky: usize,
}

impl Platform {
    fn new(base: &str, h: &History) -> Option<Platform> {
        let (latest, _) = h.recent.first()?;
        Some(Platform {
            cell: Cell::new(base, latest),
            summary: h.summary(),
            runs: h
                .recent
                .iter()
                .rev()
                .map(|(s, m)| Run {
                    url: format!("{base}/results/{}", s.key),
                    key: s.key.to_string(),
                    class: if s.success {
                        "ok"
                    } else if m.flaky {
                        "flaky"
                    } else {
                        "fail"
                    },
                })
                .collect(),
            first_failure: h.first_failure.as_ref().map(|s| Link::new(base, s)),
            last_pass: h.last_pass.as_ref().map(|s| Link::new(base, s)),
            flaky: h.recent.iter().filter(|(_, m)| m.flaky).count(),
        })
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "recorder/package.html")]
struct PackagePage {
    base: String,
    package: String,
    feed: String,
    cells: Vec<Platform>,
    failing: usize,
}

async fn package_page(State(rec): State<Recorder>, Path(package): Path<String>) -> Result<PackagePage, ApiError> {
    let base = rec.config().base_path.clone();
    // Already ordered failures first, then newest first.
    let histories = rec.package_histories(&package).await?;
    if histories.is_empty() {
        return Err(ApiError::NotFound(format!("no results for package {package:?}")));
    }
    let cells: Vec<Platform> = histories.iter().filter_map(|h| Platform::new(&base, h)).collect();
    Ok(PackagePage {
        feed: format!("{base}/feeds/packages/{}", urlencode(&package)),
        failing: cells.iter().filter(|c| !c.cell.ok).count(),
        base,
        package,
        cells,
    })
}

/// Output longer than this many lines (or bytes) is folded under a `<details>`.
const FOLD_LINES: usize = 25;
const FOLD_BYTES: usize = 4096;

struct StepView {
    name: String,
    step_type: String,
    command: String,
    status: i64,
    ok: bool,
    duration: String,
    output: String,
    errout: String,
    fold_output: bool,
    fold_errout: bool,
}

fn long(s: &str) -> bool {
    s.len() > FOLD_BYTES || s.lines().count() > FOLD_LINES
}

#[derive(Template, WebTemplate)]
#[template(path = "recorder/result.html")]
struct ResultPage {
    base: String,
    key: String,
    package: String,
    package_url: String,
    tags: String,
    arch: String,
    host: String,
    ok: bool,
    when: String,
    duration: String,
    submitter: String,
    extras: Vec<(String, String)>,
    steps: Vec<StepView>,
    mark: HistoryMark,
    files: Vec<FileView>,
}

/// A visible file of a result, linked for download.
struct FileView {
    name: String,
    url: String,
    size: u64,
    description: String,
}

async fn result_page(State(rec): State<Recorder>, Path(key): Path<String>) -> Result<ResultPage, ApiError> {
    let base = rec.config().base_path.clone();
    let key = parse_key(&key)?;
    let Some(r) = rec.get(key).await? else {
        return Err(ApiError::NotFound(format!("no result with key {key}")));
    };
    let mark = rec.mark_of(key).await?;
    let files = rec
        .files(key)
        .await?
        .into_iter()
        .filter(|f| f.visible)
        .map(|f| FileView {
            url: format!("{base}/results/{key}/files/{}", urlencode(&f.filename)),
            name: f.filename,
            size: f.size,
            description: f.description,
        })
        .collect();
    let StoredResult { receipt, doc, tagset } = r;
    let ci = doc.client_info;
    let mut extras: Vec<(String, String)> = ci.extra.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    extras.extend(doc.extras.iter().map(|(k, v)| (format!("extras.{k}"), v.to_string())));
    Ok(ResultPage {
        key: key.to_string(),
        package_url: format!("{base}/packages/{}", urlencode(&ci.package)),
        base,
        package: ci.package,
        tags: tagset.display_tags().join(" "),
        arch: ci.arch,
        host: ci.host,
        ok: ci.success,
        when: human_time(receipt.time),
        duration: human_duration(ci.duration),
        submitter: receipt.submitter.unwrap_or_else(|| "anonymous".into()),
        extras,
        mark,
        files,
        steps: doc
            .steps
            .into_iter()
            .map(|s| StepView {
                fold_output: long(&s.output),
                fold_errout: long(&s.errout),
                ok: s.status == 0,
                duration: human_duration(s.duration),
                name: s.name,
                step_type: s.step_type,
                command: s.command,
                status: s.status,
                output: s.output,
                errout: s.errout,
            })
            .collect(),
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "recorder/missing.html")]
struct MissingPage {
    base: String,
    cells: Vec<Cell>,
    after: String,
}

async fn missing_page(State(rec): State<Recorder>) -> Result<MissingPage, ApiError> {
    let base = rec.config().base_path.clone();
    let cells = rec.missing().await?.iter().map(|s| Cell::new(&base, s)).collect();
    Ok(MissingPage { after: human_duration(Some(rec.config().missing_after.as_secs_f64())), base, cells })
}

// ---- Atom ----

#[derive(Template)]
#[template(path = "recorder/feed.xml")]
struct Feed {
    title: String,
    self_url: String,
    id: String,
    updated: String,
    entries: Vec<Entry>,
}

struct Entry {
    title: String,
    url: String,
    updated: String,
    summary: String,
}

const FEED_LENGTH: u32 = 50;

async fn feed_all(State(rec): State<Recorder>, headers: HeaderMap) -> Result<Response, ApiError> {
    feed(&rec, &headers, "all results", "/feeds/all.atom", Filter::default()).await
}

async fn feed_failures(State(rec): State<Recorder>, headers: HeaderMap) -> Result<Response, ApiError> {
    feed(&rec, &headers, "failures", "/feeds/failures.atom", Filter { success: Some(false), ..Filter::default() }).await
}

async fn feed_package(State(rec): State<Recorder>, headers: HeaderMap, Path(package): Path<String>) -> Result<Response, ApiError> {
    let path = format!("/feeds/packages/{}", urlencode(&package));
    let title = format!("package {package}");
    feed(&rec, &headers, &title, &path, Filter { package: Some(package), ..Filter::default() }).await
}

async fn feed(rec: &Recorder, headers: &HeaderMap, title: &str, path: &str, filter: Filter) -> Result<Response, ApiError> {
    // Atom wants absolute links; build them from the Host the client used.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let root = format!("http://{host}{}", rec.config().base_path);
    let results = rec.search_marked(Filter { limit: FEED_LENGTH, ..filter }).await?;
    let entries: Vec<Entry> = results
        .iter()
        .map(|(s, m)| Entry {
            title: format!(
                "{} {} on {} ({}){}",
                s.package,
                match (s.success, m.flaky, m.after_pass) {
                    (true, _, _) => "succeeded",
                    (false, true, _) => "FAILED (flaky: passed on re-run)",
                    (false, false, true) => "FAILED (first failure after a pass)",
                    (false, false, false) => "FAILED",
                },
                s.host,
                s.arch,
                match s.tagset.display_tags().join(" ") {
                    t if t.is_empty() => String::new(),
                    t => format!(" [{t}]"),
                }
            ),
            url: format!("{root}/results/{}", s.key),
            updated: rfc3339(s.time),
            summary: format!("result {} at {}", s.key, human_time(s.time)),
        })
        .collect();
    let feed = Feed {
        title: format!("paddock recorder: {title}"),
        self_url: format!("{root}{path}"),
        id: format!("{root}{path}"),
        updated: results.first().map(|(s, _)| rfc3339(s.time)).unwrap_or_else(|| rfc3339(0.0)),
        entries,
    };
    match feed.render() {
        Ok(body) => Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/atom+xml; charset=utf-8"))], body).into_response()),
        Err(e) => {
            tracing::error!(error = %e, "rendering a feed");
            Ok((StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response())
        }
    }
}
