-- Single-use signed upload URLs: the nonce of each one used, until it expires.
CREATE TABLE IF NOT EXISTS used_upload_tokens (
    nonce      text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS used_upload_tokens_expiry ON used_upload_tokens (expires_at);
