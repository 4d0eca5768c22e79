-- ES256 signing keys beside Ed25519 ones, anonymous and passwordless users,
-- one-time tokens (password recovery, email sign-in links and codes) and the
-- local mail outbox they are delivered to (issue 18).

-- The JWS algorithm a key signs with: 'EdDSA' (Ed25519) or 'ES256' (P-256).
ALTER TABLE signing_keys ADD COLUMN alg text NOT NULL DEFAULT 'EdDSA';
-- base64url of the P-256 point's y coordinate (JWK "y"); NULL for Ed25519.
ALTER TABLE signing_keys ADD COLUMN public_y text;

-- Anonymous users have no email; users who sign in by email link have no password.
ALTER TABLE users ALTER COLUMN email DROP NOT NULL;
ALTER TABLE users ALTER COLUMN password_hash DROP NOT NULL;
ALTER TABLE users ADD COLUMN is_anonymous boolean NOT NULL DEFAULT false;

CREATE TABLE one_time_tokens (
    id          bigserial PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- 'recovery' or 'magiclink'.
    kind        text NOT NULL,
    -- SHA-256 of the link token (verifyOtp's token_hash) and of the 6-digit code
    -- the mail shows; neither is stored in clear.
    token_hash  bytea NOT NULL UNIQUE,
    code_hash   bytea NOT NULL,
    -- Wrong codes tried against this token; it is spent after five.
    failures    integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX one_time_tokens_user ON one_time_tokens (user_id);

-- No mail server exists here: mails are kept for the developer to read through
-- the admin API or `minicloud auth mail`.
CREATE TABLE mail_outbox (
    id          bigserial PRIMARY KEY,
    recipient   text NOT NULL,
    subject     text NOT NULL,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mail_outbox_recipient ON mail_outbox (recipient, id);
