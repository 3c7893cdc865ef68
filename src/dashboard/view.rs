//! What the dashboard pages show, computed from the store and the fleet into
//! plain view structs the templates read.

use askama::Template;
use askama_web::WebTemplate;
use chrono::{DateTime, Utc};

use crate::api::wire::{HostOut, RunOut, StatusOut, StepOut};
use crate::api::{ApiError, Shared};
use crate::runs::RunState;
use crate::store::{RunFilter, RunRow};

pub struct HostView {
    pub host: HostOut,
    pub health: &'static str,
    pub vm_pct: u64,
    pub mem_pct: u64,
    pub cpu_pct: u64,
}

pub struct VmView {
    pub name: String,
    pub host: String,
    pub image: String,
    pub state: String,
    pub run_id: Option<String>,
    pub port: String,
    pub age: String,
}

/// A persistent machine and what it is doing.
pub struct MachineView {
    pub name: String,
    pub host: String,
    pub domain: String,
    pub snapshot: String,
    /// "idle", "running", "queued".
    pub state: String,
    pub run_id: Option<String>,
    /// "2 queued", or empty.
    pub queued: String,
    pub last: Option<Cell>,
}

/// A warm-start template on a host.
pub struct TemplateView {
    pub host: String,
    pub image: String,
    pub key: String,
    pub state: String,
    pub made: String,
    pub size: String,
    pub clones: usize,
    /// Where it is when not in the state directory (a host's pool), or why a pool host's
    /// templates are not shown.
    pub note: String,
}

pub struct RunView {
    pub run: RunOut,
    pub age: String,
}

pub struct Cell {
    pub run_id: String,
    pub outcome: String,
    /// CSS class: ok, fail, infra, other.
    pub class: &'static str,
    pub when: String,
}

pub struct GridRow {
    pub job: String,
    pub failing: bool,
    pub cells: Vec<Option<Cell>>,
}

pub struct Upcoming {
    pub at: String,
    pub in_: String,
    pub job: String,
    pub images: String,
}

pub struct Grant {
    pub user: String,
    pub target: String,
    pub ends: String,
    pub reason: String,
}

pub struct Held {
    pub run_id: String,
    pub job: String,
    pub image: String,
    pub vm: String,
    pub until: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "dashboard.html")]
pub struct Dashboard {
    pub status: StatusOut,
    pub hosts: Vec<HostView>,
    pub vms: Vec<VmView>,
    pub templates: Vec<TemplateView>,
    pub machines: Vec<MachineView>,
    pub active: Vec<RunView>,
    pub follow: Option<RunOut>,
    pub images: Vec<String>,
    pub grid: Vec<GridRow>,
    pub upcoming: Vec<Upcoming>,
    pub grants: Vec<Grant>,
    pub held: Vec<Held>,
    pub recent: Vec<RunView>,
    pub now: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "run.html")]
pub struct RunPage {
    pub run: RunOut,
    pub steps: Vec<StepOut>,
    pub log: String,
    pub duration: String,
    /// "retry 1 of 2 after infrastructure failure on host donor", with the run it replaces.
    pub retry: Option<crate::api::wire::RetryOut>,
    /// The run that re-runs this one.
    pub retried_by: Option<String>,
}

fn pct(used: u64, cap: u64) -> u64 {
    (used * 100).checked_div(cap).map_or(0, |p| p.min(100))
}

/// "42s", "7m", "3h 5m", "2d 4h": short enough for a table cell.
pub fn human(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// "5m ago", or "in 5m" for a time still to come (a hold's or grant's end).
fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    if secs < 0 { format!("in {}", human(-secs)) } else { format!("{} ago", human(secs)) }
}

fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "success" => "ok",
        "build-failure" => "fail",
        "infrastructure" | "interrupted" => "infra",
        _ => "other",
    }
}

