-- The replacement of a node's host in progress (at most one), with the history line of
-- the backup it restores (NULL: a fresh wallet from the stored mnemonic, channels lost).
SELECT r.generation, h.detail AS backup, r.accept_channel_loss
FROM node_replacements r
LEFT JOIN node_history h ON h.id = r.backup_id
WHERE r.node_id = :node_id AND r.done_at IS NULL
