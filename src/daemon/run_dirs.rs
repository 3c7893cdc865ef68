//! `[retention]` for the daemon's state dir: old runs' folders (`logs/<run>/`, their logs and
//! artifacts) go by the same rule as the embedded recorder's results, per job and image.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::Retention;
use crate::store::{FinishedRun, Store};

/// The runs whose folders `policy` removes at `now`: each job+image's newest `keep_last` stay;
/// older ones go once past `max_age` (passes) or `failure_max_age` (failures).
pub fn doomed<'a>(runs: &'a [FinishedRun], policy: &Retention, now: DateTime<Utc>) -> Vec<&'a FinishedRun> {
    let age = |d: Option<std::time::Duration>| d.map(|d| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX));
    let pass = age(policy.max_age);
    let fail = age(policy.failure_max_age).or(pass);
    let mut seen: HashMap<(&str, &str), u32> = HashMap::new();
    let mut newest_first: Vec<&FinishedRun> = runs.iter().collect();
    newest_first.sort_by(|a, b| b.finished_at.cmp(&a.finished_at).then_with(|| b.id.cmp(&a.id)));
    newest_first
        .into_iter()
        .filter(|r| {
            let n = seen.entry((r.job.as_str(), r.image.as_str())).or_default();
            *n += 1;
            let limit = if r.success { pass } else { fail };
            *n > policy.keep_last.max(1) && limit.is_none_or(|l| now - r.finished_at > l)
        })
        .collect()
}

/// Removes the folders of the runs `policy` says are past keeping; returns how many it removed.
pub async fn prune(store: &Store, logs: &Path, policy: &Retention, now: DateTime<Utc>) -> Result<u64, crate::store::StoreError> {
    let runs = store.finished_runs_brief().await?;
    let mut removed = 0;
    for r in doomed(&runs, policy, now) {
        // Run ids are paddock's own, but a folder name is never taken on trust.
        if r.id.is_empty() || r.id.contains(['/', '\\']) || r.id.starts_with('.') {
            continue;
        }
        let dir = logs.join(&r.id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an old run's folder"),
        }
    }
    crate::metrics::run_dirs_removed(removed);
    if removed > 0 {
        tracing::info!(removed, "retention removed old run folders");
    }
    Ok(removed)
}

/// Prunes every `policy.every` until `shutdown`.
pub fn spawn(store: Store, logs: std::path::PathBuf, policy: Retention, clock: Clock, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(policy.every) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if let Err(e) = prune(&store, &logs, &policy, clock.now()).await {
                tracing::warn!(error = %crate::error::chain(&e), "run folder retention failed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RunEnd, RunRow};
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(86_400);

    async fn finished(store: &Store, logs: &Path, id: &str, image: &str, ok: bool, at: DateTime<Utc>) {
        let row = RunRow {
            id: id.into(),
            job: "nightly".into(),
            image: image.into(),
            trigger: "manual".into(),
            requested_by: None,
            state: "reporting".into(),
            host: None,
            vm_name: None,
            scheduled_at: None,
            created_at: at,
            started_at: Some(at),
            finished_at: None,
            outcome: None,
            reason: None,
            result_json: None,
            log_path: None,
        };
        store.insert_run(&row).await.unwrap();
        let end = RunEnd {
            run_id: id.into(),
            from: "reporting".into(),
            state: if ok { "done" } else { "failed" }.into(),
            outcome: if ok { "success" } else { "build-failure" }.into(),
            reason: None,
            result_json: "{}".into(),
            finished_at: at,
            recorders: vec![],
        };
        store.finish_run(end).await.unwrap();
        std::fs::create_dir_all(logs.join(id).join("artifacts")).unwrap();
        std::fs::write(logs.join(id).join("run.log"), b"log").unwrap();
    }

    /// Under a paused clock (the daemon's task reads a `Clock`), exactly the folders the policy
    /// names go: per job+image the newest two stay, older passes after 10 days, failures after 30.
    #[tokio::test(start_paused = true)]
    async fn run_folders_go_exactly_as_the_policy_says() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
        let logs = dir.path().join("logs");
        let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let clock = Clock::starting_at(start);
        let day = |n: i64| start + chrono::Duration::days(n);
        // Finished on day 0..49; the clock will read day 50.
        for (id, image, ok, d) in [
            ("r1", "tiny", false, 0),
            ("r2", "tiny", true, 10),
            ("r3", "tiny", false, 30),
            ("r4", "tiny", true, 35),
            ("r5", "tiny", true, 45),
            ("r6", "tiny", true, 49),
            ("o1", "other", true, 0),
        ] {
            finished(&store, &logs, id, image, ok, day(d)).await;
        }
        let policy = Retention { keep_last: 2, max_age: Some(10 * DAY), failure_max_age: Some(30 * DAY), every: Duration::from_secs(3600) };
        tokio::time::advance(50 * DAY).await;
        assert_eq!(clock.now(), day(50));
        let metrics = crate::metrics::install();
        assert_eq!(prune(&store, &logs, &policy, clock.now()).await.unwrap(), 3);
        let mut left: Vec<String> = std::fs::read_dir(&logs).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["o1", "r3", "r5", "r6"]);
        assert!(metrics.render().contains("paddock_run_dirs_removed_total 3"), "{}", metrics.render());
        assert_eq!(prune(&store, &logs, &policy, clock.now()).await.unwrap(), 0, "a second pass finds nothing more");
        // The rows stay: the API still lists the runs.
        assert_eq!(store.finished_runs_brief().await.unwrap().len(), 7);
    }
}
