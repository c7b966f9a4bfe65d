-- Jobs, their attempts, every event their workers emitted, and the adapters they produced.
-- The CHECK constraints are a backstop: the Store's guarded UPDATEs refuse bad transitions first.

-- AUTOINCREMENT so a job id is never reused: each job's folder on disk is named after its id.
CREATE TABLE jobs (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    owner               TEXT    NOT NULL,
    name                TEXT    NOT NULL,
    spec                TEXT    NOT NULL,  -- trainer.protocol.JobSpec as JSON
    state               TEXT    NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    phase               TEXT,
    attempt             INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    created_at          REAL    NOT NULL,
    started_at          REAL,
    finished_at         REAL,
    guild_id            INTEGER,
    channel_id          INTEGER,
    status_message_id   INTEGER,
    completion_message_id INTEGER,  -- the "job finished" message that mentions the owner, once sent
    idempotency_key     TEXT UNIQUE,  -- NULLs never collide, so jobs without a key are unconstrained
    cancel_requested_by TEXT,
    error_kind          TEXT,
    error_message       TEXT,
    error_hint          TEXT,
    checkpoint_path     TEXT,
    adapter_path        TEXT,
    hub_state           TEXT    NOT NULL DEFAULT 'none'
                        CHECK (hub_state IN ('none', 'pushed', 'push_failed')),
    hub_url             TEXT,
    hub_error           TEXT,
    push_requested      INTEGER NOT NULL DEFAULT 0 CHECK (push_requested IN (0, 1)),  -- publish once done
    hub_private         INTEGER NOT NULL DEFAULT 1 CHECK (hub_private IN (0, 1))
);
CREATE INDEX jobs_state ON jobs (state);
CREATE INDEX jobs_owner_created ON jobs (owner, created_at);

CREATE TABLE attempts (
    job_id       INTEGER NOT NULL REFERENCES jobs (id),
    number       INTEGER NOT NULL CHECK (number >= 1),
    started_at   REAL    NOT NULL,
    finished_at  REAL,
    pid          INTEGER,
    slot         TEXT,
    outcome      TEXT   -- NULL while the attempt runs
                 CHECK (outcome IS NULL OR outcome IN ('succeeded', 'failed', 'cancelled', 'crashed', 'stopped')),
    detail       TEXT,
    resumed_from TEXT,
    PRIMARY KEY (job_id, number)
);

-- AUTOINCREMENT so ids only ever grow: readers page through events with "id > last seen".
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     INTEGER NOT NULL REFERENCES jobs (id),
    attempt    INTEGER NOT NULL,
    created_at REAL    NOT NULL,
    type       TEXT    NOT NULL,  -- copied out of the body so "newest progress" is an index lookup
    body       TEXT    NOT NULL   -- the event's protocol line, as encode_event wrote it
);
CREATE INDEX events_job ON events (job_id, id);
CREATE INDEX events_job_type ON events (job_id, type, id);

CREATE TABLE adapters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL UNIQUE,
    job_id     INTEGER NOT NULL REFERENCES jobs (id),
    base_model TEXT    NOT NULL,
    path       TEXT    NOT NULL,
    created_at REAL    NOT NULL,
    hub_repo   TEXT
);
