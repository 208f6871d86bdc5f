"""Reaping what a killed run of this home left: its containers and its scratch folders.

A command killed with SIGKILL cannot clean up: its validation containers stay (exited, never removed) and its
run folders and build contexts stay under `<home>/tmp`. Both carry their owner (the process that made them,
by pid and start time; see `ownership.py`): containers in their labels, folders in a small file written when
they are made (`claim_folder`). The next run of the same home removes the ones whose owner is dead. Another
home's leftovers are never touched (containers are selected by the home's label, folders live in the home),
nor are those of a live process, nor anything without an owner.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tasksynth.docker.engine import docker
from tasksynth.docker.ownership import (HOME_LABEL, OWNER_PID_LABEL, OWNER_START_LABEL, home_key, owner_alive,
                                        process_start_time)

OWNER_FILE = ".tasksynth-owner"
SCRATCH_PREFIXES = ("tasksynth-run-", "tasksynth-build-")


@dataclass
class Reaped:
    containers: list[str]
    folders: list[Path]


def claim_folder(path: str | Path) -> None:
    """Record this process as the owner of a scratch folder it just made."""
    pid = os.getpid()
    (Path(path) / OWNER_FILE).write_text(json.dumps({"pid": pid, "start": process_start_time(pid) or ""}))


def _folder_owner_dead(path: Path) -> bool:
    try:
        owner = json.loads((path / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False  # no owner recorded: not ours to judge
    return not owner_alive({OWNER_PID_LABEL: str(owner.get("pid", "")),
                            OWNER_START_LABEL: str(owner.get("start", ""))})


def dead_owner_containers(home: str | Path) -> list[str]:
    """Ids of this home's containers whose starting process is gone."""
    ids = docker("ps", "-aq", "--no-trunc", "--filter", f"label={HOME_LABEL}={home_key(home)}",
                 check=False, timeout=60).stdout.split()
    if not ids:
        return []
    inspected = docker("inspect", "--format", "{{.Id}} {{json .Config.Labels}}", *ids, check=False, timeout=60)
    dead = []
    for line in inspected.stdout.splitlines():
        container_id, _, labels = line.partition(" ")
        try:
            parsed = json.loads(labels) or {}
        except ValueError:
            continue
        if parsed.get(HOME_LABEL) == home_key(home) and not owner_alive(parsed):
            dead.append(container_id)
    return dead


def dead_owner_folders(home: str | Path) -> list[Path]:
    scratch = Path(home) / "tmp"
    if not scratch.is_dir():
        return []
    return sorted(path for path in scratch.iterdir()
                  if path.is_dir() and path.name.startswith(SCRATCH_PREFIXES) and _folder_owner_dead(path))


def reap_leftovers(home: str | Path, *, containers: bool = True) -> Reaped:
    """Remove this home's containers and scratch folders whose owner died (containers first: a folder may be
    mounted in one)."""
    removed: list[str] = []
    if containers:
        dead = dead_owner_containers(home)
        if dead and docker("rm", "-f", *dead, check=False, timeout=120).returncode == 0:
            removed = dead
    folders = dead_owner_folders(home)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return Reaped(removed, [f for f in folders if not f.exists()])
