"""The `docker run` arguments every container that runs code we did not write is started with.

One function builds them so that a one-shot run, a warm call-pool container, an agent session and a code
validation run are isolated the same way:

- no network at all (`--network none`): not the host's loopback, not a bridge;
- untrusted processes run as `UNTRUSTED_UID` with an empty capability set (permitted, effective, inheritable,
  ambient, and the bounding set where a supervisor can drop it) and `no-new-privileges`, so no setuid binary
  or file capability gives anything back;
- a container that has a supervisor runs it as root with only `SUPERVISOR_CAPS`; the supervisor drops to the
  untrusted uid before it runs anything untrusted (`drop_privileges_prefix()` for commands, the same steps in
  Python in `supervisor.py` for forked calls);
- a read-only root filesystem; the only writable places are size-capped tmpfs folders;
- memory (swap equal to memory: no swap on top), CPU, pids and `ulimit` (file size, open files) limits;
- `--log-driver none`: the engine keeps no copy of the output on the host's disk (an output flood would
  otherwise fill it); callers read stdout/stderr themselves, capped, while it is produced;
- `--init`: a real pid 1 reaps orphans, so a daemonised process cannot leave zombies behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from tasksynth.docker.ownership import label_args

UNTRUSTED_UID = 1000  # the run user: its processes get no capabilities at all
UNTRUSTED_USER = f"{UNTRUSTED_UID}:{UNTRUSTED_UID}"

SUPERVISOR_CAPS = (
    "SETUID",  # setresuid() to UNTRUSTED_UID before untrusted code runs
    "SETGID",  # setresgid() / setgroups([]) to the untrusted gid, with no supplementary groups
    "SETPCAP",  # empty the bounding set of the dropped child (PR_CAPBSET_DROP), so even its limits are empty
)
# Not kept, on purpose: KILL (the supervisor kills the untrusted uid's processes from a child that has
# itself become that uid: kill(-1) as uid 1000 reaches exactly uid 1000's processes), CHOWN and DAC_OVERRIDE
# (work folders are tmpfs mounted owned by the untrusted uid; state masters arrive as open file descriptors).

_SIZE = re.compile(r"^\d+(\.\d+)?[bkmg]?$", re.IGNORECASE)


@dataclass(frozen=True)
class Limits:
    cpus: float
    memory: str  # docker syntax: 512m, 2g
    pids: int
    file_size_bytes: int  # ulimit fsize
    open_files: int  # ulimit nofile
    tmpfs_bytes: int  # size of each tmpfs work folder
    wall_s: float

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> "Limits":
        limits = cls(cpus=config.docker.cpus, memory=config.docker.memory, pids=config.docker.pids_limit,
                     file_size_bytes=config.sandbox.file_size_bytes, open_files=config.sandbox.open_files,
                     tmpfs_bytes=config.sandbox.tmpfs_bytes, wall_s=float(config.docker.sandbox_timeout_s))
        return limits.replace(**overrides) if overrides else limits

    def replace(self, **changes: Any) -> "Limits":
        return replace(self, **changes)

    def __post_init__(self) -> None:
        if not _SIZE.match(str(self.memory)):
            raise ValueError(f"memory limit {self.memory!r} is not a docker size (512m, 2g)")
        for name in ("cpus", "pids", "file_size_bytes", "open_files", "tmpfs_bytes", "wall_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"limit {name} must be positive, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = True

    def args(self) -> list[str]:
        # --mount, not -v: a missing source is an error instead of an empty root-owned folder created on the
        # host, and the fields are named. A comma would start another field, so it is refused.
        if "," in self.source or "," in self.target:
            raise ValueError(f"mount paths may not contain a comma: {self.source} -> {self.target}")
        spec = f"type=bind,source={self.source},target={self.target}"
        return ["--mount", spec + (",readonly" if self.read_only else "")]


def tmpfs_arg(target: str, options: str, size_bytes: int) -> list[str]:
    """`--tmpfs TARGET:OPTS`, size-capped. Executables are allowed (builds and tests run them) but never
    setuid or device files; /tmp gets the sticky world-writable mode unless the options say otherwise."""
    opts = [o for o in options.split(",") if o]
    if not any(o.startswith("size=") for o in opts):
        opts.append(f"size={size_bytes}")
    if target == "/tmp" and not any(o.startswith("mode=") for o in opts):
        opts.append("mode=1777")
    if "noexec" not in opts and "exec" not in opts:
        opts.append("exec")
    return ["--tmpfs", f"{target}:{','.join(['rw', 'nosuid', 'nodev', *opts])}"]


def isolated_run_args(limits: Limits, *, name: str, labels: Mapping[str, str], mounts: Sequence[Mount] = (),
                      tmpfs: Mapping[str, str] | None = None, user: str | None = None,
                      supervisor: bool = False, workdir: str | None = None,
                      env: Mapping[str, str] | None = None) -> list[str]:
    """Arguments for `docker run` (everything between `run` and the image).

    Without a supervisor, everything in the container runs as `user` (default: the untrusted uid) with no
    capabilities. With `supervisor=True` the container's main process is root with `SUPERVISOR_CAPS` only,
    and must drop to the untrusted uid (`drop_privileges_prefix()`) before running anything untrusted;
    `user` is then refused, since the supervisor needs root to drop from.
    Callers add lifecycle flags themselves (`--rm`, `-d`, `-i`).
    """
    if supervisor and user is not None:
        raise ValueError("a supervised container runs its supervisor as root; do not pass user")
    args = ["--name", name, "--network", "none", "--cap-drop", "ALL"]
    if supervisor:
        for cap in SUPERVISOR_CAPS:
            args += ["--cap-add", cap]
        args += ["--user", "0:0"]
    else:
        args += ["--user", user or UNTRUSTED_USER]
    args += ["--security-opt", "no-new-privileges", "--read-only", "--init", "--log-driver", "none",
             "--memory", limits.memory, "--memory-swap", limits.memory, "--cpus", f"{limits.cpus:g}",
             "--pids-limit", str(limits.pids),
             "--ulimit", f"fsize={limits.file_size_bytes}:{limits.file_size_bytes}",
             "--ulimit", f"nofile={limits.open_files}:{limits.open_files}",
             "--hostname", "sandbox"]
    for target, options in (tmpfs if tmpfs is not None else {"/tmp": ""}).items():
        args += tmpfs_arg(target, options, limits.tmpfs_bytes)
    for mount in mounts:
        args += mount.args()
    if workdir:
        args += ["--workdir", workdir]
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    args += label_args(dict(labels))
    return args


def drop_privileges_prefix() -> list[str]:
    """The argv prefix a root supervisor puts before a command to run it as UNTRUSTED_UID with no groups, no
    capabilities (inheritable and bounding sets emptied too) and no-new-privileges. `setpriv` is util-linux,
    present in the Debian bookworm base image."""
    return ["setpriv", f"--reuid={UNTRUSTED_UID}", f"--regid={UNTRUSTED_UID}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
