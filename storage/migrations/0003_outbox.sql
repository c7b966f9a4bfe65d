-- The outbox: every message the bot owes a Discord channel (a job's status message and its edits, the
-- completion ping; thread posts later). A row is written in the same transaction as the job change that
-- owes it (storage/outbox.py, called from the Store's transitions), so no crash can keep a change and
-- lose its message. The bot's deliverer sends due rows with backoff and marks how each try went; rows
-- persist, so what a Discord outage or a restart interrupted is sent later, and exactly once.
CREATE TABLE outbox (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id             INTEGER NOT NULL REFERENCES jobs (id),
    -- 'status': posted once, then edited in place to the newest revision; 'completion': posted once.
    -- No CHECK: a new kind (thread posts) must not need a table rebuild; storage/outbox.py validates.
    kind               TEXT    NOT NULL,
    channel_id         INTEGER NOT NULL,
    -- Random per row: the nonce of the create (Discord returns the message it already made for a nonce
    -- seen in the last few minutes) and the marker in the message's embed footer that finds it in the
    -- channel's history after that (the history does not return nonces). Random, not the row id: ids
    -- restart with a new database, and an old message must never pass for a new row's.
    nonce              TEXT    NOT NULL UNIQUE,
    payload            TEXT,  -- kind-specific JSON; NULL for status and completion (rendered from the job)
    state              TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    created_at         REAL    NOT NULL,
    next_attempt_at    REAL    NOT NULL,  -- a failed try waits out its backoff (or Discord's Retry-After)
    tries              INTEGER NOT NULL DEFAULT 0,  -- failed tries since the last success: the backoff exponent
    first_sent_at      REAL,   -- when a create was first handed to Discord: from then on it may exist there
    message_id         INTEGER,  -- the message made (status: the one later edits go to)
    -- Status edits coalesce: a change bumps `revision` instead of adding a row; a delivery renders the
    -- newest state and records the revision and the content hash it wrote, so the final state is always
    -- written and identical content is never written twice, across restarts too.
    revision           INTEGER NOT NULL DEFAULT 1,
    delivered_revision INTEGER NOT NULL DEFAULT 0,
    delivered_hash     TEXT,
    delivered_at       REAL,
    error              TEXT,     -- the last failure, as Discord put it ("Missing Permissions (50013)")
    error_code         INTEGER   -- Discord's JSON error code of a permanent failure
);
-- At most one status message and one completion ping per job, whoever (and however often) owes them.
CREATE UNIQUE INDEX outbox_once_per_job ON outbox (job_id, kind) WHERE kind IN ('status', 'completion');
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_job ON outbox (job_id, id);

-- Jobs from before the outbox keep their messages: an ended job's status message stays as it is, a
-- queued or running job's is refreshed once (and its missing one posted); later changes edit it as usual.
INSERT INTO outbox (job_id, kind, channel_id, nonce, state, created_at, next_attempt_at, message_id,
                    revision, delivered_revision)
SELECT id, 'status', channel_id, lower(hex(randomblob(8))),
       CASE WHEN status_message_id IS NOT NULL AND state IN ('succeeded', 'failed', 'cancelled')
            THEN 'delivered' ELSE 'pending' END,
       created_at, created_at, status_message_id,
       2, CASE WHEN status_message_id IS NULL THEN 0 WHEN state IN ('succeeded', 'failed', 'cancelled') THEN 2 ELSE 1 END
FROM jobs
WHERE channel_id IS NOT NULL AND (status_message_id IS NOT NULL OR state IN ('queued', 'running'));

-- A completion already announced is recorded as delivered; one missed while the old bot was down in the
-- last 7 days (its old rule) is owed now, unless the job's publish step has not ended yet.
INSERT INTO outbox (job_id, kind, channel_id, nonce, state, created_at, next_attempt_at, message_id,
                    delivered_revision, delivered_at)
SELECT id, 'completion', channel_id, lower(hex(randomblob(8))),
       CASE WHEN completion_message_id IS NULL THEN 'pending' ELSE 'delivered' END,
       finished_at, finished_at, completion_message_id,
       CASE WHEN completion_message_id IS NULL THEN 0 ELSE 1 END,
       CASE WHEN completion_message_id IS NULL THEN NULL ELSE finished_at END
FROM jobs
WHERE channel_id IS NOT NULL AND state IN ('succeeded', 'failed', 'cancelled') AND finished_at IS NOT NULL
  AND (completion_message_id IS NOT NULL
       OR (finished_at >= CAST(strftime('%s', 'now') AS REAL) - 7 * 24 * 3600
           AND NOT (state = 'succeeded' AND push_requested = 1 AND hub_state = 'none')));
