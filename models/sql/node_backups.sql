-- A node's backup lines (models/backups.py parses them), oldest first.
SELECT at, detail
FROM node_history
WHERE node_id = :node_id AND event = 'backup' AND detail IS NOT NULL
ORDER BY id
