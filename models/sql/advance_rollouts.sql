SELECT fleet_advance_rollouts() AS moved
