//! The access service under tokio's paused clock, with a real SQLite store and
//! a recording `Machines` passed in explicitly (the VM manager is exercised in
//! the end-to-end test).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::policy::tests::fleet;
use super::*;
use crate::clock::Clock;
use crate::config::Image;
use crate::store::{RunRow, Store};

/// Records what the service asked of the machines, with the (paused) clock's time.
struct Recorder {
    clock: Clock,
    log: Mutex<Vec<(DateTime<Utc>, String)>>,
    fail_launch: bool,
}

impl Recorder {
    fn new(clock: Clock) -> Arc<Recorder> {
        Arc::new(Recorder { clock, log: Mutex::new(Vec::new()), fail_launch: false })
    }
    fn note(&self, s: String) {
        self.log.lock().unwrap().push((self.clock.now(), s));
    }
    fn entries(&self) -> Vec<String> {
        self.log.lock().unwrap().iter().map(|(_, s)| s.clone()).collect()
    }
    fn when(&self, prefix: &str) -> Option<DateTime<Utc>> {
        self.log.lock().unwrap().iter().find(|(_, s)| s.starts_with(prefix)).map(|(t, _)| *t)
    }
}

impl Machines for Recorder {
    fn launch<'a>(
        &'a self,
        grant_id: &'a str,
        image: &'a Image,
        _ca: &'a str,
        _until: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<Placed, MachineError>> {
        Box::pin(async move {
            self.note(format!("launch {} for {grant_id}", image.name));
            if self.fail_launch {
                return Err(MachineError { step: "launching", vm: format!("vm-{grant_id}"), message: "no host has room".into() });
            }
            Ok(Placed { name: format!("vm-{grant_id}"), host: "127.0.0.1".into(), port: 22210 })
        })
    }
    fn locate<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<Placed, MachineError>> {
        Box::pin(async move { Ok(Placed { name: vm.into(), host: "127.0.0.1".into(), port: 22211 }) })
    }
    fn hold<'a>(&'a self, vm: &'a str, until: DateTime<Utc>) -> BoxFuture<'a, Result<(), MachineError>> {
        Box::pin(async move {
            self.note(format!("hold {vm} until {}", until.format("%H:%M")));
            Ok(())
        })
    }
    fn destroy<'a>(&'a self, vm: &'a str) -> BoxFuture<'a, Result<(), MachineError>> {
        Box::pin(async move {
            self.note(format!("destroy {vm}"));
            Ok(())
        })
    }
    fn run_ops<'a>(&'a self, vm: &'a str, _image: &'a Image, ops: Vec<keys::KeyOp>) -> BoxFuture<'a, Result<(), MachineError>> {
        Box::pin(async move {
            let first = match &ops[0] {
                keys::KeyOp::Exec { command, .. } => command.clone(),
                keys::KeyOp::Upload { path, .. } => path.clone(),
            };
            let verb = if first.starts_with("umask") { "install" } else { "remove" };
            self.note(format!("{verb} keys in {vm}"));
            Ok(())
        })
    }
}

struct Env {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Store,
    clock: Clock,
    machines: Arc<Recorder>,
    fleet: Arc<crate::config::Fleet>,
    ca: FleetCa,
}

const T0: (i32, u32, u32, u32, u32, u32) = (2026, 5, 4, 9, 0, 0);

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = Store::open(&path).await.unwrap();
    let clock = Clock::starting_at(Utc.with_ymd_and_hms(T0.0, T0.1, T0.2, T0.3, T0.4, T0.5).unwrap());
    let ca = FleetCa::load_or_create(dir.path()).unwrap();
    Env { machines: Recorder::new(clock), path, store, clock, fleet: Arc::new(fleet()), ca, _dir: dir }
}

impl Env {
    async fn start(&self) -> Access {
        Access::start(self.fleet.clone(), self.store.clone(), self.ca.clone(), self.machines.clone(), AccessConfig::new(self.clock))
            .await
            .unwrap()
    }

