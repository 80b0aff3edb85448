-- Run registry, version 3: sweeps and their trials (claimed by `trainer worker` processes on
-- any machine), and room for the fleet: devices and rollouts.
--
-- Same portable SQL as versions 1 and 2. A trial is claimed with a lease: `claim` is a
-- random token written by the worker that took it, `lease_until_ms` the time after which
-- another worker may take it again (the first one died or lost its connection). Only the
-- holder of the current token can renew, finish or fail the trial.

CREATE TABLE sweeps (
    id VARCHAR(32) NOT NULL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    experiment VARCHAR(255) NOT NULL,
    dataset TEXT NOT NULL,
    spec MEDIUMTEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    CONSTRAINT sweeps_name_unique UNIQUE (name)
);

CREATE TABLE trials (
    id VARCHAR(32) NOT NULL PRIMARY KEY,
    sweep_id VARCHAR(32) NOT NULL,
    idx BIGINT NOT NULL,
    -- JSON list of [key, value]: what this trial varies (for listings and MLflow)
    overrides TEXT NOT NULL,
    -- the trial's whole configuration (TOML), what the worker runs
    config MEDIUMTEXT NOT NULL,
    -- pending, running, finished, failed
    status VARCHAR(16) NOT NULL,
    claim VARCHAR(32) NULL,
    worker VARCHAR(255) NULL,
    lease_until_ms BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    run_id VARCHAR(32) NULL,
    model_id VARCHAR(64) NULL,
    error TEXT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    CONSTRAINT trials_sweep_fk FOREIGN KEY (sweep_id) REFERENCES sweeps (id),
    CONSTRAINT trials_sweep_idx_unique UNIQUE (sweep_id, idx)
);

CREATE INDEX trials_status_lease ON trials (status, lease_until_ms);

-- The fleet (filled by rollouts and agents' reports in later versions of the programs).
CREATE TABLE devices (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    fleet VARCHAR(255) NOT NULL,
    model_id VARCHAR(64) NULL,
    status VARCHAR(32) NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE INDEX devices_fleet ON devices (fleet, status);

CREATE TABLE rollouts (
    id VARCHAR(32) NOT NULL PRIMARY KEY,
    model_id VARCHAR(64) NOT NULL,
    fleet VARCHAR(255) NOT NULL,
    canary_fraction DOUBLE NOT NULL,
    status VARCHAR(32) NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);

CREATE INDEX rollouts_fleet ON rollouts (fleet, created_ms);
