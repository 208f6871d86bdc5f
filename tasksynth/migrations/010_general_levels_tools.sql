-- Tools that harder levels of general tasks add (general_env/level_tools.py), and the bundle versions they make.

-- Every tool a level proposed: added (packed as a new bundle version) or rejected with the reason.
CREATE TABLE general_level_tools (
    task_id          VARCHAR NOT NULL,         -- the level's task that proposed it
    tool             VARCHAR NOT NULL,
    env_id           VARCHAR NOT NULL,
    level            INTEGER NOT NULL,
    kind             VARCHAR,                  -- read | write
    status           VARCHAR NOT NULL,         -- added | rejected
    reason           VARCHAR,                  -- new_tool_sample_call_failed | new_tool_breaks_rules | ...
    detail           VARCHAR,
    source           VARCHAR,                  -- the tool's code
    gate             JSON,                     -- the quality gate's calls and results for it
    parent_bundle_id VARCHAR,                  -- the bundle version it was proposed for
    bundle_id        VARCHAR,                  -- the new bundle version (added only)
    run_id           VARCHAR,
    created_at       TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (task_id, tool)
);

-- Bundle versions made by levels (an environment's first version is in general_environments): tasks
-- reference the version they were made with by general_tasks.bundle_id.
CREATE TABLE general_bundles (
    bundle_id        VARCHAR PRIMARY KEY,
    env_id           VARCHAR NOT NULL,
    parent_bundle_id VARCHAR NOT NULL,
    bundle_path      VARCHAR NOT NULL,         -- <home>/general/bundles/<bundle_id>
    tools            JSON NOT NULL,            -- OpenAI tool specs of every tool of this version
    tool_kinds       JSON,
    added_tools      JSON,                     -- the tools this version has beyond the environment's first one
    created_at       TIMESTAMP NOT NULL DEFAULT current_timestamp
);
