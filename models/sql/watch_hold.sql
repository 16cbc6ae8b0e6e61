SELECT fleet_watch_hold(:node_id, :cause) AS held
