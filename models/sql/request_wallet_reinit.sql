-- An operator asks for a node's wallet to be re-initialised from the stored mnemonic for
-- a release (fleet_request_wallet_reinit in migrations/sql/functions.sql).
SELECT fleet_request_wallet_reinit(:name, :version) AS id
