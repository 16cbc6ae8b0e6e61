SELECT fleet_steer_rollout(:rollout, :action, :reason) AS status
