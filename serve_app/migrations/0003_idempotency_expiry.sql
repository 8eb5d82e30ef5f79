-- Idempotency keys expire (AppArgs.idempotency_ttl_s); the purge finds the
-- expired ones by age.
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at ON idempotency_keys (created_at);
