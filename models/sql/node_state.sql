-- The node's state as it is now (a worker that lost the row asks where it went).
SELECT state FROM nodes WHERE id = :node_id
