"""The bundled runner as a child of a flow, for a machine where no agent endpoint answers yet.

    with local_runner(config, "statement_writer") as runner:   # starts `tasksynth runner serve` if needed
        ...                                                     # other work while the model loads
        runner.wait_ready()                                     # blocks until GET /v1/models answers
        ...                                                     # agent steps
    # the runner is stopped here (SIGTERM, then SIGKILL), also when the block raised

Nothing is started when the role's endpoint is not on this machine (DeepSeek, a vLLM cluster) or when
something already answers there (a runner the user started): that endpoint is used as it is. The child's
output goes to `<home>/logs/runner.log`; when it dies or does not answer in time, `RunnerUnavailable` says
so with the tail of that log. The child is also killed by the kernel if this process dies first (Linux).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx

from tasksynth.config import Config, secret
from tasksynth.errors import TasksynthError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 15


class RunnerUnavailable(TasksynthError):
    """The bundled runner could not be started, or died, or did not answer in time."""


def say_on_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def endpoint_answers(base_url: str, api_key_env: str = "", timeout_s: float = 2.0) -> bool:
    """True when GET <base_url>/models answers 200."""
    headers = {}
    key = secret(api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        return httpx.get(base_url.rstrip("/") + "/models", headers=headers, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


class RunnerProcess:
    """A started `tasksynth runner serve`, or nothing (`started` False) when the endpoint is used as it is."""

    def __init__(self, base_url: str, *, process: subprocess.Popen | None = None, log_path: Path | None = None,
                 log_offset: int = 0, say: Callable[[str], None] = say_on_stderr,
                 ready_timeout_s: float = READY_TIMEOUT_S, api_key_env: str = "") -> None:
        self.base_url = base_url
        self.api_key_env = api_key_env  # the variable holding the key the started runner demands
        self.process = process
        self.log_path = log_path
        self.log_offset = log_offset  # where this start's part of the (appended) log begins
        self.say = say
        self.ready_timeout_s = ready_timeout_s
        self.started_at = time.monotonic()
        self.ready_s: float | None = None if process else 0.0

    @property
    def started(self) -> bool:
        return self.process is not None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def wait_ready(self) -> float:
        """Block until the runner answers; seconds from its start. Raises `RunnerUnavailable` if it exits
        first or takes longer than the timeout (it is then stopped)."""
        if self.ready_s is not None:
            return self.ready_s
        assert self.process is not None
        deadline = self.started_at + self.ready_timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise RunnerUnavailable(f"the bundled runner exited with code {code} before it answered at "
                                        f"{self.base_url}; {self.log_path}:\n{self.log_tail()}")
            if endpoint_answers(self.base_url, self.api_key_env, timeout_s=1.0):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RunnerUnavailable(f"the bundled runner did not answer at {self.base_url} within "
                                        f"{self.ready_timeout_s:.0f}s; {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.5)
        self.ready_s = time.monotonic() - self.started_at
        self.say(f"runner: ready at {self.base_url} after {self.ready_s:.1f}s")
        return self.ready_s

    def stop(self) -> None:
        """SIGTERM (the runner drains its requests and exits), then SIGKILL if it does not."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)
        self.say(f"runner: stopped (pid {self.process.pid})")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines this start wrote to the log (progress bars' carriage returns make lines too)."""
        try:
            with open(self.log_path, "rb") as log:  # type: ignore[arg-type]
                log.seek(self.log_offset)
                text = log.read().decode(errors="replace").replace("\r", "\n")
        except (OSError, TypeError):
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(the log is empty)"


def runner_command(config: Config, port: int, served_name: str) -> list[str]:
    """`tasksynth runner serve` with the [runner] settings, on 127.0.0.1:port, serving `served_name`."""
    exe = shutil.which("tasksynth", path=str(Path(sys.executable).parent))
    head = [exe] if exe else [sys.executable, "-c", "from tasksynth.cli.main import app; app()"]
    r = config.runner
    args = ["runner", "serve", "--host", "127.0.0.1", "--port", str(port), "--served-name", served_name,
            "--top-k", str(r.top_k), "--device", r.device, "--max-batch", str(r.max_batch),
            "--max-queue", str(r.max_queue), "--drain-s", "2", "--log-level", "warning"]
    if r.model:
        args += ["--model", r.model]
    if r.indexer_weights:
        args += ["--indexer-weights", r.indexer_weights]
    if r.api_key_env:  # the variable's name only: the key itself never appears on a command line
        args += ["--api-key-env", r.api_key_env]
    return head + args


def start_runner(config: Config, role: str, *, say: Callable[[str], None] = say_on_stderr,
                 ready_timeout_s: float = READY_TIMEOUT_S) -> RunnerProcess:
    """Start the bundled runner for `role` if its endpoint is local and silent; do not wait for it."""
    settings = config.role(role)
    url = urlparse(settings.base_url)
    if url.hostname not in LOCAL_HOSTS or url.path.rstrip("/") != "/v1":
        say(f"runner: using the configured endpoint {settings.base_url} (model {settings.model})")
        return RunnerProcess(settings.base_url, say=say)
    if endpoint_answers(settings.base_url, settings.api_key_env):
        say(f"runner: an endpoint already answers at {settings.base_url}; using it (model {settings.model})")
        return RunnerProcess(settings.base_url, say=say)
    port = url.port or 80
    log_path = config.home_path / "logs" / "runner.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = runner_command(config, port, settings.model)
    say(f"runner: nothing answers at {settings.base_url}; starting the bundled runner "
        f"(`tasksynth runner serve --port {port}`, log: {log_path})")
    with open(log_path, "ab") as log:
        offset = log.tell()
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")},
                                   preexec_fn=_parent_death_signal())
    return RunnerProcess(settings.base_url, process=process, log_path=log_path, log_offset=offset, say=say,
                         ready_timeout_s=ready_timeout_s, api_key_env=config.runner.api_key_env)


@contextlib.contextmanager
def local_runner(config: Config, role: str, *, say: Callable[[str], None] = say_on_stderr,
                 ready_timeout_s: float = READY_TIMEOUT_S) -> Iterator[RunnerProcess]:
    """`start_runner`, and stop what it started when the block ends, however it ends."""
    runner = start_runner(config, role, say=say, ready_timeout_s=ready_timeout_s)
    try:
        yield runner
    finally:
        runner.stop()


def _parent_death_signal() -> Callable[[], None] | None:
    """A function for the child to run before exec: ask Linux to SIGTERM it when its parent dies (a
    SIGKILLed flow must not leave a runner holding the port). libc is loaded here, in the parent, so the
    child does nothing but one system call between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
