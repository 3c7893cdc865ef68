//! Coordinator tests over a real store file.

use std::path::Path;
use std::sync::Arc;

use chrono::Utc;

use super::*;
use crate::outbox::Waker;
use crate::store::{RunRow, Store};

async fn setup() -> (tempfile::TempDir, Store, Arc<crate::config::Fleet>, Arc<Executor>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
    let fleet = Arc::new(crate::config::parse(include_str!("../../fleet.toml"), Path::new("fleet.toml")).unwrap());
    let executor = Arc::new(Executor::new(
        fleet.clone(),
        store.clone(),
        ExecutorConfig::new(dir.path().join("logs"), vec!["embedded".into(), "central".into()]),
        Waker::default(),
    ));
    (dir, store, fleet, executor)
}

fn row(id: &str, state: RunState) -> RunRow {
    RunRow {
        id: id.into(),
        job: "demo".into(),
        image: "tiny-x86_64".into(),
        trigger: "manual".into(),
        requested_by: Some("alice".into()),
        state: state.as_db(),
        host: Some("local".into()),
        vm_name: Some("paddock-x-1".into()),
        scheduled_at: None,
        created_at: Utc::now(),
        started_at: Some(Utc::now()),
        finished_at: None,
        outcome: None,
        reason: None,
        result_json: None,
        log_path: None,
    }
}

#[tokio::test]
async fn recovery_marks_lost_runs_interrupted_and_queues_their_results() {
    let (_d, store, fleet, executor) = setup().await;
    store.insert_run(&row("r-running", RunState::Running(1))).await.unwrap();
    store.insert_run(&row("r-booting", RunState::Booting)).await.unwrap();
    let mut done = row("r-done", RunState::Done);
    done.outcome = Some("success".into());
    store.insert_run(&done).await.unwrap();
    let (fleet2, executor2) = (fleet.clone(), executor.clone());
    let (mut coord, _handle) = Coordinator::new(fleet, store.clone(), executor);
    coord.recover().await.unwrap();

    let r = store.run("r-running").await.unwrap().unwrap();
    assert_eq!(r.state, "failed");
    assert_eq!(r.outcome.as_deref(), Some("interrupted"));
    assert_eq!(r.reason.as_deref(), Some("paddock stopped while the run was running step 2"));
    let doc: serde_json::Value = serde_json::from_str(r.result_json.as_deref().unwrap()).unwrap();
    assert_eq!(doc["client_info"]["success"], false);
    assert_eq!(doc["extras"]["failure_kind"], "infrastructure");
    assert_eq!(doc["idempotency_key"], "r-running");
    // One outbox entry per recorder, for each interrupted run, none for the finished one.
    assert_eq!(store.outbox_for_run("r-running").await.unwrap().len(), 2);
    assert_eq!(store.outbox_for_run("r-booting").await.unwrap().len(), 2);
    assert_eq!(store.outbox_for_run("r-done").await.unwrap().len(), 0);
    // Recovering again changes nothing and queues nothing twice.
    let (mut again, _h) = Coordinator::new(fleet2, store.clone(), executor2);
    again.recover().await.unwrap();
    assert_eq!(store.outbox_pending().await.unwrap().len(), 4);
}

#[tokio::test]
async fn unknown_job_and_image_are_refused_with_what_exists() {
    let (_d, store, fleet, executor) = setup().await;
    let (coord, handle) = Coordinator::new(fleet, store, executor);
    let (_ftx, frx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(coord.run(frx));
    let e = handle.trigger("nope", None, Trigger::Manual { by: "alice".into() }).await.unwrap_err();
    assert_eq!(e.to_string(), "no job named `nope`; known: `demo`, `arches`, `debian-build`");
    let e = handle.trigger("demo", Some("win7"), Trigger::Manual { by: "alice".into() }).await.unwrap_err();
    assert_eq!(e.to_string(), "job `demo` does not run on image `win7`; its images: `tiny-x86_64`");
    let e = handle.cancel("no-such-run", "alice").await.unwrap_err();
    assert_eq!(e.to_string(), "no run `no-such-run`");
}

#[tokio::test]
async fn a_run_of_a_job_removed_from_the_fleet_is_still_ended_at_start() {
    let (_d, store, fleet, executor) = setup().await;
    let mut gone = row("r-gone", RunState::Running(0));
    gone.job = "removed-since".into();
    gone.image = "removed-image".into();
    store.insert_run(&gone).await.unwrap();
    let (mut coord, _handle) = Coordinator::new(fleet, store.clone(), executor);
    // This used to fail with `StoreError::Corrupt`, and with it the daemon's start.
    coord.recover().await.unwrap();
    let r = store.run("r-gone").await.unwrap().unwrap();
    assert_eq!((r.state.as_str(), r.outcome.as_deref()), ("failed", Some("interrupted")));
    let doc: serde_json::Value = serde_json::from_str(r.result_json.as_deref().unwrap()).unwrap();
    assert_eq!(doc["client_info"]["package"], "removed-since");
    assert_eq!(doc["extras"]["image"], "removed-image");
    assert_eq!(store.outbox_for_run("r-gone").await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_held_run_whose_vm_is_gone_ends_at_start() {
    let (_d, store, fleet, executor) = setup().await;
    let mut held = row("r-held", RunState::Held);
    held.outcome = Some("build-failure".into());
    store.insert_run(&held).await.unwrap();
    let (mut coord, _handle) = Coordinator::new(fleet, store.clone(), executor);
    coord.recover().await.unwrap();
    let r = store.run("r-held").await.unwrap().unwrap();
    assert_eq!((r.state.as_str(), r.outcome.as_deref()), ("failed", Some("build-failure")));
}
