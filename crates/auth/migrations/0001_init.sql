-- The auth service's own schema (search_path is set to it by the pool).

CREATE TABLE signing_keys (
    kid           text PRIMARY KEY,
    -- PKCS#8 DER of the Ed25519 private key.
    private_pkcs8 bytea NOT NULL,
    -- base64url of the raw public key (JWK "x").
    public_x      text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- Set when a newer key took over; the key stays published until its last
    -- token has expired.
    retired_at    timestamptz
);

CREATE TABLE roles (
    name        text PRIMARY KEY,
    description text NOT NULL DEFAULT '',
    policies    jsonb NOT NULL DEFAULT '[]',
    builtin     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO roles (name, description, builtin) VALUES
    ('anon', 'callers without a token, or with the anon key', true),
    ('authenticated', 'signed-in users', true),
    ('service', 'the service key: admin, bypasses policies', true);

CREATE TABLE users (
    id              uuid PRIMARY KEY,
    email           text NOT NULL UNIQUE,
    password_hash   text NOT NULL,
    user_metadata   jsonb NOT NULL DEFAULT '{}',
    banned          boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    last_sign_in_at timestamptz
);

CREATE TABLE refresh_tokens (
    id          bigserial PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- One family per sign-in: every rotation stays in it, and reuse of a spent
    -- token revokes all of it.
    family_id   uuid NOT NULL,
    used_at     timestamptz,
    revoked     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    subject     text NOT NULL DEFAULT '',
    key_hash    bytea NOT NULL UNIQUE,
    -- Built-in keys (anon, service) are kept retrievable so `minicloud up` can print
    -- them on every start, as Supabase prints its anon and service keys.
    builtin_secret text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
