-- The daemon's state: VMs it made, runs, the outbox of results to forward,
-- and the scheduler's memory of fires.

CREATE TABLE vms (
    name         TEXT PRIMARY KEY,          -- libvirt domain name, `paddock-<instance>-<id>`
    run_id       TEXT,
    image        TEXT NOT NULL,
    host         TEXT,
    state        TEXT NOT NULL,             -- vm::VmState
    ssh_port     INTEGER,
    overlay_path TEXT,
    console_path TEXT,
    error        TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    ready_at     TEXT,
    hold_until   TEXT
) STRICT;
CREATE INDEX vms_state ON vms(state);
CREATE INDEX vms_run ON vms(run_id);

CREATE TABLE runs (
    id            TEXT PRIMARY KEY,
    job           TEXT NOT NULL,
    image         TEXT NOT NULL,
    trigger       TEXT NOT NULL,            -- schedule | manual | rerun
    requested_by  TEXT,
    state         TEXT NOT NULL,            -- runs::RunState
    current_step  INTEGER,
    host          TEXT,
    vm_name       TEXT,
    scheduled_at  TEXT,
    created_at    TEXT NOT NULL,
    started_at    TEXT,
    finished_at   TEXT,
    outcome       TEXT,                     -- success | failure | infrastructure | cancelled | interrupted
    reason        TEXT,
    result_json   TEXT,
    log_path      TEXT
) STRICT;
CREATE INDEX runs_job_image ON runs(job, image, created_at);
CREATE INDEX runs_state ON runs(state);

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    run_id          TEXT NOT NULL,
    recorder        TEXT NOT NULL,
    payload         TEXT NOT NULL,          -- the result document, JSON
    created_at      TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    delivered_at    TEXT,
    remote_key      TEXT,
    UNIQUE (run_id, recorder)
) STRICT;
CREATE INDEX outbox_pending ON outbox(recorder, delivered_at, id);

CREATE TABLE schedule_state (
    job         TEXT PRIMARY KEY,
    last_fire   TEXT NOT NULL               -- the last cron tick handled (fired or skipped)
) STRICT;

CREATE TABLE events (
    id        INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    kind      TEXT NOT NULL,                -- e.g. reaped_domain, fire_skipped, host_down
    subject   TEXT NOT NULL,
    detail    TEXT NOT NULL
) STRICT;
CREATE INDEX events_kind ON events(kind, at);
