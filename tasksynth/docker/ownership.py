"""Who started a container: labels that let a later run of the same home reap what a killed run left.

Every container tasksynth starts carries `owner_labels(home)`: our managed label, a hash of the home it
belongs to (two homes on one engine never reap each other's containers) and the starting process's pid with
that process's start time (a pid reused by an unrelated process does not make a dead owner look alive).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tasksynth.docker.engine import MANAGED_LABEL

HOME_LABEL = "org.tasksynth.home"
OWNER_PID_LABEL = "org.tasksynth.owner_pid"
OWNER_START_LABEL = "org.tasksynth.owner_start"
ROLE_LABEL = "org.tasksynth.role"  # validation | build | call_pool | session | oneshot


def home_key(home: str | Path) -> str:
    """A short stable name for a home directory (its resolved path, hashed)."""
    return hashlib.sha256(str(Path(home).expanduser().resolve()).encode()).hexdigest()[:16]


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), or None when
    the process does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def owner_labels(home: str | Path, role: str) -> dict[str, str]:
    pid = os.getpid()
    return {MANAGED_LABEL: "true", HOME_LABEL: home_key(home), OWNER_PID_LABEL: str(pid),
            OWNER_START_LABEL: process_start_time(pid) or "", ROLE_LABEL: role}


def owner_alive(labels: dict[str, str]) -> bool:
    """Whether the process that started a container with these labels is still running (same pid, same
    start time). Containers without an owner are treated as alive: they are not ours to reap."""
    pid = labels.get(OWNER_PID_LABEL, "")
    if not pid.isdigit():
        return True
    started = process_start_time(int(pid))
    return started is not None and started == labels.get(OWNER_START_LABEL, started)


def label_args(labels: dict[str, str]) -> list[str]:
    """`--label K=V` arguments for `docker run`."""
    return [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
