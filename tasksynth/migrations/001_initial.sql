-- Tables by entity, not by flow. Keys are content hashes of what produced the row, so a rerun that
-- produces the same thing finds it and writes nothing twice. Big blobs (logs, JUnit XML, transcripts)
-- live compressed under <home>/blobs and are referenced here by their sha256.

CREATE TABLE flow_runs (
    run_id      VARCHAR PRIMARY KEY,       -- Prefect flow run id
    flow        VARCHAR NOT NULL,
    params      JSON,
    status      VARCHAR NOT NULL,          -- running | completed | failed
    started_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
    finished_at TIMESTAMP,
    summary     JSON                       -- the funnel counts: seen, kept, dropped by reason
);

-- A finished step, keyed by a content hash of its inputs: the resume mechanism of every flow.
CREATE TABLE steps (
    step        VARCHAR NOT NULL,
    key         VARCHAR NOT NULL,
    output      JSON,
    run_id      VARCHAR,
    finished_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (step, key)
);

CREATE TABLE blobs (
    sha256           VARCHAR PRIMARY KEY,
    bytes            BIGINT NOT NULL,
    compressed_bytes BIGINT NOT NULL,
    media_type       VARCHAR,
    created_at       TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Code: every mined or imported (repository, commit, patch, test patch) from any source.
CREATE TABLE candidates (
    candidate_id           VARCHAR PRIMARY KEY,
    source                 VARCHAR NOT NULL,   -- git | swebench | github
    source_ref             VARCHAR,            -- commit sha, PR url, jsonl line
    instance_id            VARCHAR NOT NULL UNIQUE,
    repo                   VARCHAR NOT NULL,   -- owner/name or a local name
    repo_url               VARCHAR,            -- where the repository is cloned from (path or URL)
    language               VARCHAR NOT NULL DEFAULT 'python',
    base_commit            VARCHAR NOT NULL,
    head_commit            VARCHAR,
    patch                  VARCHAR NOT NULL,
    test_patch             VARCHAR NOT NULL,
    problem_statement      VARCHAR NOT NULL,
    hints                  VARCHAR,
    version                VARCHAR,
    environment_setup_commit VARCHAR,
    imported_fail_to_pass VARCHAR[],
    imported_pass_to_pass VARCHAR[],
    created_at             TIMESTAMP,          -- when the change was made upstream
    mined_at               TIMESTAMP NOT NULL DEFAULT current_timestamp,
    metadata               JSON
);

-- Every discard keeps its reason, so the funnel can be read back and nothing is silently lost.
CREATE TABLE discards (
    stage       VARCHAR NOT NULL,              -- mine | filter | build | validate | ...
    source      VARCHAR NOT NULL,
    item        VARCHAR NOT NULL,              -- commit sha, PR number, instance id
    repo        VARCHAR,
    reason      VARCHAR NOT NULL,
    detail      VARCHAR,
    run_id      VARCHAR,
    discarded_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (stage, source, item)
);

-- A built repository environment: base image + dependencies at a commit, shared by candidates with
-- the same dependency fingerprint.
CREATE TABLE environments (
    env_id        VARCHAR PRIMARY KEY,         -- hash of (base image, recipe, dependency fingerprint)
    repo          VARCHAR NOT NULL,
    language      VARCHAR NOT NULL DEFAULT 'python',
    python_version VARCHAR,
    base_image    VARCHAR NOT NULL,
    image         VARCHAR NOT NULL,
    recipe        JSON NOT NULL,               -- the install recipe: data, replayable
    recipe_origin VARCHAR NOT NULL DEFAULT 'heuristic',  -- heuristic | agent | user
    fingerprint   VARCHAR NOT NULL,
    status        VARCHAR NOT NULL,            -- built | failed
    reason        VARCHAR,
    build_log     VARCHAR,                     -- blob sha256
    build_seconds DOUBLE,
    built_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- One execution of a phase of tests in an instance container.
CREATE TABLE test_runs (
    test_run_id  VARCHAR PRIMARY KEY,
    instance_id  VARCHAR NOT NULL,
    phase        VARCHAR NOT NULL,             -- before (test patch only) | after (test patch + gold patch)
    attempt      INTEGER NOT NULL,             -- repeat index within one validation
    validation_id VARCHAR NOT NULL,
    image        VARCHAR,
    status       VARCHAR NOT NULL,             -- ok | patch_does_not_apply | tests_crashed | timeout | oom | ...
    exit_code    INTEGER,
    seconds      DOUBLE,
    junit        VARCHAR,                      -- blob sha256 of the JUnit XML
    log          VARCHAR,                      -- blob sha256 of the capped log
    started_at   TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE test_results (
    test_run_id VARCHAR NOT NULL,
    test_id     VARCHAR NOT NULL,              -- pytest node id, as SWE-bench
    outcome     VARCHAR NOT NULL,              -- passed | failed | error | skipped
    seconds     DOUBLE,
    message     VARCHAR,
    PRIMARY KEY (test_run_id, test_id)
);

-- A validated (or rejected) code-agent environment: the code task.
CREATE TABLE code_tasks (
    instance_id     VARCHAR PRIMARY KEY,
    candidate_id    VARCHAR NOT NULL,
    repo            VARCHAR NOT NULL,
    base_commit     VARCHAR NOT NULL,
    env_id          VARCHAR,
    image           VARCHAR,
    validation_id   VARCHAR,
    verdict         VARCHAR NOT NULL,          -- valid | rejected
    reason          VARCHAR,                   -- no_fail_to_pass | pass_to_fail | patch_does_not_apply | ...
    fail_to_pass    VARCHAR[] NOT NULL DEFAULT [],
    pass_to_fail    VARCHAR[] NOT NULL DEFAULT [],
    pass_to_pass    VARCHAR[] NOT NULL DEFAULT [],
    flaky           VARCHAR[] NOT NULL DEFAULT [],
    test_command    VARCHAR,
    agreement       VARCHAR,                   -- exact | subset | disagree | NULL when nothing was imported
    seconds         DOUBLE,
    validated_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Every validation ever made, so `code validate` can report a verdict that changed.
CREATE TABLE validations (
    validation_id VARCHAR PRIMARY KEY,
    instance_id   VARCHAR NOT NULL,
    verdict       VARCHAR NOT NULL,
    reason        VARCHAR,
    fail_to_pass  VARCHAR[],
    pass_to_fail  VARCHAR[],
    flaky         VARCHAR[],
    repeats       INTEGER,
    run_id        VARCHAR,
    validated_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Search QA.
CREATE TABLE search_items (
    item_id       VARCHAR PRIMARY KEY,
    entity        VARCHAR NOT NULL,
    question      VARCHAR NOT NULL,
    answer        VARCHAR NOT NULL,
    rubric        JSON,
    evidence      JSON,
    candidate_answers JSON,
    verdict       VARCHAR NOT NULL,            -- kept | truth_unverified | answered_by_candidate | ...
    accepted      BOOLEAN NOT NULL DEFAULT false,
    metadata      JSON,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- General tool environments and their tasks.
CREATE TABLE general_environments (
    env_id      VARCHAR PRIMARY KEY,
    category    VARCHAR NOT NULL,
    database    VARCHAR,                       -- blob sha256 of the environment database
    tools       JSON NOT NULL,                 -- tool functions: name, schema, source
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE general_tasks (
    task_id     VARCHAR PRIMARY KEY,
    env_id      VARCHAR NOT NULL,
    level       INTEGER NOT NULL,
    prompt      VARCHAR NOT NULL,
    solution    VARCHAR,
    verifier    VARCHAR NOT NULL,
    pass_at_k   DOUBLE,
    k           INTEGER,
    accepted    BOOLEAN NOT NULL DEFAULT false,
    created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Every LLM call any agent made.
CREATE TABLE agent_calls (
    call_id           VARCHAR PRIMARY KEY,
    role              VARCHAR NOT NULL,
    endpoint          VARCHAR NOT NULL,
    model             VARCHAR NOT NULL,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    latency_s         DOUBLE,
    cost_usd          DOUBLE,
    status            VARCHAR NOT NULL,        -- ok | error
    error             VARCHAR,
    flow_run_id       VARCHAR,
    trajectory_id     VARCHAR,
    created_at        TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE trajectories (
    trajectory_id VARCHAR PRIMARY KEY,
    role          VARCHAR NOT NULL,
    transcript    VARCHAR NOT NULL,            -- blob sha256 of the JSON messages
    turns         INTEGER,
    stop_reason   VARCHAR,
    flow_run_id   VARCHAR,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);
