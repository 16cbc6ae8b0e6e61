-- The wallet step brought the replaced node's wallet back: only while its worker holds
-- the node's lease, and only the replacement it worked for (a newer one may supersede it).
UPDATE node_replacements r
SET done_at = now(), outcome = :outcome
FROM nodes n
WHERE r.node_id = :node_id AND r.generation = :generation AND r.done_at IS NULL
  AND n.id = r.node_id AND n.lease_owner = :worker
RETURNING r.generation