pub async fn dashboard(s: &Shared, follow: Option<&str>) -> Result<Dashboard, ApiError> {
    let now = Utc::now();
    let status = crate::api::fleet_status(s).await?;
    let hosts = crate::api::fleet_hosts(s)
        .await?
        .into_iter()
        .map(|h| HostView {
            health: match h.up {
                Some(true) => "up",
                Some(false) => "down",
                None => "unknown",
            },
            vm_pct: pct(h.used.vms, h.capacity.vms),
            mem_pct: pct(h.used.memory_mib, h.capacity.memory_mib),
            cpu_pct: pct(h.used.vcpus, h.capacity.vcpus),
            host: h,
        })
        .collect();
    let vms = crate::api::fleet_vms(s)
        .await?
        .into_iter()
        .map(|v| VmView {
            name: v.name,
            host: v.host.unwrap_or_else(|| "-".into()),
            image: v.image,
            // A ready-pool clone belongs to no run yet.
            state: if v.run_id.as_deref() == Some(crate::vm::READY_POOL_RUN) { format!("{} (ready pool)", v.state) } else { v.state },
            run_id: v.run_id.filter(|r| r != crate::vm::READY_POOL_RUN),
            port: v.ssh_port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            age: human(v.age_s),
        })
        .collect();
    let templates = crate::api::templates_of(s)
        .await?
        .into_iter()
        .map(|t| TemplateView {
            host: t.host.unwrap_or_else(|| "-".into()),
            image: t.image.unwrap_or_else(|| "-".into()),
            key: t.key.chars().take(16).collect(),
            state: t.state,
            made: t.made_at.map(|m| ago(m, now)).unwrap_or_else(|| "-".into()),
            size: crate::vm::template::list::human_size(t.disk_bytes),
            clones: t.clones,
            // A pool's templates are the VM manager's last listing of it: say how old.
            note: match (&t.error, &t.pool, t.listed_at) {
                (Some(e), _, Some(at)) if t.pool.is_some() => format!("{e} (tried {})", ago(at, now)),
                (Some(e), _, _) => e.clone(),
                (None, Some(p), Some(at)) => format!("pool {p}, listed {}", ago(at, now)),
                (None, Some(p), None) => format!("pool {p}"),
                (None, None, _) => String::new(),
            },
        })
        .collect();
    let machines = crate::api::machines_of(s)
        .await?
        .into_iter()
        .map(|m| MachineView {
            name: m.name,
            host: m.host,
            domain: m.domain,
            snapshot: m.snapshot.unwrap_or_else(|| "-".into()),
            state: m.state,
            run_id: m.run_id,
            queued: if m.queued > 0 { format!("{} queued", m.queued) } else { String::new() },
            last: m.last.map(|l| Cell {
                class: outcome_class(&l.outcome),
                when: l.finished_at.map(|t| ago(t, now)).unwrap_or_default(),
                run_id: l.run_id,
                outcome: l.outcome,
            }),
        })
        .collect();
    let unfinished = s.store.unfinished_runs().await?;
    let view = |r: &RunRow| RunView { run: crate::api::run_out(r), age: ago(r.created_at, now) };
    let mut active: Vec<RunView> =
        unfinished.iter().filter(|r| RunState::from_db(&r.state).is_some_and(|st| st.is_active())).map(view).collect();
    active.reverse(); // newest first
    let follow = match follow {
        Some(id) => s.store.run(id).await?.map(|r| crate::api::run_out(&r)),
        // The newest run that is past the queue has output worth watching.
        None => active.iter().find(|r| r.run.state != RunState::Queued.as_db()).or(active.first()).map(|r| r.run.clone()),
    };

    // The job x platform grid: one column per image any job uses, one row per job.
    let latest = s.store.latest_finished_runs().await?;
    let fleet = s.fleet();
    let mut images: Vec<String> = fleet.jobs.iter().flat_map(|j| j.images.iter().cloned()).collect();
    images.sort();
    images.dedup();
    let mut rows: Vec<(GridRow, Option<DateTime<Utc>>)> = fleet
        .jobs
        .iter()
        .map(|j| {
            let mut newest: Option<DateTime<Utc>> = None;
            let cells: Vec<Option<Cell>> = images
                .iter()
                .map(|i| {
                    let r = latest.iter().find(|r| r.job == j.name && r.image == *i)?;
                    let t = r.finished_at.unwrap_or(r.created_at);
                    newest = newest.max(Some(t));
                    let outcome = r.outcome.clone().unwrap_or_default();
                    Some(Cell { run_id: r.id.clone(), class: outcome_class(&outcome), outcome, when: ago(t, now) })
                })
                .collect();
            let failing = cells.iter().flatten().any(|c| c.class != "ok");
            (GridRow { job: j.name.clone(), failing, cells }, newest)
        })
        .collect();
    // Failures first; within each group the newest result first; never-run jobs last.
    rows.sort_by(|(a, ta), (b, tb)| b.failing.cmp(&a.failing).then(tb.cmp(ta)).then(a.job.cmp(&b.job)));
    let grid = rows.into_iter().map(|(r, _)| r).collect();

    let mut fires: Vec<(DateTime<Utc>, &crate::config::Job)> =
        fleet.jobs.iter().filter_map(|j| j.schedule.as_ref().and_then(|sc| sc.next_after(now)).map(|t| (t, j))).collect();
    fires.sort_by_key(|(t, j)| (*t, j.name.clone()));
    let upcoming = fires
        .into_iter()
        .take(10)
        .map(|(t, j)| Upcoming {
            at: t.format("%a %d %b %H:%M UTC").to_string(),
            in_: format!("in {}", human((t - now).num_seconds())),
            job: j.name.clone(),
            images: j.images.join(", "),
        })
        .collect();

    let grants = s
        .store
        .access_requests(Some("active"))
        .await?
        .into_iter()
        .map(|a| Grant {
            target: a.vm_name.or(a.run_id).or(a.image).unwrap_or_else(|| "-".into()),
            ends: a.ends_at.map(|t| format!("in {}", human((t - now).num_seconds()))).unwrap_or_else(|| "-".into()),
            user: a.user,
            reason: a.reason,
        })
        .collect();
    let vm_rows = s.store.vms().await?;
    let held = unfinished
        .iter()
        .filter(|r| r.state == RunState::Held.as_db())
        .map(|r| {
            let vm = vm_rows.iter().find(|v| Some(&v.name) == r.vm_name.as_ref());
            Held {
                run_id: r.id.clone(),
                job: r.job.clone(),
                image: r.image.clone(),
                vm: r.vm_name.clone().unwrap_or_else(|| "-".into()),
                until: vm
                    .and_then(|v| v.hold_until)
                    .map(|t| format!("in {}", human((t - now).num_seconds())))
                    .unwrap_or_else(|| "-".into()),
            }
        })
        .collect();
    let recent = s.store.runs(RunFilter { limit: Some(15), ..RunFilter::default() }).await?.iter().map(view).collect();
    Ok(Dashboard {
        status,
        hosts,
        vms,
        templates,
        machines,
        active,
        follow,
        images,
        grid,
        upcoming,
        grants,
        held,
        recent,
        now: now.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    })
}

