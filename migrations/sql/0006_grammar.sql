-- One grammar for versions and artifact URLs: the patterns of models/grammar/*.ere, which
-- the CLI, the API and the host agent read too (SQL cannot read a file at run time;
-- tests/test_schema.py and tests/test_grammar.py check that these are the files' text).
-- Build metadata (1.0.0+build.7), empty pre-release identifiers (1.0.0-rc..1) and
-- whitespace in a URL were accepted here and refused by the host's agent.
ALTER TABLE releases
    DROP CONSTRAINT releases_version_format,
    ADD CONSTRAINT releases_version_format CHECK (version ~ '^v?(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})(-[0-9A-Za-z-]{1,24}(\.[0-9A-Za-z-]{1,24}){0,3})?$'),
    DROP CONSTRAINT releases_artifact_url_format,
    ADD CONSTRAINT releases_artifact_url_format CHECK (artifact_url ~ '^(https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/[A-Za-z0-9._~%+=,-]{1,255}){1,16}$');

ALTER TABLE nodes
    DROP CONSTRAINT nodes_current_version_format,
    ADD CONSTRAINT nodes_current_version_format CHECK (current_version ~ '^v?(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})(-[0-9A-Za-z-]{1,24}(\.[0-9A-Za-z-]{1,24}){0,3})?$'),
    DROP CONSTRAINT nodes_target_version_format,
    ADD CONSTRAINT nodes_target_version_format CHECK (target_version ~ '^v?(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})(-[0-9A-Za-z-]{1,24}(\.[0-9A-Za-z-]{1,24}){0,3})?$');

-- The fleet's own text is bounded: an error or hold reason is one line for an operator,
-- not a place to store megabytes (the fleet's writes truncate to fit).
UPDATE nodes SET last_error = left(last_error, 1000) WHERE char_length(last_error) > 1000;
ALTER TABLE nodes
    ADD CONSTRAINT nodes_last_error_length CHECK (char_length(last_error) <= 1000);
