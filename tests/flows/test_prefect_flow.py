"""Our flows' Prefect class: parameters shown as Prefect shows them, without FastAPI; no heartbeats to the home's
own server, heartbeats as usual to a server the user configured."""

import dataclasses
import datetime
import decimal
import enum
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Inner:
    path: Path
    tags: tuple[str, ...]


@dataclasses.dataclass
class Outer:
    inner: Inner
    options: dict


def parameter_values(config):
    from envbuilder.sources.mining import SourceRequest

    return [config, [SourceRequest("git", "/src/repo", {"clone": True})], ("a", "b"), ["x"], "text", 3, 2.5, True,
            None, Path("/tmp/x"), {"nested": {"list": [1, None, "s"], "tuple": (1, 2)}}, {"b"}, frozenset({3}),
            Colour.RED, datetime.datetime(2024, 2, 29, 12, 0, 1), datetime.date(2024, 1, 2),
            datetime.time(3, 4), datetime.timedelta(seconds=90), decimal.Decimal("1.25"), decimal.Decimal("7"),
            uuid.UUID(int=5), b"bytes", Outer(Inner(Path("p"), ("t",)), {"k": [Path("q")]})]


def test_plain_data_converts_as_fastapis_jsonable_encoder_converts_it(config):
    from fastapi.encoders import jsonable_encoder  # what Prefect itself would use

    from flows.prefect_flow import plain

    for value in parameter_values(config):
        assert plain(value) == jsonable_encoder(value), value


def test_a_flow_shows_the_same_parameters_as_prefects_own_flow_and_names_what_is_not_data(config):
    from prefect import Flow
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.prefect_flow import PipelineFlow, flow

    @flow(name="shows-parameters", validate_parameters=False)
    def shows(config=None, git=(), sources=(), on_page=None):
        return None

    configured = shows.with_options(retries=1)
    assert isinstance(shows, PipelineFlow) and isinstance(configured, PipelineFlow)
    assert configured.retries == 1 and configured.name == "shows-parameters"
    runner = ThreadPoolTaskRunner(max_workers=3)
    with_runner = configured.with_options(task_runner=runner)  # a copy: the rest as it was
    prefects_own = Flow.with_options(configured, task_runner=runner)
    assert isinstance(with_runner, PipelineFlow) and with_runner.task_runner is runner
    assert configured.task_runner is not runner
    for name in ("name", "retries", "parameters", "fn", "on_completion_hooks", "description"):
        assert getattr(with_runner, name) == getattr(prefects_own, name), name
    assert with_runner.on_completion_hooks is not configured.on_completion_hooks
    values = parameter_values(config)
    parameters = {"config": values[0], "git": values[3], "sources": values[1], "on_page": None}
    assert configured.serialize_parameters(parameters) == Flow.serialize_parameters(configured, parameters)
    shown = configured.serialize_parameters({**parameters, "on_page": print, "sources": [object()]})
    assert shown["on_page"] == "<builtin_function_or_method>" and shown["sources"] == "<list>"


RUN_ONE_FLOW = """
import json, sys
from tasksynth.config import load_config
from flows.runtime import prepare_prefect

prepare_prefect(load_config())
from prefect.runtime import flow_run
from flows.prefect_flow import flow


@flow(name="one-step", validate_parameters=False)
def one_step(n: int = 1):
    return str(flow_run.id)


run_id = one_step(n=2)
print(json.dumps({"run_id": run_id, "imported": sorted(m for m in ("fastapi", "pandas") if m in sys.modules)}))
"""


def _run_one_flow(env_extra: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}", **env_extra}
    result = subprocess.run([sys.executable, "-c", RUN_ONE_FLOW], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _events_of(url: str, run_id: str) -> list[str]:
    body = json.dumps({"filter": {"resource": {"id": [f"prefect.flow-run.{run_id}"]}}, "limit": 50}).encode()
    request = urllib.request.Request(f"{url}/events/filter", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return [event["event"] for event in json.loads(response.read())["events"]]


def _events_once_completed(url: str, run_id: str) -> list[str]:
    deadline = time.monotonic() + 60
    while "prefect.flow-run.Completed" not in (events := _events_of(url, run_id)):
        assert time.monotonic() < deadline, events
        time.sleep(0.5)
    time.sleep(2)  # events of the client and of the server arrive by different paths: let any straggler land
    return _events_of(url, run_id)


def test_no_heartbeats_to_the_homes_server_and_no_fastapi_or_pandas_import(home, monkeypatch):
    from flows.prefect_server import OWNED_URL_ENV

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv(OWNED_URL_ENV, raising=False)
    ran = _run_one_flow({})
    from flows.prefect_server import read_record

    url = read_record(Path(os.environ["PREFECT_HOME"]).resolve()).url
    events = _events_once_completed(url, ran["run_id"])
    assert "prefect.flow-run.Running" in events and "prefect.flow-run.heartbeat" not in events
    assert ran["imported"] == []


def test_a_server_the_user_configured_gets_heartbeats(home, monkeypatch):
    from flows.prefect_server import OWNED_URL_ENV, ensure_server
    from tasksynth.config import load_config

    monkeypatch.delenv(OWNED_URL_ENV, raising=False)

    url = ensure_server(load_config())  # stands for the user's own server: configured, not the home's
    ran = _run_one_flow({"PREFECT_API_URL": url})
    deadline = time.monotonic() + 60
    while "prefect.flow-run.heartbeat" not in (events := _events_of(url, ran["run_id"])):
        assert time.monotonic() < deadline, events
        time.sleep(0.5)


@pytest.mark.parametrize("configured, owned, sends", [(None, None, False), ("http://a/api", None, True),
                                                      ("http://a/api", "http://a/api", False),
                                                      ("http://b/api", "http://a/api", True)])
def test_who_gets_heartbeats(monkeypatch, configured, owned, sends):
    from flows.prefect_flow import sends_heartbeats
    from flows.prefect_server import OWNED_URL_ENV

    for name, value in (("PREFECT_API_URL", configured), (OWNED_URL_ENV, owned)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert sends_heartbeats() is sends
