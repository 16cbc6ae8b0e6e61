-- A rollout's failed nodes with their causes, the first failure first.
SELECT rn.node_id, n.name, rn.batch, rn.error, rn.phase_at AS at
FROM rollout_nodes rn
JOIN nodes n ON n.id = rn.node_id
WHERE rn.rollout_id = :rollout AND rn.phase = 'failed'
ORDER BY rn.phase_at, rn.node_id
LIMIT :limit
