-- Replace exactly the seal this run opened: if another reseal (or anything else) has
-- changed the row since it was read, key_id or nonce differ and nothing is written.
UPDATE node_secrets
SET key_id = :key_id, nonce = :nonce, ciphertext = :sealed
WHERE node_id = :node_id AND kind = :kind AND key_id = :old_key_id AND nonce = :old_nonce
