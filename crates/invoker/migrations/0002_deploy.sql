-- Everything a deploy sets, a revision that changes on every deploy (so replicas
-- notice and replace instances), and the code bundles by content hash.
ALTER TABLE functions
    ADD COLUMN env jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN reserved_concurrency integer,
    ADD COLUMN provisioned_concurrency integer NOT NULL DEFAULT 0,
    ADD COLUMN keep_warm_s integer NOT NULL DEFAULT 60,
    ADD COLUMN owner text,
    ADD COLUMN revision bigint NOT NULL DEFAULT 1;

CREATE TABLE code_bundles (
    hash        text PRIMARY KEY,
    size        bigint NOT NULL,
    zip         bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE triggers (
    id              text PRIMARY KEY,
    function        text NOT NULL REFERENCES functions (name) ON DELETE CASCADE,
    topic           text,
    pattern         jsonb,
    subscription_id text,
    http_methods    text[],
    http_path       text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX triggers_function ON triggers (function);