pub async fn run_page(s: &Shared, id: &str) -> Result<RunPage, ApiError> {
    let row = s.store.run(id).await?.ok_or_else(|| ApiError::NotFound(format!("no run `{id}`")))?;
    // Without JS the page shows the log as it was when rendered (the last 500 lines).
    let log = match &row.log_path {
        Some(p) => {
            let p = std::path::PathBuf::from(p);
            tokio::task::spawn_blocking(move || crate::api::read_log_tail(&p, Some(500)))
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        }
        None => String::new(),
    };
    let duration = match (row.started_at, row.finished_at) {
        (Some(a), Some(b)) => human((b - a).num_seconds()),
        (Some(a), None) => format!("{} so far", human((Utc::now() - a).num_seconds())),
        _ => "-".into(),
    };
    let steps = crate::api::steps_of(&row);
    // A run whose log file is gone still has its steps' output in its result.
    let log =
        if log.is_empty() { steps.iter().map(|s| format!("== {} ({})\n{}{}", s.name, s.kind, s.output, s.errout)).collect() } else { log };
    let (retry, retried_by) = crate::api::retry_facts(&s.store, id).await?;
    Ok(RunPage { steps, run: crate::api::run_out(&row), log, duration, retry, retried_by })
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, Utc};

    use super::ago;

    #[test]
    fn a_time_still_to_come_is_not_ago() {
        let now = Utc::now();
        assert_eq!(ago(now - Duration::minutes(7), now), "7m ago");
        assert_eq!(ago(now + Duration::minutes(90), now), "in 1h 30m");
    }
}
