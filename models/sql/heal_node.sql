SELECT fleet_heal_node(:node_id, :to_state, :cause, :flap_limit,
                       make_interval(secs => :flap_window_seconds)) AS outcome
