-- Named users' API tokens, access requests and grants, and the audit trail.

CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,           -- public part, shown in listings
    user        TEXT NOT NULL,
    hash        TEXT NOT NULL,              -- SHA-256 of the secret, hex
    created_at  TEXT NOT NULL,
    revoked_at  TEXT,
    last_used_at TEXT
) STRICT;
CREATE INDEX api_tokens_user ON api_tokens(user);

CREATE TABLE access_requests (
    id           TEXT PRIMARY KEY,
    user         TEXT NOT NULL,
    image        TEXT,
    run_id       TEXT,
    duration_s   INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    state        TEXT NOT NULL,             -- pending | approved | denied | active | expired | revoked
    decided_by   TEXT,
    created_at   TEXT NOT NULL,
    starts_at    TEXT,
    ends_at      TEXT,
    vm_name      TEXT,
    detail       TEXT
) STRICT;
CREATE INDEX access_requests_state ON access_requests(state);

CREATE TABLE audit (
    id       INTEGER PRIMARY KEY,
    at       TEXT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    detail   TEXT NOT NULL
) STRICT;
CREATE INDEX audit_at ON audit(at);
