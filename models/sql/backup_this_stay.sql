-- The latest verified backup a step took since the node last entered its state: while
-- a node stays in stop, update or destroy nothing unlocks it, so that backup still holds
-- the state the node last ran and a repeated step need not take another. The line
-- format is models/backups.py's.
SELECT h.detail
FROM node_history h
WHERE h.node_id = :node_id AND h.event = 'backup' AND h.from_state = :state
  AND h.id > coalesce((SELECT max(t.id) FROM node_history t
                       WHERE t.node_id = :node_id AND t.event = 'transition'
                         AND t.to_state = :state), 0)
ORDER BY h.id DESC
LIMIT 1
