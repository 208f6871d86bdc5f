"""One-shot runs: a fresh isolated container per command, for code that runs once (a build step, a check).

The command's stdout and stderr are read from the `docker run` client while they are produced and cut at
the output cap before they reach memory; the engine keeps no log of its own (`--log-driver none`), so an
output flood fills neither our memory nor the host's disk. Past the cap, or past the wall-clock limit, the
container is killed by name. The container is removed only after its state was read, so an out-of-memory
kill is told apart from other kills.
"""

from __future__ import annotations

import itertools
import os
import selectors
import subprocess
import threading
import time
from typing import Any, Sequence

from tasksynth.docker.engine import docker
from tasksynth.docker.ownership import home_key, owner_labels
from tasksynth.errors import DockerUnavailable
from tasksynth.sandbox.isolation import Limits, Mount, isolated_run_args
from tasksynth.sandbox.results import RunResult, SandboxInfraError

DOCKER_RUN_FAILED = 125  # `docker run`'s own failure, as opposed to the command's exit code
_names = itertools.count()


def run_oneshot(config: Any, image: str, command: Sequence[str] | str, *, mounts: Sequence[Mount] = (),
                limits: Limits | None = None, stdin: bytes | None = None, output_cap: int | None = None,
                workdir: str | None = None, env: dict[str, str] | None = None,
                tmpfs: dict[str, str] | None = None) -> RunResult:
    """Run `command` (argv, or a string for `sh -c`) as the untrusted user in a fresh isolated container.
    Failures of the engine are retried `sandbox.infra_retries` times, then give the outcome `infra_error`."""
    limits = limits or Limits.from_config(config)
    cap = output_cap or config.sandbox.output_cap_bytes
    argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
    error = ""
    for _ in range(config.sandbox.infra_retries + 1):
        try:
            return _run_once(config, image, argv, mounts, limits, stdin, cap, workdir, env, tmpfs)
        except SandboxInfraError as exc:
            error = str(exc)
    return RunResult("infra_error", None, reason=error)


def _run_once(config, image, argv, mounts, limits, stdin, cap, workdir, env, tmpfs) -> RunResult:
    name = f"tasksynth-oneshot-{home_key(config.home_path)[:8]}-{os.getpid()}-{next(_names)}"
    args = isolated_run_args(limits, name=name, labels=owner_labels(config.home_path, "oneshot"), mounts=mounts,
                             tmpfs=tmpfs, workdir=workdir, env=env)
    started = time.monotonic()
    try:
        process = subprocess.Popen(["docker", "run", *(["-i"] if stdin is not None else []), *args, image, *argv],
                                   stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise SandboxInfraError("no docker client on PATH") from None
    try:
        if stdin is not None:
            threading.Thread(target=_feed, args=(process, stdin), daemon=True).start()
        streams, stopped = _read_capped(process, cap, started + limits.wall_s, name)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass  # a client that does not end: killed below, its container removed
        seconds = time.monotonic() - started
        state = _container_state(name)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        try:
            docker("rm", "-f", name, check=False, timeout=60)
        except (subprocess.TimeoutExpired, DockerUnavailable):
            pass
    stdout, stderr = (streams[k].decode("utf-8", errors="replace") for k in ("stdout", "stderr"))
    if state is None:  # the container never existed: the engine or `docker run` failed
        raise SandboxInfraError(f"docker run failed (exit {process.returncode}): "
                                f"{(stderr.strip().splitlines() or ['no output'])[-1]}")
    exit_code, oom_killed = state
    result = RunResult("ok", exit_code, stdout, stderr, seconds)
    if stopped == "timeout":
        result.outcome, result.reason = "timeout", f"still running after {limits.wall_s:g} s (wall clock); killed"
    elif stopped:
        result.outcome, result.reason = "output_capped", f"wrote more than {cap} bytes on {stopped}; stopped"
    elif oom_killed:
        result.outcome, result.reason = "oom", f"killed by the out-of-memory killer (memory limit {limits.memory})"
    elif exit_code > 128 and exit_code - 128 in (9, 15, 6, 11):
        result.outcome, result.reason = "killed", f"killed by signal {exit_code - 128}"
    return result


def _feed(process: subprocess.Popen, data: bytes) -> None:
    try:
        process.stdin.write(data)
        process.stdin.close()
    except OSError:
        pass


def _read_capped(process: subprocess.Popen, cap: int, deadline: float, name: str) -> tuple[dict, str | None]:
    """Read both pipes, keeping at most `cap` bytes of each; kill the container on timeout or overflow."""
    data = {"stdout": bytearray(), "stderr": bytearray()}
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ, "stdout")
    selector.register(process.stderr, selectors.EVENT_READ, "stderr")
    stopped = None
    while selector.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            stopped = "timeout"
            break
        for key, _ in selector.select(min(remaining, 1.0)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            buffer = data[key.data]
            room = cap - len(buffer)
            buffer += chunk[:max(room, 0)]
            if len(chunk) > room:
                stopped = key.data
        if stopped:
            break
    if stopped:
        # Kill, and read on (discarding) until the client exits: it would block on a full pipe otherwise. A
        # container still being created when the first kill came is killed by a later one.
        drain_until, next_kill = time.monotonic() + 30, 0.0
        while selector.get_map() and time.monotonic() < drain_until:
            if time.monotonic() >= next_kill:
                _kill(name)
                next_kill = time.monotonic() + 2
            for key, _ in selector.select(0.5):
                if not os.read(key.fd, 65536):
                    selector.unregister(key.fileobj)
    selector.close()
    return data, stopped


def _kill(name: str) -> None:
    try:
        docker("kill", name, check=False, timeout=20)
    except (subprocess.TimeoutExpired, DockerUnavailable):
        pass  # the next try, or the final `docker rm -f`, ends it


def _container_state(name: str) -> tuple[int, bool] | None:
    try:
        result = docker("inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", name, check=False,
                        timeout=60)
    except (DockerUnavailable, subprocess.TimeoutExpired) as exc:
        raise SandboxInfraError(f"the engine did not answer: {exc}") from None
    if result.returncode != 0:
        return None
    code, oom = result.stdout.split()
    return int(code), oom == "true"
