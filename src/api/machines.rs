//! `GET /api/v1/machines`: the persistent machines of `fleet.toml` (`[[machines]]`) with what
//! they are doing, read from the runs in the store (a machine has no VM row): idle, running
//! one run, or with runs queued for their turn, and the last run that ended on each. Read like
//! the fleet and VM views.

use axum::Json;
use axum::extract::State;

use super::wire::{LastResultOut, MachineOut};
use super::{ApiError, Reader, Shared};
use crate::runs::RunState;

pub async fn list(State(s): State<Shared>, _r: Reader) -> Result<Json<Vec<MachineOut>>, ApiError> {
    Ok(Json(machines_of(&s).await?))
}

pub(crate) async fn machines_of(s: &Shared) -> Result<Vec<MachineOut>, ApiError> {
    let fleet = s.fleet();
    if fleet.machines.is_empty() {
        return Ok(Vec::new());
    }
    let unfinished = s.store.unfinished_runs().await?;
    let latest = s.store.latest_finished_runs().await?;
    Ok(fleet
        .machines
        .iter()
        .map(|m| {
            let mine = || unfinished.iter().filter(|r| r.image == m.name);
            // A run waits for the machine's turn as `queued`; the one past that has the machine.
            let running = mine().find(|r| RunState::from_db(&r.state).is_some_and(|st| st.is_active() && st != RunState::Queued));
            let queued = mine().filter(|r| RunState::from_db(&r.state) == Some(RunState::Queued)).count();
            let last = latest.iter().filter(|r| r.image == m.name).max_by_key(|r| r.finished_at).map(|r| LastResultOut {
                image: r.image.clone(),
                run_id: r.id.clone(),
                outcome: r.outcome.clone().unwrap_or_default(),
                finished_at: r.finished_at,
            });
            MachineOut {
                name: m.name.clone(),
                host: m.host.clone(),
                domain: m.domain.clone(),
                snapshot: m.snapshot.clone(),
                after: m.after.as_str().into(),
                state: match (running, queued) {
                    (Some(_), _) => "running",
                    (None, 0) => "idle",
                    (None, _) => "queued",
                }
                .into(),
                run_id: running.map(|r| r.id.clone()),
                queued,
                last,
            }
        })
        .collect())
}
