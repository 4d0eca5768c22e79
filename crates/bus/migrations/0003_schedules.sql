CREATE TABLE schedules (
    name          text PRIMARY KEY,
    -- "rate(5 minutes)" or a cron expression (5 fields, or 6/7 with seconds/years)
    expression    text NOT NULL,
    timezone      text NOT NULL DEFAULT 'UTC',
    topic         text NOT NULL REFERENCES topics (name) ON DELETE CASCADE,
    data          jsonb NOT NULL DEFAULT '{}',
    next_fire_at  timestamptz NOT NULL,
    last_fired_at timestamptz,
    owner         text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due ON schedules (next_fire_at);
