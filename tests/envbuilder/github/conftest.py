"""Fixtures of the GitHub miner's tests: a fake GitHub on 127.0.0.1 and a config pointing at it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_github import FakeGithub  # noqa: E402

TOKEN = "ghp_TasksynthSecret0123456789abcdefXYZ"


class RecordingSleeper:
    """Records every wait the client asks for and sleeps only a moment (a rate-limit reset an hour away must
    not hold a test); `real=True` sleeps for real."""

    def __init__(self, real: bool = False):
        self.real = real
        self.waits: list[tuple[float, str]] = []

    def __call__(self, seconds: float, reason: str) -> None:
        import time

        self.waits.append((seconds, reason))
        time.sleep(seconds if self.real else min(seconds, 0.01))


@pytest.fixture
def fake():
    with FakeGithub(token=TOKEN) as server:
        yield server


@pytest.fixture
def sleeper() -> RecordingSleeper:
    return RecordingSleeper()


@pytest.fixture
def gh_config(config, fake, monkeypatch):
    """The test home's config, aimed at the fake GitHub, with the token in $GITHUB_TOKEN."""
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    config.github.api_url = fake.url
    return config
