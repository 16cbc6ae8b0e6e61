-- Bounds on what apps write (models/formats.py MAX_LENGTH). name and owner are bounded by
-- their format patterns already; region and instance_type patterns repeat a group, so a
-- megabyte matched them.
ALTER TABLE nodes
    ADD CONSTRAINT nodes_region_length CHECK (char_length(region) <= 32),
    ADD CONSTRAINT nodes_instance_type_length CHECK (char_length(instance_type) <= 32);
