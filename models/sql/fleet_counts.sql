SELECT state, nodes, held, due FROM fleet_status
