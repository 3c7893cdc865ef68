-- Grants: where a grant's VM is reached, whether paddock started it for the
-- grant, the hold it extended, installed keys; and every certificate issued.

ALTER TABLE access_requests ADD COLUMN ssh_host TEXT;
ALTER TABLE access_requests ADD COLUMN ssh_port INTEGER;
ALTER TABLE access_requests ADD COLUMN login_user TEXT;
-- 1 when the VM was booted only for this grant (torn down at its end).
ALTER TABLE access_requests ADD COLUMN vm_owned INTEGER NOT NULL DEFAULT 0;
-- A held run's own hold end, from before grants extended it.
ALTER TABLE access_requests ADD COLUMN run_hold_until TEXT;
-- 1 while the user's keys sit in the guest's authorized_keys (CA-less images).
ALTER TABLE access_requests ADD COLUMN keys_installed INTEGER NOT NULL DEFAULT 0;
-- When an ended grant's clean-up (keys, VM) was finished; NULL while owed.
ALTER TABLE access_requests ADD COLUMN cleaned_at TEXT;
CREATE INDEX access_requests_vm ON access_requests(vm_name);

-- The serial of a certificate is its row id: unique by construction.
CREATE TABLE certificates (
    serial        INTEGER PRIMARY KEY AUTOINCREMENT,
    grant_id      TEXT NOT NULL,
    user          TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    principal     TEXT NOT NULL,
    valid_after   TEXT NOT NULL,
    valid_before  TEXT NOT NULL,
    issued_at     TEXT NOT NULL
) STRICT;
CREATE INDEX certificates_grant ON certificates(grant_id);
