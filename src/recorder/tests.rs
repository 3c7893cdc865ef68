//! HTTP tests of the recorder router, through tower without a socket, on a SQLite file.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{Recorder, RecorderConfig, SubmitToken, nest_under, router};

struct Env {
    _dir: tempfile::TempDir,
    rec: Recorder,
    app: Router,
}

/// The submitter most tests post as.
const TOKEN: &str = "hunter2";

fn lab1() -> Vec<SubmitToken> {
    vec![SubmitToken { name: "lab1".into(), secret: TOKEN.into() }]
}

async fn env(mut config: RecorderConfig) -> Env {
    if config.tokens.is_empty() {
        config.tokens = lab1();
    }
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::open(&dir.path().join("recorder.db"), config).await.unwrap();
    let app = router(rec.clone());
    Env { _dir: dir, rec, app }
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn send(app: &Router, req: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let bytes = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    Reply { status, content_type, body: String::from_utf8_lossy(&bytes).into_owned() }
}

async fn get(app: &Router, uri: &str) -> Reply {
    send(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn post(app: &Router, uri: &str, body: impl Into<Body>, auth: Option<&str>) -> Reply {
    let mut b = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = auth {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    send(app, b.body(body.into()).unwrap()).await
}

/// XML-RPC over HTTP with a Content-Length, as every real client sends.
async fn xmlrpc(app: &Router, uri: &str, body: impl Into<Vec<u8>>) -> Reply {
    let body: Vec<u8> = body.into();
    let req = Request::post(uri)
        .header(header::CONTENT_TYPE, "text/xml")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap();
    send(app, req).await
}

fn result(host: &str, tags: &[&str], success: bool) -> Value {
    json!({
        "client_info": {"package": "widget", "arch": "x86_64", "host": host, "tags": tags,
                        "success": success, "duration": 12.5, "svn_rev": "r42"},
        "results": [
            {"name": "configure", "type": "setup", "command": ["./configure", "--fast"], "status": 0,
             "output": "checking...\nok\n", "errout": "", "duration": 1.0},
            {"name": "test", "type": "test", "command": "make check", "status": if success { 0 } else { 2 },
             "output": "line\n".repeat(100), "errout": if success { "" } else { "FAIL: t_widget" }, "duration": 11.5,
             "junit": {"passed": 3}}
        ],
        "extras": {"commit": "abc123"}
    })
}

fn xml_add_results(success_value: &str, status_value: &str) -> String {
    format!(
        "<?xml version='1.0'?><methodCall><methodName>add_results</methodName><params>\
         <param><value><struct>\
           <member><name>package</name><value><string>widget</string></value></member>\
           <member><name>arch</name><value><string>x86_64</string></value></member>\
           <member><name>host</name><value><string>xhost</string></value></member>\
           <member><name>tags</name><value><array><data><value><string>py3</string></value></data></array></value></member>\
           <member><name>success</name><value>{success_value}</value></member>\
         </struct></value></param>\
         <param><value><array><data><value><struct>\
           <member><name>name</name><value><string>build</string></value></member>\
           <member><name>status</name><value>{status_value}</value></member>\
           <member><name>output</name><value><string>ok</string></value></member>\
         </struct></value></data></array></value></param>\
         </params></methodCall>"
    )
}

fn is_fault(body: &str) -> bool {
    body.contains("<fault>")
}

#[tokio::test]
async fn rest_ingest_is_idempotent_and_queryable() {
    let e = env(RecorderConfig::default()).await;
    let mut body = result("alpha", &["py3"], true);
    body["idempotency_key"] = json!("run-7");
    let first = post(&e.app, "/api/v1/results", body.to_string(), Some(TOKEN)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let again = post(&e.app, "/api/v1/results", body.to_string(), Some(TOKEN)).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(first.json()["result_key"], again.json()["result_key"]);
    assert_eq!(e.rec.row_counts().await.unwrap(), [1, 2, 1, 1]);

    post(&e.app, "/api/v1/results", result("beta", &["py3"], false).to_string(), Some(TOKEN)).await;
    post(&e.app, "/api/v1/results", result("alpha", &["py3"], false).to_string(), Some(TOKEN)).await;
    post(&e.app, "/api/v1/results", result("alpha", &["py3"], true).to_string(), Some(TOKEN)).await;

    let key = first.json()["result_key"].as_str().unwrap().to_owned();
    let r = get(&e.app, &format!("/api/v1/results/{key}")).await.json();
    assert_eq!(r["steps"][0]["command"], "./configure --fast");
    assert_eq!(r["steps"][1]["junit"]["passed"], 3, "extra step keys are kept");
    assert_eq!(r["client_info"]["svn_rev"], "r42", "extra client_info keys are kept");
    assert_eq!(r["extras"]["commit"], "abc123");
    assert_eq!(r["tagset"], json!(["__arch=x86_64", "__host=alpha", "__package=widget", "py3"]));

    let pkgs = get(&e.app, "/api/v1/packages").await.json();
    assert_eq!(pkgs, json!([{"package": "widget", "platforms": 2, "failing": 1, "latest_at": pkgs[0]["latest_at"]}]));

    let ts = get(&e.app, "/api/v1/packages/widget/tagsets").await.json();
    assert_eq!(ts["tagsets"][0]["host"], "beta", "the failing platform comes first");
    assert_eq!(ts["tagsets"][1]["host"], "alpha");
    assert_eq!(ts["tagsets"][1]["success"], true, "latest of alpha is the newest one");

    let id = ts["tagsets"][1]["tagset_id"].as_i64().unwrap();
    let h = get(&e.app, &format!("/api/v1/tagsets/{id}/history?limit=10")).await.json();
    assert_eq!(h["summary"], "2 of last 3 passed");
    assert_eq!((h["passed"].as_u64(), h["total"].as_u64(), h["flaky"].as_u64()), (Some(2), Some(3), Some(1)));
    // alpha passed (1), failed (3), passed again (4): the failure passed on re-run.
    let marks: Vec<_> = h["results"].as_array().unwrap().iter().map(|r| (r["key"].as_str().unwrap(), r["flaky"] == true)).collect();
    assert_eq!(marks, [("4", false), ("3", true), ("1", false)]);
    assert_eq!(h["last_pass"]["key"], "4");
    assert!(h["first_failure"].is_null(), "a platform that passes now has no open regression");
    assert_eq!(ts["tagsets"][1]["history"]["summary"], "2 of last 3 passed");
    assert_eq!(get(&e.app, "/api/v1/results/3").await.json()["flaky"], true);
    assert_eq!(get(&e.app, "/api/v1/results/2").await.json()["flaky"], false, "beta's failure never passed since");

    let failed = get(&e.app, "/api/v1/results?success=false").await.json();
    assert_eq!(failed["results"].as_array().unwrap().len(), 2);
    let by_host = get(&e.app, "/api/v1/results?host=alpha&tag=py3&arch=x86_64").await.json();
    assert_eq!(by_host["results"].as_array().unwrap().len(), 3);
    assert!(get(&e.app, "/api/v1/results?tag=nope").await.json()["results"].as_array().unwrap().is_empty());
    let since_future = get(&e.app, "/api/v1/results?since=2999-01-01T00:00:00Z").await.json();
    assert!(since_future["results"].as_array().unwrap().is_empty());
    assert_eq!(get(&e.app, "/api/v1/results?until=1000").await.json()["results"], json!([]));

    // Pagination walks every result exactly once, newest first.
    let mut seen = Vec::new();
    let mut uri = "/api/v1/results?limit=3".to_owned();
    loop {
        let page = get(&e.app, &uri).await.json();
        seen.extend(page["results"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap().to_owned()));
        match page["next_before"].as_str() {
            Some(b) => uri = format!("/api/v1/results?limit=3&before={b}"),
            None => break,
        }
    }
    assert_eq!(seen, ["4", "3", "2", "1"]);
    assert_eq!(get(&e.app, "/api/v1/results/999").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&e.app, "/api/v1/results?since=yesterday").await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn private_reads_need_a_token_on_every_protocol() {
    let config = RecorderConfig {
        tokens: vec![SubmitToken { name: "lab1".into(), secret: "hunter2".into() }],
        private_reads: true,
        ..RecorderConfig::default()
    };
    let e = env(config).await;
    let ok = post(&e.app, "/api/v1/results", result("alpha", &[], true).to_string(), Some("hunter2")).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    let anon_build = post(&e.app, "/api/v1/build-requests", r#"{"client_info": {}}"#, None).await;
    assert_eq!(anon_build.status, StatusCode::UNAUTHORIZED);
    for uri in ["/api/v1/packages", "/", "/packages/widget", "/feeds/all.atom", "/api/v1/results/1"] {
        assert_eq!(get(&e.app, uri).await.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(get(&e.app, &format!("{uri}?token=nope")).await.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(get(&e.app, &format!("{uri}?token=hunter2")).await.status, StatusCode::OK, "{uri}");
    }
    let with_bearer =
        send(&e.app, Request::get("/api/v1/packages").header(header::AUTHORIZATION, "Bearer hunter2").body(Body::empty()).unwrap()).await;
    assert_eq!(with_bearer.status, StatusCode::OK);
    let call = "<?xml version='1.0'?><methodCall><methodName>get_results</methodName><params><param><value><string>1</string></value></param></params></methodCall>";
    assert_eq!(xmlrpc(&e.app, "/xmlrpc", call).await.status, StatusCode::UNAUTHORIZED);
    let good = xmlrpc(&e.app, "/xmlrpc/hunter2", call).await;
    assert!(!is_fault(&good.body) && good.body.contains("alpha"), "{}", good.body);
}

#[tokio::test]
async fn another_submitters_key_never_touches_a_result() {
    let config = RecorderConfig {
        tokens: vec![
            SubmitToken { name: "lab1".into(), secret: TOKEN.into() },
            SubmitToken { name: "mallory".into(), secret: "forger".into() },
        ],
        ..RecorderConfig::default()
    };
    let e = env(config).await;
    let mut real = result("alpha", &["py3"], false);
    real["idempotency_key"] = json!("run-7");
    let mut forged = result("alpha", &["py3"], true);
    forged["idempotency_key"] = json!("run-7");
    // The forger comes first, with the key the real submitter is about to use.
    let f = post(&e.app, "/api/v1/results", forged.to_string(), Some("forger")).await;
    assert_eq!(f.status, StatusCode::CREATED, "{}", f.body);
    let r = post(&e.app, "/api/v1/results", real.to_string(), Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::CREATED, "the real result is stored, not swallowed: {}", r.body);
    assert_ne!(f.json()["result_key"], r.json()["result_key"]);
    let stored = get(&e.app, &format!("/api/v1/results/{}", r.json()["result_key"].as_str().unwrap())).await.json();
    assert_eq!((stored["submitter"].as_str(), stored["client_info"]["success"].as_bool()), (Some("lab1"), Some(false)));
    // The Idempotency-Key header scopes the same way (another paddock's forwarder sends it).
    let again = send(
        &e.app,
        Request::post("/api/v1/results")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header("Idempotency-Key", "run-8")
            .body(Body::from(result("beta", &[], true).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(again.status, StatusCode::CREATED);
    let twice = send(
        &e.app,
        Request::post("/api/v1/results")
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header("Idempotency-Key", "run-8")
            .body(Body::from(result("beta", &[], false).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!((twice.status, twice.json()["result_key"].clone()), (StatusCode::OK, again.json()["result_key"].clone()));
    assert_eq!(e.rec.row_counts().await.unwrap()[0], 3);
}

#[tokio::test]
async fn only_json_and_xml_bodies_are_read() {
    let e = env(RecorderConfig::default()).await;
    let body = result("alpha", &[], true).to_string();
    for ct in ["text/plain", "application/x-www-form-urlencoded", "application/jsonx", ""] {
        let mut b = Request::post("/api/v1/results").header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        if !ct.is_empty() {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        let r = send(&e.app, b.body(Body::from(body.clone())).unwrap()).await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct}: {}", r.body);
        assert!(r.body.contains("application/json"), "{}", r.body);
    }
    let call = xml_add_results("<boolean>1</boolean>", "<int>0</int>");
    let r = send(
        &e.app,
        Request::post(format!("/xmlrpc/{TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, call.len())
            .body(Body::from(call))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.body);
    assert!(is_fault(&r.body) && r.body.contains("text/xml"), "{}", r.body);
    assert_eq!(e.rec.row_counts().await.unwrap(), [0, 0, 0, 0]);
}

#[tokio::test]
async fn tokens_guard_submission_but_not_reads() {
    let e = env(RecorderConfig::default()).await;
    let body = result("alpha", &[], true).to_string();
    assert_eq!(post(&e.app, "/api/v1/results", body.clone(), None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(post(&e.app, "/api/v1/results", body.clone(), Some("hunter3")).await.status, StatusCode::UNAUTHORIZED);
    let ok = post(&e.app, "/api/v1/results", body, Some("hunter2")).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    let key = ok.json()["result_key"].as_str().unwrap().to_owned();
    assert_eq!(get(&e.app, &format!("/api/v1/results/{key}")).await.json()["submitter"], "lab1");

    let anon = xmlrpc(&e.app, "/xmlrpc", xml_add_results("<boolean>1</boolean>", "<int>0</int>")).await;
    assert!(anon.body.contains("<i4>401</i4>"), "{}", anon.body);
    let wrong = xmlrpc(&e.app, "/xmlrpc/nope", xml_add_results("<boolean>1</boolean>", "<int>0</int>")).await;
    assert!(is_fault(&wrong.body));
    let good = xmlrpc(&e.app, "/xmlrpc/hunter2", xml_add_results("<boolean>1</boolean>", "<int>0</int>")).await;
    assert!(!is_fault(&good.body), "{}", good.body);
    assert_eq!(e.rec.row_counts().await.unwrap()[0], 2);
    // Reads stay public on both protocols.
    let read = xmlrpc(
        &e.app,
        "/xmlrpc",
        "<?xml version='1.0'?><methodCall><methodName>get_results</methodName><params><param><value><string>1</string></value></param></params></methodCall>",
    )
    .await;
    assert!(!is_fault(&read.body) && read.body.contains("alpha"), "{}", read.body);
    assert_eq!(get(&e.app, "/api/v1/packages").await.status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_input_is_refused_and_stores_nothing() {
    let config = RecorderConfig { body_limit: 1024 * 1024, ..RecorderConfig::default() };
    let e = env(config).await;
    // One good result first, so "unchanged" is measured against a non-empty database.
    assert_eq!(post(&e.app, "/api/v1/results", result("seed", &[], true).to_string(), Some(TOKEN)).await.status, StatusCode::CREATED);
    let before = e.rec.row_counts().await.unwrap();

    let good_xml = xml_add_results("<boolean>1</boolean>", "<int>0</int>");
    let bomb = "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>\
                <!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;'>]>\
                <methodCall><methodName>add_results</methodName><params><param><value><string>&lol3;</string></value></param></params></methodCall>";
    let mut bad_utf8_xml = good_xml.clone().into_bytes();
    let at = bad_utf8_xml.windows(5).position(|w| w == b"xhost").unwrap();
    bad_utf8_xml[at] = 0xff;
    let mut bad_utf8_json = result("u", &[], true).to_string().into_bytes();
    bad_utf8_json.splice(20..20, [0xc3, 0x28]);
    let huge_json = format!("{{\"client_info\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let huge_xml = format!("<?xml version='1.0'?><methodCall><methodName>{}</methodName></methodCall>", "x".repeat(2 * 1024 * 1024));
    let mut wrong_step = result("w", &[], true);
    wrong_step["results"][1]["status"] = json!("two");
    let mut wrong_tags = result("w", &[], true);
    wrong_tags["client_info"]["tags"] = json!("py3");
    let mut missing_host = result("w", &[], true);
    missing_host["client_info"].as_object_mut().unwrap().remove("host");

    enum Proto {
        Json,
        Xml,
    }
    // (what, protocol, body, expected HTTP status, expected fault text)
    let cases: Vec<(&str, Proto, Vec<u8>, StatusCode, &str)> = vec![
        ("truncated XML", Proto::Xml, good_xml.as_bytes()[..good_xml.len() / 2].to_vec(), StatusCode::BAD_REQUEST, "malformed"),
        ("entity bomb", Proto::Xml, bomb.as_bytes().to_vec(), StatusCode::BAD_REQUEST, "DOCTYPE"),
        ("bad UTF-8 XML", Proto::Xml, bad_utf8_xml, StatusCode::BAD_REQUEST, "UTF-8"),
        ("huge XML", Proto::Xml, huge_xml.into_bytes(), StatusCode::PAYLOAD_TOO_LARGE, ""),
        ("success is a string", Proto::Xml, xml_add_results("<string>yes</string>", "<int>0</int>").into_bytes(), StatusCode::OK, "client_info.success: expected boolean, got string"),
        ("status is a string", Proto::Xml, xml_add_results("<boolean>0</boolean>", "<string>0</string>").into_bytes(), StatusCode::OK, "results[0].status: expected integer, got string"),
        ("results not an array", Proto::Xml, good_xml.replace("<array><data><value><struct><member><name>name", "<struct><member><name>name").into_bytes(), StatusCode::BAD_REQUEST, "malformed"),
        ("too few params", Proto::Xml, b"<?xml version='1.0'?><methodCall><methodName>add_results</methodName><params><param><value><struct></struct></value></param></params></methodCall>".to_vec(), StatusCode::OK, "called with 1 parameter"),
        ("unknown method", Proto::Xml, b"<?xml version='1.0'?><methodCall><methodName>drop_tables</methodName><params></params></methodCall>".to_vec(), StatusCode::OK, "unknown method"),
        ("not XML at all", Proto::Xml, b"hello".to_vec(), StatusCode::BAD_REQUEST, "malformed"),
        ("malformed JSON", Proto::Json, b"{\"client_info\": {".to_vec(), StatusCode::BAD_REQUEST, "malformed JSON"),
        ("bad UTF-8 JSON", Proto::Json, bad_utf8_json, StatusCode::BAD_REQUEST, "UTF-8"),
        ("huge JSON", Proto::Json, huge_json.into_bytes(), StatusCode::PAYLOAD_TOO_LARGE, ""),
        ("JSON array", Proto::Json, b"[]".to_vec(), StatusCode::BAD_REQUEST, "JSON object"),
        ("wrong step status type", Proto::Json, wrong_step.to_string().into_bytes(), StatusCode::BAD_REQUEST, "results[1].status: expected integer, got string"),
        ("tags not a list", Proto::Json, wrong_tags.to_string().into_bytes(), StatusCode::BAD_REQUEST, "client_info.tags: expected array, got string"),
        ("missing host", Proto::Json, missing_host.to_string().into_bytes(), StatusCode::BAD_REQUEST, "client_info.host: missing"),
        ("missing results", Proto::Json, br#"{"client_info": {}}"#.to_vec(), StatusCode::BAD_REQUEST, "results: missing"),
    ];
    for (what, proto, body, status, text) in cases {
        let reply = match proto {
            Proto::Xml => {
                let r = xmlrpc(&e.app, "/xmlrpc/hunter2", body).await;
                assert!(is_fault(&r.body), "{what}: XML-RPC callers get a fault, got {}", r.body);
                assert!(r.content_type.starts_with("text/xml"), "{what}");
                r
            }
            Proto::Json => post(&e.app, "/api/v1/results", body, Some(TOKEN)).await,
        };
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        assert!(reply.body.contains(text), "{what}: {text:?} not in {}", reply.body);
        assert_eq!(e.rec.row_counts().await.unwrap(), before, "{what} stored something");
    }
    // The good call still works afterwards, and adds exactly one result.
    let ok = xmlrpc(&e.app, "/xmlrpc/hunter2", good_xml).await;
    assert!(!is_fault(&ok.body), "{}", ok.body);
    assert_eq!(e.rec.row_counts().await.unwrap()[0], before[0] + 1);
}

#[tokio::test]
async fn pages_and_feeds_render() {
    let config = RecorderConfig { missing_after: Duration::ZERO, ..RecorderConfig::default() };
    let e = env(config).await;
    post(&e.app, "/api/v1/results", result("alpha", &["py3"], true).to_string(), Some(TOKEN)).await;
    post(&e.app, "/api/v1/results", result("beta", &["py3"], false).to_string(), Some(TOKEN)).await;
    post(&e.app, "/api/v1/results", result("gamma", &[], true).to_string(), Some(TOKEN)).await;

    let index = get(&e.app, "/").await;
    assert!(index.content_type.starts_with("text/html"));
    assert!(index.body.contains(r#"href="/packages/widget""#) && index.body.contains("1 failing"), "{}", index.body);

    let page = get(&e.app, "/packages/widget").await.body;
    let order: Vec<usize> = ["data-host=\"beta\"", "data-host=\"gamma\"", "data-host=\"alpha\""]
        .iter()
        .map(|h| page.find(h).unwrap_or_else(|| panic!("{h} missing")))
        .collect();
    assert!(order.is_sorted(), "failures first, then newest first: {order:?}");
    assert!(page.contains(r#"href="/results/2""#));

    let res = get(&e.app, "/results/2").await.body;
    assert!(res.contains("make check") && res.contains("FAIL: t_widget") && res.contains("FAILED"));
    assert!(res.contains("<details><summary>output (500 bytes)"), "100 lines of output are folded");
    assert!(res.contains("<pre>checking...\nok\n</pre>"), "short output is shown inline");
    assert_eq!(get(&e.app, "/results/77").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&e.app, "/packages/nothing").await.status, StatusCode::NOT_FOUND);

    let missing = get(&e.app, "/missing").await.body;
    assert!(missing.contains("alpha") && missing.contains("gamma"), "with a zero age every platform is silent");

    let all = get(&e.app, "/feeds/all.atom").await;
    assert!(all.content_type.starts_with("application/atom+xml"));
    assert_eq!(all.body.matches("<entry>").count(), 3);
    let failures = get(&e.app, "/feeds/failures.atom").await.body;
    assert_eq!(failures.matches("<entry>").count(), 1);
    assert!(failures.contains("widget FAILED on beta"));

    // A platform that passed three times and then failed: the failure is the likely regression,
    // on the page, in the API and in the failures feed.
    for ok in [true, true, false] {
        post(&e.app, "/api/v1/results", result("gamma", &[], ok).to_string(), Some(TOKEN)).await;
    }
    let page = get(&e.app, "/packages/widget").await.body;
    let gamma = &page[page.find("data-host=\"gamma\"").unwrap()..];
    let gamma = &gamma[..gamma.find("</li>").unwrap()];
    assert!(gamma.contains("3 of last 4 passed"), "{gamma}");
    assert!(gamma.contains(r#"first failure: <a href="/results/6">result 6</a>"#), "{gamma}");
    assert!(gamma.contains(r#"last pass: <a href="/results/5">result 5</a>"#), "{gamma}");
    let failures = get(&e.app, "/feeds/failures.atom").await.body;
    assert!(failures.contains("widget FAILED (first failure after a pass) on gamma"), "{failures}");
    let ts = get(&e.app, "/api/v1/packages/widget/tagsets").await.json();
    let g = ts["tagsets"].as_array().unwrap().iter().find(|t| t["host"] == "gamma").unwrap().clone();
    assert_eq!((g["history"]["summary"].as_str(), g["history"]["first_failure"]["key"].as_str()), (Some("3 of last 4 passed"), Some("6")));
    assert_eq!(g["after_pass"], true);

    // The sheet is the dashboard's, plus the recorder's own rules.
    let css = get(&e.app, "/static/style.css").await;
    assert!(css.content_type.starts_with("text/css"));
    assert!(css.body.contains("header.top") && css.body.contains(".runs i.flaky"));
    assert!(page.contains(r#"<link rel="stylesheet" href="/static/style.css">"#));
    assert_eq!(get(&e.app, "/feeds/packages/widget").await.body.matches("<entry>").count(), 6);
}

#[tokio::test]
async fn nested_recorder_answers_with_and_without_the_slash() {
    let e = env(RecorderConfig { base_path: "/recorder".into(), ..RecorderConfig::default() }).await;
    let app = nest_under("/recorder", e.rec.clone());
    post(&app, "/recorder/api/v1/results", result("alpha", &[], true).to_string(), Some(TOKEN)).await;
    let bare = get(&app, "/recorder").await;
    assert_eq!(bare.status, StatusCode::OK);
    assert!(bare.body.contains(r#"href="/recorder/packages/widget""#), "{}", bare.body);
    let resp = app.clone().oneshot(Request::get("/recorder/").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(resp.headers()[header::LOCATION], "/recorder");
    assert_eq!(get(&app, "/recorder/static/style.css").await.status, StatusCode::OK);
    assert_eq!(get(&app, "/recorder/packages/widget").await.status, StatusCode::OK);
}

async fn upload(app: &Router, query: &str, body: &'static [u8]) -> Reply {
    send(app, Request::post(format!("/upload?{query}")).body(Body::from(body)).unwrap()).await
}

#[tokio::test]
async fn uploads_need_the_results_auth_key_and_stay_within_their_caps() {
    let config = RecorderConfig { file_limit: 10, result_files_limit: 15, private_reads: true, ..RecorderConfig::default() };
    let e = env(config).await;
    let sent = post(&e.app, "/api/v1/results", result("alpha", &[], true).to_string(), Some(TOKEN)).await.json();
    let (key, auth) = (sent["result_key"].as_str().unwrap().to_owned(), sent["auth_key"].as_str().unwrap().to_owned());
    let q = |name: &str| format!("auth_key={auth}&filename={name}&description=d&visible=yes");
    let before = e.rec.row_counts().await.unwrap();

    // With private reads on, the auth_key alone lets an upload in (pony-build's client sends
    // nothing else); a wrong one, or none, does not.
    assert_eq!(upload(&e.app, &q("a.txt"), b"0123456789").await.status, StatusCode::OK);
    assert_eq!(upload(&e.app, "auth_key=nope&filename=b.txt&description=d", b"x").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(upload(&e.app, "filename=b.txt&description=d", b"x").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(upload(&e.app, &q("big.bin"), b"01234567890").await.status, StatusCode::PAYLOAD_TOO_LARGE, "over the per-file cap");
    assert_eq!(upload(&e.app, &q("b.txt"), b"012345").await.status, StatusCode::PAYLOAD_TOO_LARGE, "over the per-result cap");
    assert_eq!(upload(&e.app, &q("b.txt"), b"01234").await.status, StatusCode::OK, "exactly at the per-result cap");
    assert_eq!(upload(&e.app, &q("a.txt"), b"0123456789").await.json()["created"], false, "the same file again");
    assert_eq!(upload(&e.app, &q("a.txt"), b"x").await.status, StatusCode::CONFLICT);
    for bad in ["..", "a%2Fb", "a%0Ab", ""] {
        assert_eq!(upload(&e.app, &q(bad), b"x").await.status, StatusCode::BAD_REQUEST, "{bad:?}");
    }
    assert_eq!(e.rec.row_counts().await.unwrap(), before, "files never touch results, steps or tags");

    // Reads of files are reads: they need a credential like every other one here.
    let path = format!("/results/{key}/files/a.txt");
    assert_eq!(get(&e.app, &path).await.status, StatusCode::UNAUTHORIZED);
    let resp = e
        .app
        .clone()
        .oneshot(Request::get(&path).header(header::AUTHORIZATION, format!("Bearer {TOKEN}")).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    assert_eq!(h[header::CONTENT_TYPE], "application/octet-stream", "a build's file is never served as a page");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(h[header::CONTENT_DISPOSITION], "attachment; filename=\"a.txt\"");
    assert_eq!(to_bytes(resp.into_body(), usize::MAX).await.unwrap(), &b"0123456789"[..]);
}

#[tokio::test]
async fn an_auth_key_stops_accepting_uploads_after_the_window() {
    let e = env(RecorderConfig { upload_window: Duration::ZERO, ..RecorderConfig::default() }).await;
    let sent = post(&e.app, "/api/v1/results", result("alpha", &[], true).to_string(), Some(TOKEN)).await.json();
    let q = format!("auth_key={}&filename=late.txt&description=d", sent["auth_key"].as_str().unwrap());
    assert_eq!(upload(&e.app, &q, b"x").await.status, StatusCode::UNAUTHORIZED);
}

/// Under a paused clock: each platform's newest two results stay; older passes go after 10
/// days, older failures after 30; a lone old platform keeps its only result; files go with
/// their result. Exactly those results are removed, and `/metrics` counts them.
#[tokio::test(start_paused = true)]
async fn retention_removes_exactly_what_the_policy_says() {
    const DAY: Duration = Duration::from_secs(86_400);
    let retention =
        super::Retention { keep_last: 2, max_age: Some(10 * DAY), failure_max_age: Some(30 * DAY), every: Duration::from_secs(3600) };
    let clock = crate::clock::Clock::starting_at(chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().into());
    let e = env(RecorderConfig { retention: Some(retention), clock, upload_window: 400 * DAY, ..RecorderConfig::default() }).await;
    let metrics = crate::metrics::install();
    let removed_before = |text: &str, what: &str| -> u64 {
        let line = format!("paddock_recorder_retention_removed_total{{what=\"{what}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(line.as_str())).map_or(0, |v| v.trim().parse().unwrap())
    };
    let at_start = metrics.render();

    let mut keys = Vec::new();
    // (day received, passed): ages at day 50 are 50, 40, 20, 15, 5 and 1 days.
    let mut day = 0;
    for (when, ok) in [(0, false), (10, true), (30, false), (35, true), (45, true), (49, true)] {
        tokio::time::advance((when - day) * DAY).await;
        day = when;
        if when == 0 {
            post(&e.app, "/api/v1/results", result("lonely", &[], true).to_string(), Some(TOKEN)).await;
        }
        let sent = post(&e.app, "/api/v1/results", result("busy", &[], ok).to_string(), Some(TOKEN)).await.json();
        keys.push((sent["result_key"].as_str().unwrap().to_owned(), sent["auth_key"].as_str().unwrap().to_owned()));
    }
    let q = format!("auth_key={}&filename=old.log&description=d&visible=yes", keys[1].1);
    assert_eq!(upload(&e.app, &q, b"0123456789").await.status, StatusCode::OK);
    tokio::time::advance(DAY).await;
    assert_eq!(e.rec.row_counts().await.unwrap()[0], 7);

    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = e.rec.spawn_retention(stop_rx).expect("a policy spawns the pass");
    let mut left = 0;
    for _ in 0..1000 {
        tokio::time::sleep(Duration::from_secs(60)).await;
        left = e.rec.row_counts().await.unwrap()[0];
        if left == 4 {
            break;
        }
    }
    assert_eq!(left, 4);
    let alive = |k: &str| {
        let k = k.to_owned();
        let rec = e.rec.clone();
        async move { rec.get(k.parse().unwrap()).await.unwrap().is_some() }
    };
    let mut kept = Vec::new();
    for (k, _) in &keys {
        kept.push(alive(k).await);
    }
    // busy: failure at 50 days (past 30) gone, pass at 40 gone, failure at 20 kept, pass at 15
    // gone, the newest two kept.
    assert_eq!(kept, [false, false, true, false, true, true]);
    assert!(alive("1").await, "the lonely platform keeps its only (50-day-old) result");
    assert!(e.rec.files(keys[1].0.parse().unwrap()).await.unwrap().is_empty());
    let counts = e.rec.row_counts().await.unwrap();
    assert_eq!(counts, [4, 8, 0, 2], "steps of removed results went with them; every platform stays");

    let text = metrics.render();
    assert_eq!(removed_before(&text, "results") - removed_before(&at_start, "results"), 3);
    assert_eq!(removed_before(&text, "files") - removed_before(&at_start, "files"), 1);
    assert_eq!(removed_before(&text, "file_bytes") - removed_before(&at_start, "file_bytes"), 10);
    task.abort();
}

fn doc_of(v: &Value) -> super::ResultDoc {
    super::ResultDoc::from_json(v["client_info"].clone(), v["results"].clone(), None).unwrap()
}

/// Submissions that arrive together are committed together: every caller is answered with its
/// own key once its result is stored, and one idempotency key sent twice at once stores once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_are_each_answered_once_stored() {
    let e = env(RecorderConfig::default()).await;
    let sends: Vec<_> = (0..40)
        .map(|i| {
            let rec = e.rec.clone();
            let key = (i >= 38).then(|| "same-key".to_owned());
            tokio::spawn(async move { rec.ingest(doc_of(&result(&format!("h{}", i % 4), &["t"], i % 3 != 0)), key).await.unwrap() })
        })
        .collect();
    let mut keys = Vec::new();
    for s in sends {
        keys.push(s.await.unwrap());
    }
    assert_eq!(keys[38], keys[39], "one key, one result");
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 39);
    for k in &distinct {
        assert!(e.rec.get(*k).await.unwrap().is_some(), "result {k} was answered before it was stored");
    }
    assert_eq!(e.rec.row_counts().await.unwrap(), [39, 78, 39, 4]);
}

/// A group whose transaction fails is stored again one result at a time: only the failing
/// submission fails, the others of its group are stored.
#[test]
fn a_group_commit_answers_each_submission_and_isolates_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = rusqlite::Connection::open(dir.path().join("r.db")).unwrap();
    super::store::migrations().to_latest(&mut conn).unwrap();
    // Stands in for any per-result failure (a full disk would fail the whole group alike).
    conn.execute_batch(
        "CREATE TRIGGER poison BEFORE INSERT ON results WHEN NEW.package = 'poison'
         BEGIN SELECT RAISE(ABORT, 'poisoned result'); END;",
    )
    .unwrap();
    let mut bad = result("h", &[], true);
    bad["client_info"]["package"] = json!("poison");
    let item = |v: &Value, n: usize| (doc_of(v), None, super::Origin::default(), format!("auth{n}"), n as f64);
    let items = [item(&result("h", &[], true), 1), item(&bad, 2), item(&result("h", &[], false), 3)];
    let out = super::store_group(&mut conn, &items);
    assert!(out[0].is_ok() && out[2].is_ok(), "{out:?}");
    assert!(out[1].as_ref().unwrap_err().to_string().contains("poisoned result"), "{out:?}");
    assert_eq!(super::store::row_counts(&conn).unwrap(), [2, 4, 0, 1]);
    let all_good = [item(&result("h", &[], true), 4), item(&result("h", &[], true), 5)];
    assert!(super::store_group(&mut conn, &all_good).iter().all(Result::is_ok));
    assert_eq!(super::store::row_counts(&conn).unwrap()[0], 4);
}

/// The writer's commits only append to the WAL (`wal_autocheckpoint` is off there); the checkpoint
/// task copies it into the database file on its own connection once it passes START_AT frames.
#[tokio::test]
async fn the_checkpoint_task_copies_the_wal_beside_the_writer() {
    let e = env(RecorderConfig::default()).await;
    let auto: i64 = e.rec.write("test", |c| c.pragma_query_value(None, "wal_autocheckpoint", |r| r.get(0))).await.unwrap();
    assert_eq!(auto, 0);
    let mut big = result("h", &[], true);
    big["results"][1]["output"] = json!("x".repeat(3 << 20));
    for _ in 0..2 {
        e.rec.ingest(doc_of(&big), None).await.unwrap();
    }
    let probe = rusqlite::Connection::open(e._dir.path().join("recorder.db")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (log, copied) = super::checkpoint::status(&probe, "NOOP").unwrap();
        if log >= super::checkpoint::START_AT && copied == log {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the WAL was never copied: {copied} of {log} frames");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Rows read back from the database file are the ones submitted.
    assert_eq!(e.rec.row_counts().await.unwrap(), [2, 4, 0, 1]);
}

/// Senders that never pause keep the writer committing while a checkpoint runs, so the WAL is
/// never fully copied when a transaction starts and would never start over (this test saw a
/// 72 MB WAL without `checkpoint::bound`): past RESTART_AT frames the writer rewinds it, which
/// keeps the WAL file bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_continuous_ingest() {
    let e = env(RecorderConfig::default()).await;
    let mut big = result("h", &[], true);
    big["results"][1]["output"] = json!("x".repeat(1 << 20));
    let doc = doc_of(&big);
    // 4 senders x 40 results of ~1 MiB: ~160 MiB, ten times RESTART_AT's 16 MiB.
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (rec, doc) = (e.rec.clone(), doc.clone());
            tokio::spawn(async move {
                for _ in 0..40 {
                    rec.ingest(doc.clone(), None).await.unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let wal = std::fs::metadata(e._dir.path().join("recorder.db-wal")).unwrap().len();
    let limit = 3 * super::checkpoint::RESTART_AT as u64 * 4096;
    assert!(wal <= limit, "WAL file {wal} bytes, more than {limit}");
    assert_eq!(e.rec.row_counts().await.unwrap()[0], 160);
}
