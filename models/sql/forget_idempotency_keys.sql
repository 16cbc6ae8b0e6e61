-- An owner's idempotency keys older than the retention: a retry that late is a new request.
DELETE FROM api_idempotency_keys
WHERE owner = :owner
  AND created_at < now() - make_interval(hours => :hours)
