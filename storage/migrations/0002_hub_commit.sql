-- The Hub commit a published adapter was uploaded in, beside its URL: the exact revision to cite or load.
ALTER TABLE jobs ADD COLUMN hub_commit TEXT;
