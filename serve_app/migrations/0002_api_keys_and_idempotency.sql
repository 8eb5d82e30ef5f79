-- API keys: only a SHA-256 of the secret is stored; the id is the public part
-- of the key, so lookups need no scan and the secret never touches the disk.
CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT        PRIMARY KEY CHECK (id ~ '^[0-9a-f]{12}$'),
    name        TEXT        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    secret_hash BYTEA       NOT NULL CHECK (octet_length(secret_hash) = 32),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);

-- A retried POST /users with the same Idempotency-Key returns the user the
-- first attempt created. Written in the same transaction as the user.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope        TEXT        NOT NULL,
    key          TEXT        NOT NULL CHECK (char_length(key) BETWEEN 1 AND 200),
    request_hash BYTEA       NOT NULL,
    user_id      BIGINT      NOT NULL REFERENCES users (id),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
