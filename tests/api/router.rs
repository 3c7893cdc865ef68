//! HTTP tests through the router (tower `oneshot`, no socket) over a store file.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use paddock::api::{HostStatus, Shared};
use serde_json::Value;
use tokio_stream::StreamExt;
use tower::ServiceExt;

use crate::common::lab;
use crate::support::wait_for;

async fn call(state: &Shared, method: Method, uri: &str, token: Option<&str>, body: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = paddock::api::router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

pub(crate) async fn json(state: &Shared, method: Method, uri: &str, token: Option<&str>, body: Option<&str>) -> (StatusCode, Value) {
    let (s, b) = call(state, method, uri, token, body).await;
    (s, serde_json::from_str(&b).unwrap_or_else(|e| panic!("{uri}: not JSON ({e}): {b}")))
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str, detail_has: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"], code, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains(detail_has), "detail `{detail}` lacks `{detail_has}`");
}

#[tokio::test]
async fn auth_matrix_per_role() {
    let l = lab(false).await;
    let s = &l.state;
    // Reads: no token or a bad one is 401; every role reads.
    let (st, b) = json(s, Method::GET, "/api/v1/runs", None, None).await;
    assert_error(st, &b, StatusCode::UNAUTHORIZED, "unauthenticated", "token");
    let (st, b) = json(s, Method::GET, "/api/v1/runs", Some("pdk_nope_nope"), None).await;
    assert_error(st, &b, StatusCode::UNAUTHORIZED, "unauthenticated", "unknown or revoked");
    for t in [&l.bob, &l.alice, &l.admin] {
        assert_eq!(call(s, Method::GET, "/api/v1/runs", Some(t), None).await.0, StatusCode::OK);
    }
    // Trigger: viewer refused with the reason; maintainer only for their own job; admin anything.
    let demo = Some(r#"{"job":"demo"}"#);
    let nightly = Some(r#"{"job":"nightly","image":"deb-aarch64"}"#);
    let (st, b) = json(s, Method::POST, "/api/v1/runs", None, demo).await;
    assert_error(st, &b, StatusCode::UNAUTHORIZED, "unauthenticated", "token");
    let (st, b) = json(s, Method::POST, "/api/v1/runs", Some(&l.bob), demo).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "forbidden", "`bob` is a viewer");
    let (st, b) = json(s, Method::POST, "/api/v1/runs", Some(&l.alice), nightly).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "forbidden", "`alice` does not maintain job `nightly` (its maintainers: carol)");
    let (st, b) = json(s, Method::POST, "/api/v1/runs", Some(&l.alice), demo).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    assert_eq!(b["runs"].as_array().unwrap().len(), 1);
    let (st, b) = json(s, Method::POST, "/api/v1/runs", Some(&l.admin), nightly).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    // Cancel and re-run follow the same rule.
    let (st, b) = json(s, Method::POST, &format!("/api/v1/runs/{}/cancel", l.held), Some(&l.alice), None).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "forbidden", "does not maintain job `nightly`");
    let (st, b) = json(s, Method::POST, &format!("/api/v1/runs/{}/rerun", l.failed), Some(&l.bob), None).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "forbidden", "viewer");
    // A revoked token stops working at once.
    let id = l.bob.split('_').nth(1).unwrap();
    assert!(l.store.revoke_token(id).await.unwrap());
    assert_eq!(call(s, Method::GET, "/api/v1/runs", Some(&l.bob), None).await.0, StatusCode::UNAUTHORIZED);
    // Every mutating call, allowed or refused, is in the audit trail.
    let (_, audit) = json(s, Method::GET, "/api/v1/audit", Some(&l.admin), None).await;
    let entries: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {} {} {}",
                a["actor"].as_str().unwrap(),
                a["action"].as_str().unwrap(),
                a["subject"].as_str().unwrap(),
                a["detail"].as_str().unwrap()
            )
        })
        .collect();
    // Six calls had a caller; the one without a token has nobody to name.
    assert_eq!(entries.len(), 6, "{entries:#?}");
    assert!(entries.iter().any(|e| e.starts_with("bob run.trigger demo refused: `bob` is a viewer")), "{entries:#?}");
    assert!(entries.iter().any(|e| e.starts_with("alice run.trigger demo started ")), "{entries:#?}");
    assert!(entries.iter().any(|e| e.starts_with("root run.trigger nightly/deb-aarch64 started ")), "{entries:#?}");
}

