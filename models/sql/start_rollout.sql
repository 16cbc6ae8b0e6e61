SELECT fleet_start_rollout(:version, :only_state, :only_region, :only_owner, :batch,
                           :batch_percent, :unavailable, :failures) AS id
