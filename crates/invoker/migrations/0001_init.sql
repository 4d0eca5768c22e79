CREATE TABLE functions (
    name        text PRIMARY KEY,
    runtime     text NOT NULL,
    handler     text NOT NULL DEFAULT '',
    memory_mb   integer NOT NULL DEFAULT 128,
    timeout_s   integer NOT NULL DEFAULT 3,
    role        text,
    code_hash   text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
