"""Process-wide CLI state: the options of the root command and the config they select, loaded once."""

from __future__ import annotations

from pathlib import Path

from tasksynth.config import Config, load_config

_state: dict = {"config_path": None, "debug": False, "config": None}


def configure(*, config_path: Path | None, debug: bool) -> None:
    _state.update(config_path=config_path, debug=debug, config=None)


def debug() -> bool:
    return bool(_state["debug"])


def config() -> Config:
    if _state["config"] is None:
        _state["config"] = load_config(_state["config_path"])
    return _state["config"]