#[tokio::test]
async fn public_reads_open_reads_but_not_writes() {
    let l = lab(true).await;
    let s = &l.state;
    assert_eq!(call(s, Method::GET, "/api/v1/runs", None, None).await.0, StatusCode::OK);
    assert_eq!(call(s, Method::GET, "/metrics", None, None).await.0, StatusCode::OK);
    // A token that is sent must still be good.
    assert_eq!(call(s, Method::GET, "/api/v1/runs", Some("pdk_x_y"), None).await.0, StatusCode::UNAUTHORIZED);
    let (st, b) = json(s, Method::POST, "/api/v1/runs", None, Some(r#"{"job":"demo"}"#)).await;
    assert_error(st, &b, StatusCode::UNAUTHORIZED, "unauthenticated", "token");
}

#[tokio::test]
async fn bad_input_is_a_4xx_with_the_reason() {
    let l = lab(false).await;
    let (s, t) = (&l.state, Some(l.admin.as_str()));
    let cases: &[(Method, &str, Option<&str>, StatusCode, &str)] = &[
        (Method::POST, "/api/v1/runs", Some("{\"job\": "), StatusCode::BAD_REQUEST, "EOF"),
        (Method::POST, "/api/v1/runs", Some("{\"image\": \"x\"}"), StatusCode::BAD_REQUEST, "missing field `job`"),
        (
            Method::POST,
            "/api/v1/runs",
            Some("{\"job\": \"nope\"}"),
            StatusCode::NOT_FOUND,
            "no job named `nope`; known: demo, nightly, docs",
        ),
        (
            Method::POST,
            "/api/v1/runs",
            Some("{\"job\": \"demo\", \"image\": \"deb-s390x\"}"),
            StatusCode::NOT_FOUND,
            "does not run on image `deb-s390x`",
        ),
        (Method::GET, "/api/v1/runs?state=sleeping", None, StatusCode::BAD_REQUEST, "state=`sleeping`"),
        (Method::GET, "/api/v1/runs?since=yesterday", None, StatusCode::BAD_REQUEST, "not an RFC 3339 time"),
        (Method::GET, "/api/v1/runs?limit=0", None, StatusCode::BAD_REQUEST, "between 1 and 1000"),
        (Method::GET, "/api/v1/runs?limit=lots", None, StatusCode::BAD_REQUEST, "limit"),
        (Method::GET, "/api/v1/runs?job=ghost", None, StatusCode::BAD_REQUEST, "job=`ghost`"),
        (Method::GET, "/api/v1/runs/r-ghost", None, StatusCode::NOT_FOUND, "no run `r-ghost`"),
        (Method::GET, "/api/v1/runs/r-ghost/log", None, StatusCode::NOT_FOUND, "no run `r-ghost`"),
        (Method::GET, "/api/v1/runs/r-running/log?tail=-1", None, StatusCode::BAD_REQUEST, "tail"),
        (Method::GET, "/api/v1/runs/r-running/log?tail=1000000", None, StatusCode::BAD_REQUEST, "at most 100000"),
        (Method::GET, "/api/v1/jobs/ghost", None, StatusCode::NOT_FOUND, "no job named `ghost`"),
        (Method::GET, "/api/v1/access?state=maybe", None, StatusCode::BAD_REQUEST, "state=`maybe`"),
        (Method::POST, "/api/v1/runs/r-ghost/cancel", None, StatusCode::NOT_FOUND, "no run `r-ghost`"),
        (Method::POST, "/api/v1/runs/r-nightly-arm/cancel", None, StatusCode::CONFLICT, "is failed and cannot be cancelled"),
    ];
    for (m, uri, body, want, has) in cases {
        let (st, b) = json(s, m.clone(), uri, t, *body).await;
        assert_error(st, &b, *want, b["error"].as_str().unwrap_or("?"), has);
    }
    // No Content-Type on a JSON body.
    let req =
        Request::post("/api/v1/runs").header("authorization", format!("Bearer {}", l.admin)).body(Body::from(r#"{"job":"demo"}"#)).unwrap();
    let resp = paddock::api::router(s.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn reads_show_the_fleet_as_the_store_has_it() {
    let l = lab(false).await;
    let (s, t) = (&l.state, Some(l.bob.as_str()));
    let (_, hosts) = json(s, Method::GET, "/api/v1/hosts", t, None).await;
    let local = &hosts[0];
    assert_eq!(local["name"], "local");
    assert_eq!(local["accelerator"], "qemu");
    assert_eq!(local["up"], Value::Null);
    // Two VMs on `local`: 512 + 1024 MiB, 1 + 2 vCPUs.
    assert_eq!(local["used"], serde_json::json!({"vms": 2, "memory_mib": 1536, "vcpus": 3}));
    assert_eq!(local["free"], serde_json::json!({"vms": 2, "memory_mib": 2560, "vcpus": 1}));
    assert_eq!(hosts[1]["used"]["vms"], 0);

    let (_, vms) = json(s, Method::GET, "/api/v1/vms", t, None).await;
    assert_eq!(vms.as_array().unwrap().len(), 2);
    assert!(vms[0]["age_s"].as_i64().unwrap() >= 59 * 60, "{vms}");
    // The held VM shows the host key paddock pinned for it, and its fingerprint.
    assert_eq!(vms[0]["name"], "paddock-t-2");
    assert_eq!(vms[0]["host_key"], crate::common::HELD_VM_HOST_KEY);
    assert_eq!(vms[0]["host_key_sha256"], "SHA256:z/fSv0Z0RZS+Lccbc6ZoOWwt/fbj1VFJGSBKQbo4icE");
    assert_eq!(vms[1]["host_key"], Value::Null);

    let (_, jobs) = json(s, Method::GET, "/api/v1/jobs", t, None).await;
    let nightly = jobs.as_array().unwrap().iter().find(|j| j["name"] == "nightly").unwrap();
    assert_eq!(nightly["next_fires"].as_array().unwrap().len(), 3);
    let last: Vec<(String, String)> = nightly["last"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["image"].as_str().unwrap().into(), l["outcome"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        last,
        [("tiny-x86_64", "success"), ("deb-aarch64", "build-failure"), ("deb-s390x", "infrastructure")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let (_, demo) = json(s, Method::GET, "/api/v1/jobs/demo", t, None).await;
    assert_eq!(demo["last"][0]["run_id"], "r-demo-2", "the newest finished run, not the older failure");
    assert_eq!(demo["schedule"]["timezone"], "Europe/Berlin");

    let (_, images) = json(s, Method::GET, "/api/v1/images", t, None).await;
    assert_eq!(images[1]["boot"], "disk");
    assert_eq!(images[1]["jobs"], serde_json::json!(["nightly"]));

    // Filters.
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let (_, r) = json(s, Method::GET, "/api/v1/runs?job=nightly&image=deb-aarch64", t, None).await;
    assert_eq!(ids(&r), ["r-held", "r-nightly-arm"]);
    let (_, r) = json(s, Method::GET, "/api/v1/runs?state=running", t, None).await;
    assert_eq!(ids(&r), ["r-running"]);
    let since = (chrono::Utc::now() - chrono::Duration::minutes(15)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, r) = json(s, Method::GET, &format!("/api/v1/runs?since={since}"), t, None).await;
    assert_eq!(ids(&r), ["r-queued", "r-running", "r-docs-1"]);
    let (_, r) = json(s, Method::GET, "/api/v1/runs?limit=2", t, None).await;
    assert_eq!(r.as_array().unwrap().len(), 2);
    assert_eq!(r[1]["state_label"], "running step 2");

    // Detail: steps from the result document, and the run's outbox entry.
    let (st, d) = json(s, Method::GET, "/api/v1/runs/r-nightly-arm", t, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(d["outcome"], "build-failure");
    assert_eq!(d["terminal"], true);
    assert_eq!(d["steps"].as_array().unwrap().len(), 2);
    assert_eq!(d["steps"][1]["status"], 2);
    assert_eq!(d["steps"][1]["errout"], "FAIL: t7\n");
    assert_eq!(d["outbox"][0]["recorder"], "embedded");
    let (_, d) = json(s, Method::GET, "/api/v1/runs/r-running", t, None).await;
    assert_eq!(d["steps"], serde_json::json!([]));

    // Log tail.
    let (st, log) = call(s, Method::GET, "/api/v1/runs/r-running/log?tail=2", t, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(log, "== step 2: build\ncompiling...\n");
    let (_, log) = call(s, Method::GET, "/api/v1/runs/r-queued/log", t, None).await;
    assert_eq!(log, "");

    let (_, ob) = json(s, Method::GET, "/api/v1/outbox", t, None).await;
    assert_eq!(ob.as_array().unwrap().len(), 6);
    let (_, ev) = json(s, Method::GET, "/api/v1/events?kind=reaped_domain", t, None).await;
    assert_eq!(ev[0]["subject"], "paddock-old-9");
    let (_, acc) = json(s, Method::GET, "/api/v1/access?state=active", t, None).await;
    assert_eq!(acc[0]["vm_name"], "paddock-t-2");
    for state in paddock::runs::RunState::KINDS {
        let (st, body) = json(s, Method::GET, &format!("/api/v1/runs?state={}", state.kind_name()), t, None).await;
        assert_eq!(st, StatusCode::OK, "state={}: {body}", state.kind_name());
    }
    // Every state a grant can be in is a filter the API accepts (`failed` once was not).
    for state in paddock::access::GrantState::ALL {
        let (st, body) = json(s, Method::GET, &format!("/api/v1/access?state={}", state.as_str()), t, None).await;
        assert_eq!(st, StatusCode::OK, "state={}: {body}", state.as_str());
    }
    let (_, stat) = json(s, Method::GET, "/api/v1/status", t, None).await;
    assert_eq!((stat["runs_queued"].as_u64(), stat["runs_in_flight"].as_u64(), stat["runs_held"].as_u64()), (Some(1), Some(1), Some(1)));
    assert_eq!(stat["outbox_pending"], 6);
}

#[tokio::test]
async fn probes_and_metrics() {
    let l = lab(false).await;
    let s = &l.state;
    assert_eq!(call(s, Method::GET, "/healthz", None, None).await, (StatusCode::OK, "ok\n".into()));
    let (st, body) = call(s, Method::GET, "/readyz", None, None).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    l.hosts
        .send(vec![
            HostStatus { name: "local".into(), up: true, last_error: None, vms_running: 2 },
            HostStatus { name: "rack-2".into(), up: false, last_error: Some("connection refused".into()), vms_running: 0 },
        ])
        .unwrap();
    let (st, body) = call(s, Method::GET, "/readyz", None, None).await;
    assert_eq!((st, body.as_str()), (StatusCode::OK, "ready: 1 of 2 hosts up\n"));
    let (_, hosts) = json(s, Method::GET, "/api/v1/hosts", Some(&l.bob), None).await;
    assert_eq!(hosts[1]["up"], false);
    assert_eq!(hosts[1]["last_error"], "connection refused");

    assert_eq!(call(s, Method::GET, "/metrics", None, None).await.0, StatusCode::UNAUTHORIZED);
    // Counters and histograms come from real work; `tests/e2e/runs.rs` drives a
    // run and reads them. Here: the state gauges, computed from the store.
    let (st, m) = call(s, Method::GET, "/metrics", Some(&l.bob), None).await;
    assert_eq!(st, StatusCode::OK);
    for line in [
        "paddock_runs_queued 1",
        "paddock_runs_in_flight 1",
        "paddock_vms{host=\"local\",state=\"held\"} 1",
        "paddock_vms{host=\"local\",state=\"running\"} 1",
        "paddock_host_up{host=\"local\"} 1",
        "paddock_host_up{host=\"rack-2\"} 0",
        "paddock_outbox_pending{recorder=\"embedded\"} 6",
    ] {
        assert!(m.lines().any(|l| l == line), "missing `{line}` in\n{m}");
    }
    let age: f64 =
        m.lines().find_map(|l| l.strip_prefix("paddock_outbox_oldest_age_seconds{recorder=\"embedded\"} ")).unwrap().parse().unwrap();
    // The oldest entry was finished 598 minutes ago.
    assert!((598.0 * 60.0 - 5.0..598.0 * 60.0 + 60.0).contains(&age), "{age}");
}

#[tokio::test]
async fn trigger_cancel_and_rerun_through_the_coordinator() {
    let l = lab(false).await;
    let (s, t) = (&l.state, Some(l.admin.as_str()));
    let (st, b) = json(s, Method::POST, "/api/v1/runs", t, Some(r#"{"job":"nightly"}"#)).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let ids: Vec<String> = b["runs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 3, "one run per image");
    // Without a VM manager the coordinator's executor ends each run at once as an
    // infrastructure failure; wait for that, then a cancel is a conflict.
    let id = ids[0].clone();
    let st = &l.store;
    wait_for("the run to finish", std::time::Duration::from_secs(10), async || {
        st.run(&id).await.unwrap().filter(|r| r.finished_at.is_some())
    })
    .await;
    let (code, b) = json(s, Method::GET, &format!("/api/v1/runs/{id}"), t, None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!((b["trigger"].as_str(), b["requested_by"].as_str()), (Some("manual"), Some("root")));
    let (code, b) = json(s, Method::POST, &format!("/api/v1/runs/{id}/cancel"), t, None).await;
    assert_eq!(code, StatusCode::CONFLICT, "{b}");
    // Cancelling a held run releases it.
    let (code, b) = json(s, Method::POST, "/api/v1/runs/r-held/cancel", t, None).await;
    assert_eq!(code, StatusCode::OK, "{b}");
    assert_eq!(b, serde_json::json!({"run": "r-held", "cancel_requested": true}));
    assert_eq!(st.run("r-held").await.unwrap().unwrap().state, "failed");
    // Re-run: the same job and image, marked as a re-run by its requester.
    let (code, b) = json(s, Method::POST, "/api/v1/runs/r-nightly-arm/rerun", Some(&l.admin), None).await;
    assert_eq!(code, StatusCode::CREATED, "{b}");
    let new = st.run(b["runs"][0].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!((new.job.as_str(), new.image.as_str(), new.trigger.as_str()), ("nightly", "deb-aarch64", "rerun"));
}

#[tokio::test]
async fn sse_follow_streams_the_log_until_the_run_ends() {
    let l = lab(false).await;
    let req = Request::get(format!("/api/v1/runs/{}/log/follow", l.running))
        .header("authorization", format!("Bearer {}", l.bob))
        .body(Body::empty())
        .unwrap();
    let resp = paddock::api::router(l.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body().into_data_stream();
    let mut seen = String::new();
    // Reads frames until `pred` holds on everything seen so far.
    async fn until(body: &mut axum::body::BodyDataStream, seen: &mut String, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !pred(seen) {
            let frame = tokio::time::timeout_at(deadline, body.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; got:\n{seen}"));
            match frame {
                Some(Ok(d)) => seen.push_str(&String::from_utf8_lossy(&d)),
                _ => panic!("stream ended before {what}; got:\n{seen}"),
            }
        }
    }
    until(&mut body, &mut seen, "the state and existing log", |s| s.contains("compiling...")).await;
    assert!(seen.starts_with("event: state\ndata: {\"state\":\"running:1\""), "{seen}");
    // The step runner appends while we read.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(&l.log).unwrap();
    f.write_all("linked paddock ✓\n".as_bytes()).unwrap();
    l.store.pulses().log_written(&l.running);
    until(&mut body, &mut seen, "appended output", |s| s.contains("linked paddock ✓")).await;
    assert!(l.store.transition_run(&l.running, "running:1", "running:2", Default::default()).await.unwrap());
    until(&mut body, &mut seen, "the state change", |s| s.contains("running step 3")).await;
    f.write_all(b"== step 3: test\nok\n").unwrap();
    l.store.pulses().log_written(&l.running);
    paddock_finish(&l.store, &l.running).await;
    until(&mut body, &mut seen, "the end event", |s| s.contains("event: end")).await;
    // Output written before the run ended came before `end`, and the stream closes.
    let end = seen.find("event: end").unwrap();
    assert!(seen[..end].contains("== step 3: test\\nok\\n"), "{seen}");
    assert!(seen[end..].contains("\"outcome\":\"success\""), "{seen}");
    let tail = tokio::time::timeout(std::time::Duration::from_secs(5), async { while let Some(Ok(_)) = body.next().await {} }).await;
    assert!(tail.is_ok(), "the stream should end after `end`");
}

pub async fn paddock_finish(store: &paddock::store::Store, id: &str) {
    let from = store.run(id).await.unwrap().unwrap().state;
    let ended = store
        .finish_run(paddock::store::RunEnd {
            run_id: id.into(),
            from,
            state: "done".into(),
            outcome: "success".into(),
            reason: None,
            result_json: "{}".into(),
            finished_at: chrono::Utc::now(),
            recorders: vec![],
        })
        .await
        .unwrap();
    assert!(ended, "run {id} changed state while being finished");
}

#[tokio::test]
async fn openapi_document_matches_the_router() {
    let l = lab(true).await;
    let (st, doc) = json(&l.state, Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    let mut routed: Vec<(String, String)> = paddock::api::route_table().into_iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    documented.sort();
    routed.sort();
    assert_eq!(documented, routed, "the OpenAPI document and the router disagree");
    // And the table is what the router serves: each route answers (not a routing 404/405).
    for (m, p) in &routed {
        let uri = p.replace("{id}", "r-docs-1").replace("{name}", "demo");
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        let (st, body) = call(&l.state, method, &uri, Some(&l.admin), Some("{\"job\":\"docs\"}")).await;
        let routing_miss = (st == StatusCode::NOT_FOUND && body.is_empty()) || st == StatusCode::METHOD_NOT_ALLOWED;
        assert!(!routing_miss, "{m} {uri} is not routed ({st})");
    }
    // Every referenced schema exists.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = &r[..r.find('"').unwrap()];
        assert!(doc["components"]["schemas"].get(name).is_some(), "missing schema {name}");
    }
}

#[tokio::test]
async fn drain_and_resume_are_admin_only_audited_and_shown_in_hosts() {
    let l = lab(false).await;
    let s = &l.state;
    let body = r#"{"reason":"swapping a disk"}"#;
    // A maintainer may not drain; an unknown host is 404; a drain needs a reason.
    let (st, b) = json(s, Method::POST, "/api/v1/hosts/rack-2/drain", Some(&l.alice), Some(body)).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "forbidden", "needs an admin");
    let (st, b) = json(s, Method::POST, "/api/v1/hosts/nope/drain", Some(&l.admin), Some(body)).await;
    assert_error(st, &b, StatusCode::NOT_FOUND, "not_found", "no host named `nope`; known: local, rack-2");
    let (st, b) = json(s, Method::POST, "/api/v1/hosts/rack-2/drain", Some(&l.admin), Some("{}")).await;
    assert_error(st, &b, StatusCode::BAD_REQUEST, "bad_request", "needs a `reason`");
    let (st, b) = json(s, Method::POST, "/api/v1/hosts/rack-2/resume", Some(&l.admin), Some("{}")).await;
    assert_error(st, &b, StatusCode::CONFLICT, "conflict", "neither drained nor quarantined");
    let (st, b) = json(s, Method::POST, "/api/v1/hosts/rack-2/resume", Some(&l.alice), Some("{}")).await;
    assert_error(st, &b, StatusCode::FORBIDDEN, "forbidden", "needs an admin");
    // Every refusal has its audit line, newest first.
    let refused: Vec<(String, String, String, String)> = l
        .store
        .audit_entries(5)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.actor, a.action, a.subject, a.detail.split(':').next().unwrap_or("").to_owned()))
        .collect();
    let r = |actor: &str, action: &str, subject: &str| (actor.to_owned(), action.to_owned(), subject.to_owned(), "refused".to_owned());
    assert_eq!(
        refused,
        [
            r("alice", "host.resume", "rack-2"),
            r("root", "host.resume", "rack-2"),
            r("root", "host.drain", "rack-2"),
            r("root", "host.drain", "nope"),
            r("alice", "host.drain", "rack-2")
        ]
    );

    let (st, b) = json(s, Method::POST, "/api/v1/hosts/rack-2/drain", Some(&l.admin), Some(body)).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["blocked"]["kind"], "drained");
    assert_eq!(b["blocked"]["reason"], "swapping a disk");
    assert_eq!(b["blocked"]["by"], "root");
    let (_, hosts) = json(s, Method::GET, "/api/v1/hosts", Some(&l.bob), None).await;
    let rack = hosts.as_array().unwrap().iter().find(|h| h["name"] == "rack-2").unwrap();
    assert_eq!(rack["blocked"]["reason"], "swapping a disk");
    assert!(hosts.as_array().unwrap().iter().find(|h| h["name"] == "local").unwrap()["blocked"].is_null());
    let audit = l.store.audit_entries(10).await.unwrap();
    assert_eq!(
        (audit[0].action.as_str(), audit[0].subject.as_str(), audit[0].detail.as_str()),
        ("host.drain", "rack-2", "swapping a disk")
    );

    let (st, b) = json(s, Method::POST, "/api/v1/hosts/rack-2/resume", Some(&l.admin), None).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert!(b["blocked"].is_null());
    let audit = l.store.audit_entries(10).await.unwrap();
    assert_eq!(audit[0].action, "host.resume");
    assert_eq!(audit[0].detail, "was drained: swapping a disk");
    assert!(l.store.host_blocks().await.unwrap().is_empty());
}

#[tokio::test]
async fn access_endpoints_need_a_token() {
    let l = lab(false).await;
    let s = &l.state;
    let cases: &[(Method, &str, Option<&str>)] = &[
        (Method::GET, "/api/v1/access", None),
        (Method::POST, "/api/v1/access", Some(r#"{"image":"deb-x86_64","duration":"1h","reason":"x"}"#)),
        (Method::GET, "/api/v1/access/ca", None),
        (Method::GET, "/api/v1/access/g1", None),
        (Method::POST, "/api/v1/access/g1/approve", None),
        (Method::POST, "/api/v1/access/g1/deny", Some("{}")),
        (Method::POST, "/api/v1/access/g1/extend", Some(r#"{"duration":"1h"}"#)),
        (Method::POST, "/api/v1/access/g1/revoke", None),
        (Method::GET, "/api/v1/audit", None),
    ];
    for (m, uri, body) in cases {
        let (st, b) = json(s, m.clone(), uri, None, *body).await;
        assert_error(st, &b, StatusCode::UNAUTHORIZED, "unauthenticated", "token");
        let (st, b) = json(s, m.clone(), uri, Some("pdk_bad_token"), *body).await;
        assert_error(st, &b, StatusCode::UNAUTHORIZED, "unauthenticated", "unknown or revoked");
    }
}

#[tokio::test]
async fn absurd_durations_are_refused_at_parse_time() {
    let l = lab(false).await;
    for (uri, body) in [
        ("/api/v1/access/a1/extend", r#"{"duration":"100000000d"}"#),
        ("/api/v1/access", r#"{"image":"tiny-x86_64","duration":"100000000d","reason":"x"}"#),
    ] {
        let (st, b) = json(&l.state, Method::POST, uri, Some(&l.alice), Some(body)).await;
        assert_error(st, &b, StatusCode::BAD_REQUEST, "bad_request", "longer than the limit of 366d");
    }
    // Both refusals are audited.
    let audit = l.store.audit_entries(2).await.unwrap();
    let got: Vec<(&str, &str, &str)> = audit.iter().map(|a| (a.actor.as_str(), a.action.as_str(), a.subject.as_str())).collect();
    assert_eq!(got, [("alice", "access.request", "tiny-x86_64"), ("alice", "access.extend", "a1")]);
    assert!(audit.iter().all(|a| a.detail.starts_with("refused: ") && a.detail.contains("366d")), "{audit:?}");
}

#[tokio::test]
async fn live_log_streams_are_capped_with_a_429_naming_the_limit() {
    let mut l = lab(true).await;
    std::sync::Arc::get_mut(&mut l.state).expect("one owner of the state").max_follows = 1;
    let url = crate::common::serve(l.state.clone()).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let follow = format!("{url}/api/v1/runs/{}/log/follow", l.running);
    let first = http.get(&follow).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let follows = l.state.follows.clone();
    wait_for("the first follow", std::time::Duration::from_secs(10), async || {
        (follows.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let second = http.get(&follow).send().await.unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = second.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("1 live log streams are open, the limit"), "{body}");
    drop(first);
    wait_for("the first follow to end", std::time::Duration::from_secs(10), async || {
        (follows.load(std::sync::atomic::Ordering::SeqCst) == 0).then_some(())
    })
    .await;
    assert_eq!(http.get(&follow).send().await.unwrap().status(), StatusCode::OK);
}

/// A follow is pushed by the log writer, not polled: bytes that reach the file without a pulse
/// stay unseen through an hour of (paused, auto-advancing) time, in which a poller of any period
/// would have found them; the pulse brings them at once.
#[tokio::test(start_paused = true)]
async fn a_follow_is_woken_by_the_log_writers_pulse_never_by_a_timer() {
    let l = lab(false).await;
    let req = Request::get(format!("/api/v1/runs/{}/log/follow", l.running))
        .header("authorization", format!("Bearer {}", l.bob))
        .body(Body::empty())
        .unwrap();
    let resp = paddock::api::router(l.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    let mut seen = String::new();
    while !seen.contains("compiling...") {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(60), body.next()).await.expect("the existing log");
        seen.push_str(&String::from_utf8_lossy(&frame.unwrap().unwrap()));
    }
    use std::io::Write;
    std::fs::OpenOptions::new().append(true).open(&l.log).unwrap().write_all(b"written without a pulse\n").unwrap();
    let quiet_until = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
    // Only keep-alive comments arrive meanwhile.
    while let Ok(frame) = tokio::time::timeout_at(quiet_until, body.next()).await {
        let text = String::from_utf8_lossy(&frame.unwrap().unwrap()).into_owned();
        assert!(!text.contains("without a pulse"), "the follow read the log without being told: {text}");
    }
    l.store.pulses().log_written(&l.running);
    let mut after = String::new();
    while !after.contains("written without a pulse") {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(60), body.next()).await.expect("the pulsed bytes");
        after.push_str(&String::from_utf8_lossy(&frame.unwrap().unwrap()));
    }
}

#[tokio::test]
async fn live_log_streams_are_capped_per_client_with_a_429_naming_the_limit() {
    let mut l = lab(true).await;
    {
        let st = std::sync::Arc::get_mut(&mut l.state).expect("one owner of the state");
        st.max_follows = 10;
        st.max_follows_per_client = 2;
    }
    let url = crate::common::serve(l.state.clone()).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let follow = format!("{url}/api/v1/runs/{}/log/follow", l.running);
    let open = async |token: Option<&str>| {
        let mut r = http.get(&follow);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    };
    let bob1 = open(Some(&l.bob)).await;
    let bob2 = open(Some(&l.bob)).await;
    assert_eq!((bob1.status(), bob2.status()), (StatusCode::OK, StatusCode::OK));
    let third = open(Some(&l.bob)).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = third.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("2 live log streams are open for this client, the limit (limits.live_streams_per_client)"),
        "{body}"
    );
    // Another user is another client; so is an anonymous reader, counted by address.
    assert_eq!(open(Some(&l.alice)).await.status(), StatusCode::OK);
    let anon: Vec<_> = [open(None).await, open(None).await, open(None).await].into_iter().map(|r| r.status()).collect();
    assert_eq!(anon, [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
    // A closed stream frees its client's place.
    drop(bob1);
    let follows = l.state.follows.clone();
    wait_for("bob's first follow to end", std::time::Duration::from_secs(10), async || {
        (follows.load(std::sync::atomic::Ordering::SeqCst) == 4).then_some(())
    })
    .await;
    assert_eq!(open(Some(&l.bob)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn readyz_reports_an_owner_that_was_restarted() {
    let mut l = lab(false).await;
    let health = paddock::supervisor::Health::default();
    std::sync::Arc::get_mut(&mut l.state).expect("one owner of the state").owners.push(("forwarder", health.clone()));
    l.hosts.send(vec![HostStatus { name: "local".into(), up: true, last_error: None, vms_running: 0 }]).unwrap();
    let (_, body) = call(&l.state, Method::GET, "/readyz", None, None).await;
    assert!(!body.contains("restarted"), "{body}");
    // As the forwarder's supervisor records a lane's panic (`outbox::tests`).
    paddock::supervisor::record_restart("forwarder", &health, "injected fault".into());
    let (st, body) = call(&l.state, Method::GET, "/readyz", None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(body.contains("forwarder owner restarted 1 time(s); last failure: injected fault"), "{body}");
}
