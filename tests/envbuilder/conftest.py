"""Fixtures of the code-environment tests: a config whose home is fresh for each test (images are
content-addressed, so later tests reuse earlier layers). The engine and the base image: tests/conftest.py."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def engine_config(tmp_path):
    """A config with a fresh home and short test timeouts, and no Prefect server: building and validating run
    no flow, and a server for each test's fresh home costs half a minute to start."""
    from tasksynth.config import load_config

    def make(**overrides: str):
        environ = {"TASKSYNTH_HOME": str(tmp_path / "home"), "TASKSYNTH_DOCKER__TEST_TIMEOUT_S": "60",
                   **{f"TASKSYNTH_{k.upper()}": v for k, v in overrides.items()}}
        config = load_config(environ=environ)
        config.home_path.mkdir(parents=True, exist_ok=True)
        return config

    return make


@pytest.fixture
def flow_config(engine_config, base_311):
    """engine_config's settings, no Prefect retries (faults must show at once), and Prefect prepared."""
    from flows.runtime import prepare_prefect

    def make(**overrides: str):
        config = engine_config(flows__retries="0", **overrides)
        prepare_prefect(config)
        return config

    return make


@pytest.fixture
def pipeline():
    """The code flow, run in this process (Prefect's ephemeral server starts once per session)."""
    from flows.code import code_pipeline

    def run(config, **params):
        from flows.runtime import task_runner

        return code_pipeline.with_options(task_runner=task_runner(config))(config=config, **params)

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    return run
