CREATE TABLE topics (
    name       text PRIMARY KEY,
    -- Approximate maximum number of events kept in the stream.
    retention  bigint NOT NULL DEFAULT 100000,
    builtin    boolean NOT NULL DEFAULT false,
    owner      text,
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO topics (name, builtin) VALUES ('storage', true), ('db', true), ('schedules', true);
