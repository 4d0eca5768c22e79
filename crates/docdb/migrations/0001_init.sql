CREATE TABLE collections (
    name       text PRIMARY KEY,
    indexes    jsonb NOT NULL DEFAULT '[]',
    policy     jsonb NOT NULL DEFAULT '[]',
    owner      text,
    created_at timestamptz NOT NULL DEFAULT now()
);
