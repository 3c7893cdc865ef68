//! Scheduler tests under tokio's paused clock, with a real SQLite store.

use chrono::{TimeZone, Utc};
use std::path::Path;

use super::*;

fn job(expr: &str, tz: &str) -> Job {
    let src = include_str!("../../fleet.toml").replacen("schedule = \"0 2 * * *\"", &format!("schedule = \"{expr}\""), 1).replacen(
        "timezone = \"Europe/Berlin\"",
        &format!("timezone = \"{tz}\""),
        1,
    );
    crate::config::parse(&src, Path::new("fleet.toml")).unwrap().jobs.remove(0)
}

async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).await.unwrap();
    (dir, store)
}

#[tokio::test(start_paused = true)]
async fn nightly_fires_across_a_dst_change() {
    let (_d, store) = store().await;
    let clock = Clock::starting_at(Utc.with_ymd_and_hms(2026, 3, 27, 12, 0, 0).unwrap());
    let (tx, mut rx) = mpsc::channel(8);
    tokio::spawn(run_job(job("0 2 * * *", "Europe/Berlin"), store.clone(), clock, tx));
    let mut got = Vec::new();
    for _ in 0..4 {
        let f = rx.recv().await.unwrap();
        assert!(!f.missed);
        // The fire is delivered when the clock reaches its tick, not before.
        assert!(clock.now() >= f.scheduled_at);
        assert!(clock.now() - f.scheduled_at < chrono::Duration::seconds(1));
        got.push(f.scheduled_at);
    }
    assert_eq!(
        got,
        vec![
            Utc.with_ymd_and_hms(2026, 3, 28, 1, 0, 0).unwrap(), // 02:00 CET
            Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap(), // 02:00 does not exist; 03:00 CEST
            Utc.with_ymd_and_hms(2026, 3, 30, 0, 0, 0).unwrap(), // 02:00 CEST
            Utc.with_ymd_and_hms(2026, 3, 31, 0, 0, 0).unwrap(),
        ]
    );
    assert_eq!(store.last_fire("demo").await.unwrap(), Some(got[3]));
}

#[tokio::test(start_paused = true)]
async fn autumn_back_change_fires_once() {
    let (_d, store) = store().await;
    // 2026-10-25: Berlin goes from CEST back to CET at 03:00, so 02:30 happens twice.
    let clock = Clock::starting_at(Utc.with_ymd_and_hms(2026, 10, 24, 12, 0, 0).unwrap());
    let (tx, mut rx) = mpsc::channel(8);
    tokio::spawn(run_job(job("30 2 * * *", "Europe/Berlin"), store, clock, tx));
    let a = rx.recv().await.unwrap().scheduled_at;
    let b = rx.recv().await.unwrap().scheduled_at;
    let c = rx.recv().await.unwrap().scheduled_at;
    assert_eq!(a, Utc.with_ymd_and_hms(2026, 10, 25, 0, 30, 0).unwrap()); // 02:30 CEST
    assert_eq!(b, Utc.with_ymd_and_hms(2026, 10, 26, 1, 30, 0).unwrap()); // not again at 02:30 CET that day
    assert_eq!(c, Utc.with_ymd_and_hms(2026, 10, 27, 1, 30, 0).unwrap());
}

#[tokio::test(start_paused = true)]
async fn fires_missed_during_downtime_run_once() {
    let (_d, store) = store().await;
    let now = Utc.with_ymd_and_hms(2026, 6, 10, 9, 0, 0).unwrap();
    // The daemon last handled the 02:00 UTC tick of June 6th, then was down for four nights.
    store.set_last_fire("demo", Utc.with_ymd_and_hms(2026, 6, 6, 2, 0, 0).unwrap()).await.unwrap();
    let clock = Clock::starting_at(now);
    let (tx, mut rx) = mpsc::channel(8);
    tokio::spawn(run_job(job("0 2 * * *", "UTC"), store.clone(), clock, tx));
    let first = rx.recv().await.unwrap();
    assert_eq!(first, Fire { job: "demo".into(), scheduled_at: Utc.with_ymd_and_hms(2026, 6, 10, 2, 0, 0).unwrap(), missed: true });
    assert_eq!(clock.now(), now, "the missed fire runs at once");
    let second = rx.recv().await.unwrap();
    assert_eq!(second.scheduled_at, Utc.with_ymd_and_hms(2026, 6, 11, 2, 0, 0).unwrap());
    assert!(!second.missed);
}

#[tokio::test(start_paused = true)]
async fn a_restart_does_not_repeat_a_handled_fire() {
    let (_d, store) = store().await;
    // The daemon handled (and stored) the 02:00 tick, then crashed and came back at 03:00.
    store.set_last_fire("demo", Utc.with_ymd_and_hms(2026, 6, 10, 2, 0, 0).unwrap()).await.unwrap();
    let clock = Clock::starting_at(Utc.with_ymd_and_hms(2026, 6, 10, 3, 0, 0).unwrap());
    let (tx, mut rx) = mpsc::channel(8);
    tokio::spawn(run_job(job("0 2 * * *", "UTC"), store, clock, tx));
    let f = rx.recv().await.unwrap();
    assert_eq!(f.scheduled_at, Utc.with_ymd_and_hms(2026, 6, 11, 2, 0, 0).unwrap());
    assert!(!f.missed);
}

#[tokio::test(start_paused = true)]
async fn a_first_start_does_not_fire_for_the_past() {
    let (_d, store) = store().await;
    let clock = Clock::starting_at(Utc.with_ymd_and_hms(2026, 6, 10, 3, 0, 0).unwrap());
    let (tx, mut rx) = mpsc::channel(8);
    tokio::spawn(run_job(job("0 2 * * *", "UTC"), store, clock, tx));
    let f = rx.recv().await.unwrap();
    assert_eq!(f.scheduled_at, Utc.with_ymd_and_hms(2026, 6, 11, 2, 0, 0).unwrap());
}

#[test]
fn latest_due_picks_the_newest_tick() {
    let j = job("*/10 * * * *", "UTC");
    let s = j.schedule.as_ref().unwrap();
    let after = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    assert_eq!(latest_due(s, after, after + chrono::Duration::minutes(5)), None);
    assert_eq!(latest_due(s, after, after + chrono::Duration::minutes(35)), Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 30, 0).unwrap()));
}
