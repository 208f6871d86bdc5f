"""Fixtures for the agent tests: scripted OpenAI-compatible servers on 127.0.0.1, a config whose roles point
at them, and a real DuckDB store in tmp_path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from scripted_server import ScriptedServer  # noqa: E402

from tasksynth.config import Config, Price  # noqa: E402
from tasksynth.store import Store  # noqa: E402

PRICE = Price(input_per_mtok=0.28, output_per_mtok=0.42)  # per million tokens, DeepSeek-V3.2's list price


@pytest.fixture
def scripted():
    """`scripted(steps)` starts a scripted server; every server started is stopped after the test."""
    servers = []

    def start(script=()) -> ScriptedServer:
        server = ScriptedServer(script).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def make_config(tmp_path):
    """`make_config(role_name=RoleConfig, ...)`: a config with these roles and a price for the scripted model."""

    def make(**roles) -> Config:
        config = Config(home=str(tmp_path / "home"))
        config.agents.update(roles)
        config.prices["scripted-model"] = PRICE
        return config

    return make


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store.duckdb") as opened:
        yield opened
