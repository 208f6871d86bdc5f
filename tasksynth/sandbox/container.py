"""One sandbox container with a supervisor in it, and the host's connection to that supervisor.

The container is started detached (`docker run -d --rm`) with `isolated_run_args(supervisor=True)`. The
supervisor (`supervisor.py`, mounted read-only) listens on a unix socket in a host folder mounted into the
container; the host connects once and keeps that connection for the container's life. Each request is one
length-prefixed JSON message, so a trivial call costs a socket round trip plus a fork in the container, with
no `docker exec` and no engine round trip.

The host folder is made by the host, mode 0700 (root) or 01733 (another host user: the supervisor, root in
the container without DAC_OVERRIDE, must be able to create its socket there). Either way the supervisor only
serves a peer outside the container's pid namespace, and removes the socket once the host is connected.
Closing the connection ends the supervisor and so the container: a host process killed by SIGKILL leaves no
container behind.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from tasksynth.docker.engine import docker
from tasksynth.docker.ownership import home_key, owner_labels
from tasksynth.errors import DockerUnavailable
from tasksynth.sandbox.isolation import UNTRUSTED_UID, Limits, Mount, isolated_run_args
from tasksynth.sandbox.results import SandboxInfraError, SupervisorGone

SUPERVISOR_SOURCE = Path(__file__).with_name("supervisor.py")
SUPERVISOR_IN_CONTAINER = "/opt/tasksynth-sandbox/supervisor.py"
# Imported, not run as the main script: Python keeps a main script's syntax tree in memory until the script
# ends (2.2 MB for the supervisor, which never ends), and every fork of the supervisor copies, and every
# child's exit unmaps, the page table entries of what it holds. Appended to the path: nothing of the
# standard library can be shadowed from that folder (the one file in it is ours, read-only).
SUPERVISOR_START = ("import sys; sys.path.append('/opt/tasksynth-sandbox'); import supervisor; "
                    "supervisor.serve(sys.argv[1], float(sys.argv[2]))")
SOCKET_FOLDER_IN_CONTAINER = "/run/tasksynth-sandbox"
SOCKET_NAME = "supervisor.sock"
WORK = "/work"  # the untrusted user's tmpfs work folder (the state file lives here)
PYTHON_IN_IMAGE = "/usr/bin/python3"  # the system Python: a repository's venv never runs as root
START_TIMEOUT_S = 60.0
REPLY_GRACE_S = 15.0  # on top of a request's own time limit, before the supervisor counts as hung
_names = itertools.count()


def sandbox_tmpfs() -> dict[str, str]:
    return {"/tmp": "", WORK: f"uid={UNTRUSTED_UID},gid={UNTRUSTED_UID},mode=0700"}


class SupervisedContainer:
    """A started container and the one connection to its supervisor. Not thread-safe: one user at a time."""

    def __init__(self, config: Any, image: str, *, role: str, limits: Limits, mounts: Sequence[Mount] = (),
                 tmpfs: dict[str, str] | None = None):
        self.config, self.image, self.role, self.limits = config, image, role, limits
        self.name = f"tasksynth-sbx-{home_key(config.home_path)[:8]}-{os.getpid()}-{next(_names)}"
        self.mounts, self.tmpfs = list(mounts), tmpfs or sandbox_tmpfs()
        self.folder: Path | None = None
        self.conn: socket.socket | None = None
        self._ids = itertools.count()
        self.unusable = ""  # set when the supervisor said it cannot serve again (and the container is gone)

    # ---- lifecycle

    def start(self) -> "SupervisedContainer":
        self.folder = Path(tempfile.mkdtemp(prefix="tasksynth-sbx-"))  # short: socket paths max 107 bytes
        if os.geteuid() != 0:
            os.chmod(self.folder, 0o1733)
        mounts = [Mount(str(SUPERVISOR_SOURCE), SUPERVISOR_IN_CONTAINER),
                  Mount(str(self.folder), SOCKET_FOLDER_IN_CONTAINER, read_only=False), *self.mounts]
        args = isolated_run_args(self.limits, name=self.name, labels=owner_labels(self.config.home_path, self.role),
                                 mounts=mounts, tmpfs=self.tmpfs, supervisor=True, workdir=WORK)
        command = [PYTHON_IN_IMAGE, "-I", "-S", "-c", SUPERVISOR_START,
                   f"{SOCKET_FOLDER_IN_CONTAINER}/{SOCKET_NAME}", str(int(START_TIMEOUT_S))]
        try:
            result = docker("run", "-d", "--rm", *args, self.image, *command, check=False, timeout=START_TIMEOUT_S)
        except (DockerUnavailable, subprocess.TimeoutExpired) as exc:
            self._remove_folder()
            raise SandboxInfraError(f"could not start a sandbox container: {exc}") from None
        if result.returncode != 0:
            self._remove_folder()
            detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise SandboxInfraError(f"docker run of a sandbox container failed: {detail}")
        try:
            self._connect()
        except SandboxInfraError:
            self.close()
            raise
        return self

    def _connect(self) -> None:
        path = self.folder / SOCKET_NAME
        deadline = time.monotonic() + START_TIMEOUT_S
        checked = time.monotonic()
        while True:
            if path.exists():
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    conn.connect(str(path))
                    self.conn = conn
                    break
                except OSError:
                    conn.close()
            if time.monotonic() > deadline:
                raise SandboxInfraError(f"the supervisor of {self.name} did not start within {START_TIMEOUT_S:.0f} s")
            if time.monotonic() - checked > 2:
                checked = time.monotonic()
                if not self.running():
                    raise SandboxInfraError(f"sandbox container {self.name} ended before its supervisor started "
                                            f"(does {self.image} have {PYTHON_IN_IMAGE}?)")
            time.sleep(0.005)
        self.request({"op": "ping"}, timeout_s=REPLY_GRACE_S)

    def running(self) -> bool:
        result = docker("inspect", "--format", "{{.State.Running}}", self.name, check=False, timeout=30)
        return result.returncode == 0 and result.stdout.strip() == "true"

    @property
    def alive(self) -> bool:
        return self.conn is not None

    def close(self) -> None:
        """Closing the connection ends the supervisor and the container (`--rm`); the kill makes sure of it."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        # Non-blocking: closing a pool of several containers must not wait for each engine round trip.
        subprocess.Popen(["docker", "rm", "-f", self.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._remove_folder()

    def _remove_folder(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    # ---- requests

    def request(self, message: dict[str, Any], *, fds: Sequence[int] = (), timeout_s: float) -> dict[str, Any]:
        """Send one request, wait for its reply. A broken or silent connection is `SupervisorGone` and this
        container is dead from then on."""
        if self.conn is None:
            raise SupervisorGone(f"sandbox container {self.name} is gone")
        message = {**message, "id": next(self._ids)}
        data = json.dumps(message, separators=(",", ":")).encode()
        frame = struct.pack(">I", len(data)) + data
        try:
            self.conn.settimeout(timeout_s + REPLY_GRACE_S)
            if fds:
                socket.send_fds(self.conn, [frame], list(fds))
            else:
                self.conn.sendall(frame)
            header = self._receive(4)
            reply = json.loads(self._receive(struct.unpack(">I", header)[0]))
        except (OSError, ValueError, struct.error) as exc:
            self._die()
            reason = "stopped answering" if isinstance(exc, socket.timeout) else "died"
            raise SupervisorGone(f"the supervisor of {self.name} {reason}") from None
        if reply.get("id") != message["id"]:
            self._die()
            raise SupervisorGone(f"the supervisor of {self.name} answered out of turn")
        if reply.get("unusable"):
            self.unusable = reply["unusable"]
            self._die()
        if not reply.get("ok"):
            raise SandboxInfraError(f"the supervisor of {self.name} could not serve a request: {reply.get('error')}")
        return reply

    def _receive(self, size: int) -> bytes:
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:
            n = self.conn.recv_into(view[got:])
            if n == 0:
                raise ConnectionError("connection closed")
            got += n
        return bytes(buffer)

    def _die(self) -> None:
        self.close()  # cheap: the engine's removal runs in the background
