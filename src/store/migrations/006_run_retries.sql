-- A run that re-runs another after an infrastructure failure (a job's
-- `retry_infrastructure`): which run it replaces, which attempt it is of how
-- many, and the line that says why ("retry 1 of 2 after infrastructure failure
-- on host donor"). A table of its own so the `runs` row stays as it was; the row
-- is written in the same transaction that ends the replaced run.

CREATE TABLE run_retries (
    run_id    TEXT PRIMARY KEY REFERENCES runs(id),
    retry_of  TEXT NOT NULL UNIQUE REFERENCES runs(id),
    attempt   INTEGER NOT NULL,     -- 2 for the first retry
    attempts  INTEGER NOT NULL,     -- 1 + the job's retry_infrastructure when it was made
    note      TEXT NOT NULL
) STRICT;