    async fn held_run(&self, id: &str, finished: DateTime<Utc>) {
        self.store
            .insert_run(&RunRow {
                id: id.into(),
                job: "build".into(),
                image: "tiny".into(),
                trigger: "manual".into(),
                requested_by: None,
                state: "held".into(),
                host: Some("local".into()),
                vm_name: Some(format!("vm-run-{id}")),
                scheduled_at: None,
                created_at: finished,
                started_at: Some(finished),
                finished_at: Some(finished),
                outcome: Some("failure".into()),
                reason: None,
                result_json: None,
                log_path: None,
            })
            .await
            .unwrap();
    }

    /// Polls (in paused time) until the grant reaches `state`.
    async fn wait_state(&self, access: &Access, id: &str, state: GrantState) -> Grant {
        let deadline = self.clock.now() + chrono::Duration::days(2);
        loop {
            let g = access.get(id).await.unwrap();
            if g.state == state && (g.cleaned_at.is_some() || !state.is_final()) {
                return g;
            }
            assert!(self.clock.now() < deadline, "grant {id} stayed {} (wanted {state})", g.state);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn trail(&self, id: &str) -> Vec<String> {
        self.store.audit_of(id).await.unwrap().into_iter().map(|(_, a)| format!("{} {}", a.actor, a.action)).collect()
    }
}

fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

#[tokio::test(start_paused = true)]
async fn maintainer_grant_on_an_image_expires_on_time_and_its_vm_goes() {
    let e = env().await;
    let access = e.start().await;
    let a = access.request("mia", Target::Image("tiny".into()), mins(30), "flaky test on tiny").await.unwrap();
    let g = a.grant.clone();
    assert_eq!(g.state, GrantState::Active);
    assert_eq!(g.decided_by.as_deref(), Some("policy"));
    assert_eq!(g.ends_at, Some(g.starts_at.unwrap() + chrono::Duration::minutes(30)));
    // mia has one key: one certificate, and the command line to use it.
    assert_eq!(a.certificates.len(), 1);
    let cert = ssh_key::Certificate::from_openssh(&a.certificates[0].certificate).unwrap();
    assert_eq!(cert.valid_principals(), ["root".to_string()]);
    assert_eq!(cert.key_id(), format!("paddock:mia:{}", g.id));
    assert_eq!(cert.valid_before(), g.ends_at.unwrap().timestamp() as u64);
    assert_eq!(cert.valid_after(), (g.starts_at.unwrap() - chrono::Duration::seconds(60)).timestamp() as u64);
    assert_eq!(a.ssh_command.as_deref(), Some("ssh -p 22210 -i KEY -o CertificateFile=CERT root@127.0.0.1"));

    let done = e.wait_state(&access, &g.id, GrantState::Expired).await;
    let destroyed = e.machines.when(&format!("destroy vm-{}", g.id)).expect("the grant's own VM is destroyed");
    // Not before its end, and promptly after it.
    let end = g.ends_at.unwrap();
    assert!(destroyed >= end && destroyed - end < chrono::Duration::seconds(5), "destroyed at {destroyed}, end {end}");
    assert!(done.cleaned_at.is_some());
    assert_eq!(e.machines.entries(), [format!("launch tiny for {}", g.id), format!("destroy vm-{}", g.id)]);
    assert_eq!(
        e.trail(&g.id).await,
        ["mia request", "policy approve", "paddock active", "paddock certificate", "paddock expire", "paddock cleanup"]
    );
}

#[tokio::test(start_paused = true)]
async fn longer_requests_wait_for_an_admin_who_approves_or_denies() {
    let e = env().await;
    let access = e.start().await;
    let a = access.request("mia", Target::Image("tiny".into()), mins(180), "long bisect").await.unwrap();
    assert_eq!(a.grant.state, GrantState::Pending);
    assert!(a.certificates.is_empty() && e.machines.entries().is_empty());
    // Neither the requester nor another maintainer may approve.
    for who in ["mia", "otto"] {
        assert!(matches!(access.approve(who, &a.grant.id).await, Err(AccessError::Forbidden(_))));
    }
    let ok = access.approve("ada", &a.grant.id).await.unwrap();
    assert_eq!(ok.grant.state, GrantState::Active);
    assert_eq!(ok.grant.decided_by.as_deref(), Some("ada"));
    assert!(matches!(access.approve("ada", &a.grant.id).await, Err(AccessError::WrongState { .. })));

    let b = access.request("otto", Target::Image("tiny".into()), mins(10), "not my job").await.unwrap();
    assert_eq!(b.grant.state, GrantState::Pending);
    let denied = access.deny("ada", &b.grant.id, "use your own image").await.unwrap();
    assert_eq!(denied.state, GrantState::Denied);
    assert!(matches!(access.approve("ada", &b.grant.id).await, Err(AccessError::WrongState { .. })));
    assert_eq!(e.trail(&b.grant.id).await, ["otto request", "ada deny"]);

    // Beyond max_grant nothing is recorded as a grant at all.
    assert!(matches!(access.request("ada", Target::Image("tiny".into()), mins(9 * 60), "x").await, Err(AccessError::Forbidden(_))));
    assert!(matches!(access.request("vic", Target::Image("tiny".into()), mins(5), "x").await, Err(AccessError::Forbidden(_))));
}

#[tokio::test(start_paused = true)]
async fn extend_is_capped_and_revoke_ends_at_once() {
    let e = env().await;
    let access = e.start().await;
    let a = access.request("mia", Target::Image("tiny".into()), mins(60), "debug").await.unwrap();
    let id = a.grant.id.clone();
    let start = a.grant.starts_at.unwrap();
    // mia may extend her own grant up to her auto-approval limit (2h in total): capped.
    let x = access.extend("mia", &id, mins(5 * 60)).await.unwrap();
    assert_eq!(x.grant.ends_at, Some(start + chrono::Duration::hours(2)));
    assert_eq!(x.certificates.len(), 1, "an extension comes with fresh certificates");
    let c = ssh_key::Certificate::from_openssh(&x.certificates[0].certificate).unwrap();
    assert_eq!(c.valid_before(), (start + chrono::Duration::hours(2)).timestamp() as u64);
    assert_ne!(c.serial(), a.certificates[0].serial);
    assert!(matches!(access.extend("mia", &id, mins(10)).await, Err(AccessError::Forbidden(_))));
    assert!(matches!(access.extend("otto", &id, mins(10)).await, Err(AccessError::Forbidden(_))));
    // An admin may go on, up to max_grant (8h).
    let y = access.extend("ada", &id, mins(24 * 60)).await.unwrap();
    assert_eq!(y.grant.ends_at, Some(start + chrono::Duration::hours(8)));

    assert!(matches!(access.revoke("otto", &id).await, Err(AccessError::Forbidden(_))));
    let r = access.revoke("mia", &id).await.unwrap();
    assert_eq!(r.state, GrantState::Revoked);
    e.wait_state(&access, &id, GrantState::Revoked).await;
    let t = e.machines.when(&format!("destroy vm-{id}")).unwrap();
    assert!(t - r.starts_at.unwrap() < chrono::Duration::minutes(1), "revoke tears down at once, not at the end");
    assert_eq!(
        e.trail(&id).await,
        [
            "mia request",
            "policy approve",
            "paddock active",
            "paddock certificate",
            "mia extend",
            "paddock certificate",
            "ada extend",
            "paddock certificate",
            "mia revoke",
            "paddock cleanup"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn held_run_vm_is_kept_for_the_grant_and_released_after_a_restart_across_its_end() {
    let e = env().await;
    let access = e.start().await;
    let finished = e.clock.now();
    e.held_run("r1", finished).await;
    let a = access.request("mia", Target::Run("r1".into()), mins(90), "why does it fail only here").await.unwrap();
    let g = a.grant.clone();
    assert_eq!(g.state, GrantState::Active);
    assert_eq!(g.vm_name.as_deref(), Some("vm-run-r1"));
    assert!(!g.vm_owned);
    // The run's own hold is 1h; the grant keeps the VM until its end (10:30).
    assert_eq!(g.run_hold_until, Some(finished + chrono::Duration::hours(1)));
    assert_eq!(e.machines.entries(), ["hold vm-run-r1 until 10:30"]);

    // The daemon goes down (every handle dropped ends the owner) and comes back after the end.
    drop(access);
    tokio::time::advance(Duration::from_secs(3 * 3600)).await;
    let access = e.start().await;
    let done = e.wait_state(&access, &g.id, GrantState::Expired).await;
    assert!(done.cleaned_at.is_some());
    // The hold (10:00) and the grant (10:30) are both over: released now (12:00).
    assert_eq!(e.machines.entries(), ["hold vm-run-r1 until 10:30", "hold vm-run-r1 until 12:00"]);
    assert!(e.trail(&g.id).await.ends_with(&["paddock expire".to_string(), "paddock cleanup".to_string()]));
    let _ = &e.path;
}

#[tokio::test(start_paused = true)]
async fn a_run_that_is_not_held_cannot_be_entered() {
    let e = env().await;
    let access = e.start().await;
    e.held_run("r2", e.clock.now()).await;
    e.store.transition_run("r2", "held", "failed", Default::default()).await.unwrap();
    let err = access.request("mia", Target::Run("r2".into()), mins(10), "x").await.unwrap_err();
    assert_eq!(err.to_string(), "run r2 is not held; only a held run's VM can be entered");
    assert!(matches!(access.request("mia", Target::Run("nope".into()), mins(10), "x").await, Err(AccessError::UnknownRun(_))));
}

#[tokio::test(start_paused = true)]
async fn ca_less_image_gets_keys_installed_and_removed() {
    let e = env().await;
    let access = e.start().await;
    // `other` does not trust the CA; otto maintains its job.
    let a = access.request("otto", Target::Image("other".into()), mins(20), "dropbear box").await.unwrap();
    assert!(a.certificates.is_empty());
    assert!(a.grant.keys_installed);
    assert_eq!(a.ssh_command.as_deref(), Some("ssh -p 22210 -i KEY otto@127.0.0.1").map(|_| "ssh -p 22210 -i KEY root@127.0.0.1"));
    access.revoke("ada", &a.grant.id).await.unwrap();
    let g = e.wait_state(&access, &a.grant.id, GrantState::Revoked).await;
    assert!(!g.keys_installed);
    let id = &a.grant.id;
    // Its own VM goes, and the keys with it.
    assert_eq!(e.machines.entries(), [format!("launch other for {id}"), format!("install keys in vm-{id}"), format!("destroy vm-{id}")]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_launch_fails_the_grant() {
    let mut e = env().await;
    e.machines = Arc::new(Recorder { clock: e.clock, log: Mutex::new(Vec::new()), fail_launch: true });
    let access = e.start().await;
    let err = access.request("mia", Target::Image("tiny".into()), mins(10), "x").await.unwrap_err();
    assert!(matches!(err, AccessError::Provision { .. }), "{err}");
    let g = &access.list(&[GrantState::Failed]).await.unwrap()[0];
    assert_eq!(g.detail.as_deref(), Some("launching VM vm-".to_string() + &g.id + ": no host has room").as_deref());
}

/// 403 with the reason, over HTTP, for each access endpoint class a role may not use.
#[tokio::test]
async fn http_forbids_what_a_role_may_not_do() {
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt;

    let e = env().await;
    let access = e.start().await;
    let executor = Arc::new(crate::runs::Executor::new(
        e.fleet.clone(),
        e.store.clone(),
        crate::runs::ExecutorConfig::new(e.path.with_extension("logs"), vec![]),
        crate::outbox::Waker::default(),
    ));
    let (_coordinator, runs) = crate::runs::Coordinator::new(e.fleet.clone(), e.store.clone(), executor);
    let (_tx, hosts) = tokio::sync::watch::channel(Vec::new());
    let mut state = crate::api::ApiState::new(e.fleet.clone(), e.store.clone(), runs, hosts);
    state.access = Some(access);
    let state = Arc::new(state);
    let token = |u: &'static str| {
        let store = e.store.clone();
        async move { store.create_token(u).await.unwrap().token }
    };
    let (vic, otto, mia) = (token("vic").await, token("otto").await, token("mia").await);
    let call = |method: Method, uri: String, tok: String, body: &'static str| {
        let state = state.clone();
        async move {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .header("authorization", format!("Bearer {tok}"))
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            let resp = crate::api::router(state).oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            (status, serde_json::from_slice::<serde_json::Value>(&bytes).unwrap())
        }
    };
    // A viewer may not ask for access at all.
    let (st, b) = call(Method::POST, "/api/v1/access".into(), vic, r#"{"image":"tiny","duration":"1h","reason":"look"}"#).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");
    assert!(b["detail"].as_str().unwrap().contains("vic"), "{b}");
    // A maintainer's longer request waits for an admin ...
    let (st, b) = call(Method::POST, "/api/v1/access".into(), mia.clone(), r#"{"image":"tiny","duration":"3h","reason":"long"}"#).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    // ... and another maintainer may not approve or deny it.
    for verb in ["approve", "deny"] {
        let (st, b) = call(Method::POST, format!("/api/v1/access/{id}/{verb}"), otto.clone(), "{}").await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{verb}: {b}");
        assert!(b["detail"].as_str().unwrap().contains("not an admin"), "{b}");
    }
    // Nor may the requester approve their own.
    let (st, _) = call(Method::POST, format!("/api/v1/access/{id}/approve"), mia, "{}").await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // An admin may.
    let ada = token("ada").await;
    let (st, b) = call(Method::POST, format!("/api/v1/access/{id}/approve"), ada, "{}").await;
    assert!(st.is_success(), "{st}: {b}");
    assert_ne!(b["state"], "pending", "{b}");
    // Another maintainer may not revoke it either.
    let (st, b) = call(Method::POST, format!("/api/v1/access/{id}/revoke"), otto.clone(), "{}").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{b}");

    // Every refused decision has its audit line, as a refused run trigger does.
    let refused: Vec<(String, String)> = e
        .store
        .audit_entries(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.detail.starts_with("refused: "))
        .map(|a| (a.actor, a.action))
        .collect();
    let r = |actor: &str, action: &str| (actor.to_string(), action.to_string());
    assert_eq!(
        refused,
        [
            r("otto", "access.revoke"),
            r("mia", "access.approve"),
            r("otto", "access.deny"),
            r("otto", "access.approve"),
            r("vic", "access.request"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_absurd_extension_is_refused_and_a_panicking_owner_is_restarted_with_grants_still_expiring() {
    let e = env().await;
    let access = e.start().await;
    let a = access.request("mia", Target::Image("tiny".into()), mins(30), "debug").await.unwrap();
    let id = a.grant.id.clone();
    // 100000000 days overflows any time: refused (the API refuses it earlier, at parse time).
    let absurd = Duration::from_secs(100_000_000 * 86_400);
    assert!(matches!(access.extend("mia", &id, absurd).await, Err(AccessError::Invalid(_))));
    assert_eq!(access.health().restarts, 0);

    // A bug in the owner (injected on purpose): it is started again from the store.
    access.inject_owner_panic();
    let b = access.request("mia", Target::Image("tiny".into()), mins(10), "after the crash").await.unwrap();
    assert_eq!(b.grant.state, GrantState::Active, "the restarted owner serves requests");
    let h = access.health();
    assert_eq!(h.restarts, 1);
    assert!(h.last_failure.as_deref().is_some_and(|w| w.contains("injected on purpose")), "{h:?}");
    // Grants from before and after the crash still end on time, and revoke still works.
    e.wait_state(&access, &b.grant.id, GrantState::Expired).await;
    let g = e.wait_state(&access, &id, GrantState::Expired).await;
    let destroyed = e.machines.when(&format!("destroy vm-{id}")).unwrap();
    assert!(destroyed >= g.ends_at.unwrap() && destroyed - g.ends_at.unwrap() < chrono::Duration::seconds(5));
    let c = access.request("mia", Target::Image("tiny".into()), mins(10), "revoke me").await.unwrap();
    assert_eq!(access.revoke("mia", &c.grant.id).await.unwrap().state, GrantState::Revoked);
}
