-- A worker takes one run of a step. It matches only if the row is still exactly as the
-- dispatcher saw it (state and step_run) and free, so a second copy of the same job, a
-- stale job or a job for a held row changes nothing and gets no row back.
UPDATE nodes
SET lease_owner = :worker,
    lease_expires_at = now() + make_interval(secs => :lease_seconds),
    step_run = step_run + 1
WHERE id = :node_id
  AND state = :state
  AND step_run = :step_run
  AND held_at IS NULL
  AND lease_owner IS NULL
  AND next_attempt_at <= now()
RETURNING id, name, owner, region, instance_type, network, current_version, target_version,
          state, instance_id, address, node_pubkey, ssh_host_key, attempts, step_run,
          wallet_initialised_at IS NOT NULL AS wallet_initialised, launch_generation,
          extract(epoch FROM clock_timestamp() - next_attempt_at)::float AS waited_seconds
