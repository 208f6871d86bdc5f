-- General tool environments (general_env/). The first schema's two tables were never written by any
-- pipeline; they are recreated with every column the pipeline keeps (the old columns stay, same names).

DROP TABLE IF EXISTS general_tasks;
DROP TABLE IF EXISTS general_environments;

-- One environment per (category, index, seed): a database and tools, packed as a bundle.
CREATE TABLE general_environments (
    env_id        VARCHAR PRIMARY KEY,         -- hash of (category, index, seed, settings)
    category      VARCHAR NOT NULL,
    status        VARCHAR NOT NULL,            -- built | discarded
    reason        VARCHAR,                     -- why it was discarded (no_database, no_tools, gate_failed, ...)
    detail        VARCHAR,
    bundle_id     VARCHAR,                     -- content hash of the bundle (database, tools, clock, seed)
    bundle_path   VARCHAR,                     -- <home>/general/bundles/<bundle_id>
    database      VARCHAR,                     -- blob sha256 of the database file
    tools         JSON NOT NULL DEFAULT '[]',  -- OpenAI tool specs of the kept tools
    tool_kinds    JSON,                        -- name -> read | write
    tools_source  VARCHAR,                     -- blob sha256 of tools.py
    dropped_tools JSON,                        -- tools left out, each with its reason
    gate          JSON,                        -- the quality gate's calls and results
    trajectory_id VARCHAR,                     -- the building agent's run
    run_id        VARCHAR,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- A task at one level: statement, reference solution (tools only) and verifier (check functions).
CREATE TABLE general_tasks (
    task_id        VARCHAR PRIMARY KEY,        -- hash of (env, index, level, parent)
    env_id         VARCHAR NOT NULL,
    bundle_id      VARCHAR,
    level          INTEGER NOT NULL,
    parent_task_id VARCHAR,                    -- the task this one was made harder from (level > 1)
    prompt         VARCHAR NOT NULL,           -- the statement the solver sees
    answer_format  VARCHAR,
    solution       VARCHAR,                    -- source of solve(tools)
    verifier       VARCHAR NOT NULL,           -- source of the check_* functions
    checks         VARCHAR[],
    reference_answer JSON,
    expected_state_hash VARCHAR,               -- set when two independent solutions reach the same state
    status         VARCHAR NOT NULL,           -- verified | discarded | attempted
    reason         VARCHAR,                    -- solution_fails_verifier | verifier_accepts_nothing | ...
    detail         VARCHAR,
    c              INTEGER,                    -- successful attempts
    n              INTEGER,                    -- attempts graded
    pass_at        JSON,                       -- {"pass@1": .., "pass@8": .., "pass@n": ..}
    pass_at_k      DOUBLE,                     -- pass@k for the configured k (k = n)
    k              INTEGER,
    estimated      BOOLEAN,                    -- false when attempts stopped after the first success
    accepted       BOOLEAN NOT NULL DEFAULT false,
    trajectory_id  VARCHAR,                    -- the task-writing agent's run
    run_id         VARCHAR,
    created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Every graded attempt of the pass@k filter.
CREATE TABLE general_attempts (
    attempt_id    VARCHAR PRIMARY KEY,         -- hash of (task, attempt index)
    task_id       VARCHAR NOT NULL,
    attempt       INTEGER NOT NULL,
    outcome       VARCHAR NOT NULL,            -- solved | failed | error
    reason        VARCHAR,                     -- what failed: checks, a limit, the endpoint, the sandbox
    reward        DOUBLE,
    partial       DOUBLE,
    checks        JSON,
    tool_calls    INTEGER,
    trajectory_id VARCHAR,
    seconds       DOUBLE,
    run_id        VARCHAR,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);
