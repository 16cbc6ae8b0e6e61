SELECT key_id, count(*) AS secrets
FROM node_secrets
GROUP BY key_id
ORDER BY key_id
