-- A job's folder is a column: where the bot runs a job is its own choice, not part of what the person
-- asked for (the spec, protocol/job_spec.py). Specs stored before this version carried the folder as
-- output_dir and the data directory's cache folder as cache_dir: the folder moves here; the cache
-- folder is dropped (each attempt is handed the data directory's cache at launch, protocol/launch.py).
ALTER TABLE jobs ADD COLUMN folder TEXT NOT NULL DEFAULT '';
UPDATE jobs
SET folder = COALESCE(json_extract(spec, '$.output_dir'), ''),
    spec = json_remove(spec, '$.output_dir', '$.cache_dir');
-- "Which job owns this checkpoint?" looks a job up by its folder.
CREATE INDEX jobs_folder ON jobs (folder);
