CREATE TABLE subscriptions (
    id                text PRIMARY KEY,
    topic             text NOT NULL REFERENCES topics (name) ON DELETE CASCADE,
    pattern           jsonb NOT NULL DEFAULT '{}',
    -- {"webhook": "http://…"} or {"topic": "name"}
    target            jsonb NOT NULL,
    max_attempts      integer NOT NULL,
    min_backoff_ms    bigint NOT NULL,
    max_backoff_ms    bigint NOT NULL,
    max_age_s         bigint NOT NULL,
    dead_letter_topic text REFERENCES topics (name) ON DELETE SET NULL,
    max_in_flight     integer NOT NULL DEFAULT 1,
    owner             text,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dead_letters (
    id              bigserial PRIMARY KEY,
    subscription_id text NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    event           jsonb NOT NULL,
    attempts        integer NOT NULL,
    last_error      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_subscription ON dead_letters (subscription_id, id);
