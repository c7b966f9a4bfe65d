-- The Hub repos qlora-bot created, and for which adapter. A publish goes into a repo that already exists
-- only when its row here names the same adapter: anything else (someone's own repo, another adapter's) is
-- refused rather than overwritten. A row is written right after the Hub confirms the create, before any
-- upload. No backfill from adapters.hub_repo: the code before this migration also published into repos
-- that already existed, so a past publish does not prove that qlora-bot created the repo.
CREATE TABLE hub_repos (
    repo_id    TEXT    NOT NULL PRIMARY KEY COLLATE NOCASE,  -- "namespace/name"; the Hub ignores case too
    -- What the repo was created for: a job's adapter name (e.g. guanaco-12), or "folder:<path>" for a
    -- folder published by hand with `qlora-bot push`.
    adapter    TEXT    NOT NULL,
    job_id     INTEGER REFERENCES jobs (id),  -- NULL for a folder published by hand
    created_at REAL    NOT NULL
);
