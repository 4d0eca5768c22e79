-- The S3 API (issue 19): the representation headers S3 clients set on an object, and
-- multipart uploads. A part is a blob `<path>#<upload id>.<part>.<uuid>` until the
-- upload completes (its parts are concatenated into the object's blob) or is
-- aborted; the orphan sweep keeps blobs a part row points at.
ALTER TABLE objects ADD COLUMN content_encoding text;
ALTER TABLE objects ADD COLUMN content_disposition text;

CREATE TABLE multipart_uploads (
    upload_id           text PRIMARY KEY,
    bucket              text NOT NULL REFERENCES buckets (name) ON DELETE CASCADE,
    path                text COLLATE "C" NOT NULL,
    content_type        text NOT NULL,
    metadata            jsonb NOT NULL DEFAULT '{}',
    cache_control       text,
    content_encoding    text,
    content_disposition text,
    owner               text,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX multipart_uploads_by_path ON multipart_uploads (bucket, path, created_at);

CREATE TABLE multipart_parts (
    upload_id   text NOT NULL REFERENCES multipart_uploads (upload_id) ON DELETE CASCADE,
    part_number integer NOT NULL CHECK (part_number BETWEEN 1 AND 10000),
    version     text NOT NULL,
    size        bigint NOT NULL,
    etag        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (upload_id, part_number)
);
