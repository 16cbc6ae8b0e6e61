-- Keep the first secret of a kind: a step that runs twice must not replace it.
INSERT INTO node_secrets (node_id, kind, key_id, nonce, ciphertext)
VALUES (:node_id, :kind, :key_id, :nonce, :sealed)
ON CONFLICT (node_id, kind) DO NOTHING
