-- Code-interpreter tasks (notebook_env/): data questions answered in a sandboxed Jupyter kernel.

-- One task per (dataset, index, seed): question, answer format, reference solution, gold answer, filters.
CREATE TABLE IF NOT EXISTS notebook_tasks (
    task_id           VARCHAR PRIMARY KEY,     -- hash of (dataset name, its files' sha256, index, seed)
    dataset           VARCHAR NOT NULL,
    task_index        INTEGER NOT NULL,
    source            VARCHAR NOT NULL,        -- synth (mined notebooks: mine)
    status            VARCHAR NOT NULL,        -- attempting | kept | discarded
    reason            VARCHAR,                 -- unparseable | solution_fails | nondeterministic | shortcut |
                                               -- ambiguous | never_solved
    detail            VARCHAR,
    question          VARCHAR,
    answer_format     JSON,                    -- {"type": "number", "decimals": 2} ... (verifiers/notebook.py)
    solution          VARCHAR,                 -- reference solution: notebook code that leaves `answer`
    answer            JSON,                    -- the gold answer, normalised, as the solution computed it
    second_answer     JSON,                    -- the independent second solution's answer (ambiguity filter)
    shortcut_answer   VARCHAR,                 -- what a model answered without the data
    data_files        JSON,                    -- file name -> sha256 of the dataset's files
    solution_notebook VARCHAR,                 -- blob sha256 of the gold run's .ipynb
    c                 INTEGER,                 -- solved attempts
    n                 INTEGER,                 -- graded attempts (errors left out)
    pass_at           JSON,                    -- {"pass@1": .., "pass@8": .., "pass@n": ..}
    pass_at_k         DOUBLE,
    k                 INTEGER,
    trajectory_id     VARCHAR,                 -- the task writer's run
    run_id            VARCHAR,
    created_at        TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- Every solver attempt of the pass@k filter; its kernel session kept as an .ipynb blob.
CREATE TABLE IF NOT EXISTS notebook_attempts (
    attempt_id    VARCHAR PRIMARY KEY,         -- hash of (task, attempt index)
    task_id       VARCHAR NOT NULL,
    attempt       INTEGER NOT NULL,
    outcome       VARCHAR NOT NULL,            -- solved | failed | error
    reason        VARCHAR,
    final_answer  VARCHAR,
    cells         INTEGER,                     -- python calls made
    restarts      INTEGER,                     -- kernels restarted (timeouts, deaths)
    notebook      VARCHAR,                     -- blob sha256 of the attempt's .ipynb
    trajectory_id VARCHAR,
    seconds       DOUBLE,
    run_id        VARCHAR,
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

-- The datasets tasks were made from: where they come from, their license, their files' hashes.
CREATE TABLE IF NOT EXISTS notebook_datasets (
    name        VARCHAR PRIMARY KEY,
    files       JSON NOT NULL,
    source      VARCHAR,
    license     VARCHAR,
    description VARCHAR,
    folder      VARCHAR                      -- where its files are (<home>/notebook/data/<name>)
);
