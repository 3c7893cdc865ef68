//! The one way a run's state changes: `transition` checks the move with
//! `RunState::can_become` and writes it only if the row is still in the state
//! the caller read (`WHERE state = from`), as grants do. A refused move is an
//! error for the caller to handle, never silently dropped.

use crate::store::{RetryRow, RunEnd, RunRow, RunUpdate, Store, StoreError};

use super::state::RunState;

#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("run `{id}` cannot go from {from} to {to}")]
    Illegal { id: String, from: RunState, to: RunState },
    #[error("run `{id}` is in an unknown state `{state}`")]
    Unknown { id: String, state: String },
    #[error("run `{id}` was expected to be {expected} but is {found}")]
    Stale { id: String, expected: RunState, found: String },
    #[error("recording a state of run `{id}`")]
    Store {
        id: String,
        #[source]
        source: StoreError,
    },
}

fn store_err(id: &str) -> impl FnOnce(StoreError) -> TransitionError + '_ {
    move |source| TransitionError::Store { id: id.to_string(), source }
}

/// Moves run `id` from `from` to `to` (a non-final state, or `Failed` for a
/// held run whose hold ended), with `update`'s fields.
pub async fn transition(store: &Store, id: &str, from: RunState, to: RunState, update: RunUpdate) -> Result<(), TransitionError> {
    if !from.can_become(to) {
        return Err(TransitionError::Illegal { id: id.into(), from, to });
    }
    if store.transition_run(id, &from.as_db(), &to.as_db(), update).await.map_err(store_err(id))? {
        return Ok(());
    }
    Err(stale(store, id, from).await)
}

/// Ends run `id`: `end.state` must be a legal move from `from`; the end (result,
/// outbox entries) is written only if the run is still in `from`.
pub async fn finish(store: &Store, from: RunState, to: RunState, end: RunEnd) -> Result<(), TransitionError> {
    finish_and_retry(store, from, to, end, None).await
}

/// [`finish`], queueing `retry` (a run that re-runs this one) in the same transaction.
pub async fn finish_and_retry(
    store: &Store,
    from: RunState,
    to: RunState,
    mut end: RunEnd,
    retry: Option<(RunRow, RetryRow)>,
) -> Result<(), TransitionError> {
    let id = end.run_id.clone();
    if !from.can_become(to) {
        return Err(TransitionError::Illegal { id, from, to });
    }
    end.from = from.as_db();
    end.state = to.as_db();
    if store.finish_run_and_retry(end, retry).await.map_err(store_err(&id))? {
        return Ok(());
    }
    Err(stale(store, &id, from).await)
}

async fn stale(store: &Store, id: &str, expected: RunState) -> TransitionError {
    match store.run(id).await {
        Ok(row) => TransitionError::Stale { id: id.into(), expected, found: row.map(|r| r.state).unwrap_or_else(|| "missing".into()) },
        Err(source) => TransitionError::Store { id: id.into(), source },
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::store::RunRow;

    async fn store_with(state: RunState) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("paddock.db")).await.unwrap();
        let row = RunRow {
            id: "r1".into(),
            job: "demo".into(),
            image: "tiny".into(),
            trigger: "manual".into(),
            requested_by: None,
            state: state.as_db(),
            host: None,
            vm_name: None,
            scheduled_at: None,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            outcome: None,
            reason: None,
            result_json: None,
            log_path: None,
        };
        store.insert_run(&row).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_legal_move_from_the_current_state_is_written() {
        let (_d, store) = store_with(RunState::Queued).await;
        transition(&store, "r1", RunState::Queued, RunState::Provisioning, RunUpdate::default()).await.unwrap();
        assert_eq!(store.run("r1").await.unwrap().unwrap().state, "provisioning");
    }

    #[tokio::test]
    async fn an_illegal_move_is_refused_and_nothing_is_written() {
        let (_d, store) = store_with(RunState::Queued).await;
        let e = transition(&store, "r1", RunState::Queued, RunState::Running(0), RunUpdate::default()).await.unwrap_err();
        assert!(matches!(e, TransitionError::Illegal { .. }), "{e}");
        assert_eq!(store.run("r1").await.unwrap().unwrap().state, "queued");
    }

    #[tokio::test]
    async fn a_move_from_a_state_the_run_is_no_longer_in_is_refused() {
        let (_d, store) = store_with(RunState::Cancelled).await;
        let e = transition(&store, "r1", RunState::Queued, RunState::Provisioning, RunUpdate::default()).await.unwrap_err();
        assert_eq!(e.to_string(), "run `r1` was expected to be queued but is cancelled");
        assert_eq!(store.run("r1").await.unwrap().unwrap().state, "cancelled");
        let end = RunEnd {
            run_id: "r1".into(),
            from: String::new(),
            state: String::new(),
            outcome: "success".into(),
            reason: None,
            result_json: "{}".into(),
            finished_at: Utc::now(),
            recorders: vec!["embedded".into()],
        };
        let e = finish(&store, RunState::Reporting, RunState::Done, end).await.unwrap_err();
        assert!(matches!(e, TransitionError::Stale { .. }), "{e}");
        assert_eq!(store.outbox_for_run("r1").await.unwrap().len(), 0, "a refused end queues nothing");
    }
}
