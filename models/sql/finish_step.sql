-- Done: advance along the step's worker edge. Guarded by state and lease owner: no
-- row back means the worker lost the row and must not act further. The transition
-- trigger resets attempts and records the history. With :chain the same UPDATE also
-- claims the next step as claim_step would (step_run + 1, a fresh lease): the trigger
-- lets the worker keep its lease when the new state has work (the step chain), and
-- frees the row otherwise. `chained` says which happened.
UPDATE nodes
SET state = :next_state,
    step_run = step_run + CASE WHEN :chain THEN 1 ELSE 0 END,
    lease_expires_at = CASE WHEN :chain
                            THEN now() + make_interval(secs => :lease_seconds)
                            ELSE lease_expires_at END
WHERE id = :node_id
  AND state = :state
  AND lease_owner = :worker
RETURNING id, name, owner, region, instance_type, network, current_version, target_version,
          state, instance_id, address, node_pubkey, ssh_host_key, attempts, step_run,
          wallet_initialised_at IS NOT NULL AS wallet_initialised, launch_generation,
          lease_owner IS NOT NULL AS chained
