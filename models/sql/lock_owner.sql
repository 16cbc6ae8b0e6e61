-- Serialise one owner's creates, starts and idempotency keys until the transaction ends,
-- so that two concurrent requests cannot both pass the per-owner limit or both use a key.
SELECT pg_advisory_xact_lock(hashtext('fleet-owner'), hashtext(:owner))
