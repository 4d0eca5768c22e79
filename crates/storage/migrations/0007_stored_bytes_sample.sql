-- When stored bytes were last metered (`storage.byte_seconds`, docs/billing.md): the
-- replica that moves this row meters the time since, so replicas never count one
-- interval twice.
CREATE TABLE stored_bytes_sample (
    id         integer     PRIMARY KEY CHECK (id = 1),
    sampled_at timestamptz NOT NULL
);
INSERT INTO stored_bytes_sample (id, sampled_at) VALUES (1, now());
