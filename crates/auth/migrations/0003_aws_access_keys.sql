-- AWS-style key pairs (issue 19): an access key id and its secret access key, bound
-- to a role like API keys and revoked the same way. The secret is kept in clear:
-- SigV4 signatures are HMACs, which only the secret itself can check (AWS keeps its
-- secrets the same way). Their `key_hash` is a placeholder no bearer key can match.
ALTER TABLE api_keys ADD COLUMN access_key_id text UNIQUE;
ALTER TABLE api_keys ADD COLUMN secret_access_key text;
