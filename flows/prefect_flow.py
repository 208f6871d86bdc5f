"""The Prefect flow our pipelines are: Prefect's `Flow`, with two costs of every run taken off where they buy
nothing.

Parameters: Prefect stores a run's parameters on the server (the UI shows them) in a JSON form it makes with
FastAPI's `jsonable_encoder`, whose import pulls in all of FastAPI (about 0.3 s of every command). Our flows
take plain data (strings, numbers, lists, the `Config` dataclass, `SourceRequest`s), which `plain` converts to
the same JSON form with what is already loaded. A value of any other kind (a callable or an object passed in
by code) shows as `<TypeName>`, as Prefect shows a value it cannot convert.

Heartbeats: a flow run sends one at its start and then every `flows.heartbeat_frequency` seconds, from a thread
that the run's end waits for (up to a second: it sleeps in one-second steps). A Prefect server does nothing
with them unless an automation that the user wrote watches them. A run of ours against the home's own server
(flows/prefect_server.py) sends none; one that was killed is marked Crashed on that server by the next flow of
the home (`flows.runtime.flow_run`), as it is in the store. Against a server the user configured
(PREFECT_API_URL), heartbeats are sent as Prefect sends them.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import datetime
import decimal
import enum
import os
import types
import uuid
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

import pydantic
from prefect import Flow
from prefect.futures import PrefectFuture
from prefect.settings import temporary_settings
from prefect.states import State

from flows.prefect_server import OWNED_URL_ENV

HOOK_LISTS = ("on_completion_hooks", "on_failure_hooks", "on_cancellation_hooks", "on_crashed_hooks",
              "on_running_hooks")


class PipelineFlow(Flow):
    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        shown = {}
        for key, value in parameters.items():
            if self.ismethod and value is getattr(self.fn, "__prefect_self__", None):
                continue  # the bound instance of a method flow, which Prefect does not show either
            if self.isclassmethod and value is getattr(self.fn, "__prefect_cls__", None):
                continue
            if isinstance(value, (PrefectFuture, State)):
                shown[key] = f"<{type(value).__name__}>"
                continue
            try:
                shown[key] = plain(value)
            except Exception:  # noqa: BLE001 - a value that cannot be shown is named, as Prefect does
                shown[key] = f"<{type(value).__name__}>"
        return shown

    def with_options(self, **options: Any) -> PipelineFlow:
        if set(options) == {"task_runner"} and options["task_runner"] is not None:
            # What every command changes. Prefect would build a new flow, and with it the parameter schema of
            # the same function again (~0.1 s for a flow that takes the Config); a copy keeps it.
            configured = copy.copy(self)
            runner = options["task_runner"]
            configured.task_runner = runner() if isinstance(runner, type) else runner
            for hooks in HOOK_LISTS:
                setattr(configured, hooks, list(getattr(self, hooks)))
            return configured
        configured = super().with_options(**options)
        # Prefect builds the copy as a plain Flow; it has the same attributes, so it becomes one of ours.
        configured.__class__ = type(self)
        return configured

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if sends_heartbeats():
            return super().__call__(*args, **kwargs)
        with temporary_settings(updates={"flows.heartbeat_frequency": None}):
            return super().__call__(*args, **kwargs)


def flow(**options: Any) -> Callable[[Callable[..., Any]], PipelineFlow]:
    """`prefect.flow(**options)` for our pipelines: the function becomes a `PipelineFlow`."""
    return lambda fn: PipelineFlow(fn, **options)


def sends_heartbeats() -> bool:
    """Only to a Prefect server that the user configured: the home's own server and Prefect's ephemeral one
    have no use for them."""
    configured = os.environ.get("PREFECT_API_URL")
    return bool(configured) and configured != os.environ.get(OWNED_URL_ENV)


class NotPlainData(TypeError):
    pass


def plain(value: Any) -> Any:
    """`value` as JSON-compatible data (dicts, lists, strings, numbers, booleans, None), converted as FastAPI's
    `jsonable_encoder` converts plain data; NotPlainData for an object that is not data."""
    if isinstance(value, (str, int, float, type(None))):  # bool is an int
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, pydantic.BaseModel):
        return plain(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return {plain(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, collections.deque, types.GeneratorType)):
        return [plain(item) for item in value]
    if isinstance(value, (datetime.date, datetime.time)):  # a datetime is a date
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return int(value) if value.as_tuple().exponent >= 0 else float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode()
    raise NotPlainData(type(value).__name__)
