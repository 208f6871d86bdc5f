"""Fixtures of the general-environment tests: the hand-written travel world in world_fixtures.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def docker_engine():
    from tasksynth.docker.engine import engine_status

    status = engine_status()
    if not status.ok:
        pytest.fail(f"these tests need a Docker engine (`make test` starts one): {status.detail}")
    return status
