-- The current schema, as the ordered migrations in sql/migrations/ leave it.
-- Reference for readers and reviewers; the service applies the migrations, and
-- tests/integration/test_migrations.py checks that both produce the same catalog.

CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER     PRIMARY KEY,
    name       TEXT        NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS users (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    email      TEXT        NOT NULL CHECK (char_length(email) BETWEEN 3 AND 254),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX IF NOT EXISTS users_email_lower_key ON users (lower(email));

CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT        PRIMARY KEY CHECK (id ~ '^[0-9a-f]{12}$'),
    name        TEXT        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    secret_hash BYTEA       NOT NULL CHECK (octet_length(secret_hash) = 32),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope        TEXT        NOT NULL,
    key          TEXT        NOT NULL CHECK (char_length(key) BETWEEN 1 AND 200),
    request_hash BYTEA       NOT NULL,
    user_id      BIGINT      NOT NULL REFERENCES users (id),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

CREATE INDEX IF NOT EXISTS idempotency_keys_created_at ON idempotency_keys (created_at);
