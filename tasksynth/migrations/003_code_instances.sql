-- Code environments, part 1: the instance layer of each candidate (its checkout at the base commit on top of
-- the repository environment), and the tests a validation runs there. One row per candidate, written by
-- `tasksynth code build`; `code_tasks` holds the verdicts, `environments` the shared dependency layers.
CREATE TABLE code_instances (
    instance_id   VARCHAR PRIMARY KEY,
    candidate_id  VARCHAR NOT NULL,
    env_id        VARCHAR,                    -- environments.env_id (NULL when no recipe could be made)
    image         VARCHAR,                    -- the instance image tag (content-addressed)
    status        VARCHAR NOT NULL,           -- built | failed
    reason        VARCHAR,                    -- install_failed | unsupported_project | patch_outside_repo | ...
    detail        VARCHAR,
    test_runner   VARCHAR,                    -- pytest
    test_targets  VARCHAR[],                  -- what the runs pass to the runner; empty: the whole suite
    test_command  VARCHAR,                    -- the full command of a run, as a user would replay it
    build_log     VARCHAR,                    -- blob sha256 of the capped instance build log
    build_seconds DOUBLE,                     -- instance layer only; the environment's is in `environments`
    env_seconds   DOUBLE,                     -- environment layer time spent for this candidate (0: reused)
    image_bytes   BIGINT,                     -- disk added by the instance layer over its environment
    built_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- The sentence behind a rejection reason ("the gold patch does not apply: ... minicalc/ops.py:17"), kept with
-- the verdict and with every validation.
ALTER TABLE code_tasks ADD COLUMN detail VARCHAR;
ALTER TABLE validations ADD COLUMN detail VARCHAR;
ALTER TABLE validations ADD COLUMN pass_to_pass VARCHAR[];
ALTER TABLE validations ADD COLUMN seconds DOUBLE;
