CREATE TABLE buckets (
    name               text PRIMARY KEY,
    public             boolean NOT NULL DEFAULT false,
    file_size_limit    bigint,
    allowed_mime_types text[],
    policy             jsonb NOT NULL DEFAULT '[]',
    owner              text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
