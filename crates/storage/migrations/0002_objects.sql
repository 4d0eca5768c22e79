-- Object metadata. `version` names the blob `<path>#<version>` holding the bytes;
-- a row exists only once its blob is fully written, so a visible object always has
-- its bytes. Paths sort bytewise (C collation) for prefix listing.
CREATE TABLE objects (
    bucket       text NOT NULL REFERENCES buckets (name) ON DELETE CASCADE,
    path         text COLLATE "C" NOT NULL,
    version      text NOT NULL,
    size         bigint NOT NULL,
    content_type text NOT NULL,
    etag         text NOT NULL,
    metadata     jsonb NOT NULL DEFAULT '{}',
    owner        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, path)
);

-- Service-wide secrets, e.g. the key signed URLs are signed with.
CREATE TABLE secrets (
    name       text PRIMARY KEY,
    value      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
