-- The fleet's own id, made with its database (migrations/sql/0005_trust_boundaries.sql).
SELECT fleet_id FROM fleet_identity
