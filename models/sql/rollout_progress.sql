-- Each rollout (the latest first, or one) with how many of its nodes are in each phase.
SELECT r.id, r.to_version, r.status, r.paused_reason, r.batch_size, r.max_unavailable,
       r.max_failures, r.batches_started, r.where_state, r.where_region, r.where_owner,
       r.requested_by, r.created_at, r.updated_at,
       count(rn.node_id) AS nodes,
       count(rn.node_id) FILTER (WHERE rn.phase = 'pending') AS pending,
       count(rn.node_id) FILTER (WHERE rn.phase = 'updating') AS updating,
       count(rn.node_id) FILTER (WHERE rn.phase = 'starting') AS starting,
       count(rn.node_id) FILTER (WHERE rn.phase = 'done') AS done,
       count(rn.node_id) FILTER (WHERE rn.phase = 'failed') AS failed,
       count(rn.node_id) FILTER (WHERE rn.phase = 'skipped') AS skipped
FROM rollouts r
LEFT JOIN rollout_nodes rn ON rn.rollout_id = r.id
WHERE CAST(:rollout AS bigint) IS NULL OR r.id = :rollout
GROUP BY r.id
ORDER BY r.id DESC
LIMIT :limit
