-- Every stored job spec says where its dataset may be read from (trainer.protocol.DatasetSpec.kind): a
-- spec without it reads as a Hub id or a URL only, so jobs queued before this version would lose their
-- files. What each old spec held is known from its shape: an upload sits in its own job folder (its
-- source becomes relative to it, as new uploads are); an absolute path was made so by the CLI or by the
-- bot's own upload placement (another job's upload, for a resume); anything else was a Hub id, even a
-- name that also happened to be a folder where the bot ran (Discord could name those; they are no
-- longer read from disk).
UPDATE jobs
SET spec = json_set(
    spec,
    '$.dataset.kind',
    CASE
        WHEN json_extract(spec, '$.dataset.source') LIKE '%://%' THEN 'url'
        WHEN substr(json_extract(spec, '$.dataset.source'), 1, length(json_extract(spec, '$.output_dir')) + 8)
            = json_extract(spec, '$.output_dir') || '/upload/' THEN 'upload'
        WHEN json_extract(spec, '$.dataset.source') LIKE '/%' THEN 'file'
        ELSE 'hub'
    END,
    '$.dataset.source',
    CASE
        WHEN substr(json_extract(spec, '$.dataset.source'), 1, length(json_extract(spec, '$.output_dir')) + 8)
            = json_extract(spec, '$.output_dir') || '/upload/'
        THEN substr(json_extract(spec, '$.dataset.source'), length(json_extract(spec, '$.output_dir')) + 2)
        ELSE json_extract(spec, '$.dataset.source')
    END
)
WHERE json_extract(spec, '$.dataset.kind') IS NULL;
