-- Each collection's documents live in their own table `docs_<collection>` (created
-- with the collection), so its declared indexes are plain expression indexes.
ALTER TABLE collections ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

CREATE TABLE kv (
    namespace  text COLLATE "C" NOT NULL,
    key        text COLLATE "C" NOT NULL,
    value      jsonb NOT NULL,
    version    bigint NOT NULL,
    expires_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, key)
);
CREATE INDEX kv_expiry ON kv (expires_at) WHERE expires_at IS NOT NULL;
