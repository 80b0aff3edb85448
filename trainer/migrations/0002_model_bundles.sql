-- Run registry, version 2: signed model bundles (the exporter's output).
--
-- Same portable SQL as version 1. A bundle may come from a run folder that this registry
-- never saw, so run_id is not a foreign key.

CREATE TABLE bundles (
    model_id VARCHAR(64) NOT NULL PRIMARY KEY,
    run_id VARCHAR(64) NOT NULL,
    format_version BIGINT NOT NULL,
    manifest_sha256 VARCHAR(64) NOT NULL,
    uri TEXT NOT NULL,
    public_key VARCHAR(64) NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE INDEX bundles_run ON bundles (run_id, created_ms);
