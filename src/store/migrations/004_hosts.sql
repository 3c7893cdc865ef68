-- Donated hosts: an admin's drain or paddock's quarantine (one row while the
-- host is blocked), every launch attempt with its boot time, up/down periods,
-- and the image volumes paddock uploaded to each host.

CREATE TABLE host_blocks (
    host    TEXT PRIMARY KEY,
    kind    TEXT NOT NULL CHECK (kind IN ('drained', 'quarantined')),
    reason  TEXT NOT NULL,
    by      TEXT NOT NULL,
    at      TEXT NOT NULL
) STRICT;

CREATE TABLE host_launches (
    id       INTEGER PRIMARY KEY,
    host     TEXT NOT NULL,
    vm       TEXT NOT NULL,
    at       TEXT NOT NULL,
    ok       INTEGER NOT NULL,
    boot_ms  INTEGER,
    error    TEXT
) STRICT;
CREATE INDEX host_launches_host ON host_launches(host, id);

-- A period is open (no `until`) while it lasts.
CREATE TABLE host_periods (
    id      INTEGER PRIMARY KEY,
    host    TEXT NOT NULL,
    up      INTEGER NOT NULL,
    since   TEXT NOT NULL,
    until   TEXT,
    reason  TEXT
) STRICT;
CREATE INDEX host_periods_host ON host_periods(host, id);

CREATE TABLE host_volumes (
    host         TEXT NOT NULL,
    image        TEXT NOT NULL,
    role         TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    pool         TEXT NOT NULL,
    volume       TEXT NOT NULL,
    path         TEXT NOT NULL,
    uploaded_at  TEXT NOT NULL,
    PRIMARY KEY (host, image, role)
) STRICT;
