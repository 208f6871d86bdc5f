"""One long-lived local Prefect server per Prefect home, shared by every command of that home.

Prefect's ephemeral mode starts a temporary API server in every process that runs a flow: 10-20 s of start-up
per command, a hard 20 s limit that a busy machine misses, and a server left running (re-parented to init)
when the command is killed. Instead, the first command that needs Prefect starts a server here and records
it; later commands find the record and use it:

    <PREFECT_HOME>/server.json   {"pid", "start" (the kernel's start time of pid), "port", "url", "started_at"}
    <PREFECT_HOME>/server.lock   held while a command checks, starts or replaces the server, so concurrent
                                 commands of one home share one server
    <home>/logs/prefect-server.log

The server is this module run as a program (`python -m flows.prefect_server --port N --idle-s S`): Prefect's
API app under uvicorn, in its own session (a killed command does not take it down), with a watchdog that
stops it after `flows.server_idle_s` without an API request. The key is the Prefect home (by default
`<tasksynth home>/prefect`) because that is where the server's database lives: one database, one server.

A record is trusted only while its process lives (same pid, same start time) and answers; a stale record is
replaced, a server that stopped answering is killed and replaced. Start-up gets `flows.server_start_timeout_s`
per attempt and a second attempt. When the user sets PREFECT_API_URL, nothing here runs.

Ephemeral servers that an earlier killed command of the same Prefect home left behind (Prefect's
`prefect.server.api.server:create_app` subprocesses, orphaned) are found in /proc and stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tasksynth.config import Config
from tasksynth.docker.ownership import process_start_time
from tasksynth.errors import TasksynthError

RECORD_NAME = "server.json"
LOCK_NAME = "server.lock"
# Test knob: the server program sleeps this long before it starts serving (a slow machine, made on purpose).
START_DELAY_ENV = "_TASKSYNTH_TEST_PREFECT_SERVER_DELAY_S"
# Set together with PREFECT_API_URL when the URL is this module's server (not the user's): a later command,
# or a child process, checks the server again instead of trusting the URL.
OWNED_URL_ENV = "_TASKSYNTH_HOME_PREFECT_API_URL"
START_ATTEMPTS = 2


class PrefectServerUnavailable(TasksynthError):
    """The local Prefect server could not be started."""


@dataclass(frozen=True)
class ServerRecord:
    pid: int
    start: str
    port: int
    url: str
    started_at: float

    def alive(self) -> bool:
        return _running(self.pid, self.start)


def prefect_home(config: Config) -> Path:
    """The Prefect home commands of this config use (PREFECT_HOME, else `<home>/prefect`)."""
    return Path(os.environ.get("PREFECT_HOME") or config.home_path / "prefect").expanduser().resolve()


def server_log_path(config: Config) -> Path:
    return config.home_path / "logs" / "prefect-server.log"


def read_record(home: Path) -> ServerRecord | None:
    try:
        data = json.loads((home / RECORD_NAME).read_text())
        return ServerRecord(int(data["pid"]), str(data["start"]), int(data["port"]), str(data["url"]),
                            float(data["started_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(home: Path, record: ServerRecord) -> None:
    partial = home / f".{RECORD_NAME}.{os.getpid()}"
    partial.write_text(json.dumps(asdict(record)))
    os.replace(partial, home / RECORD_NAME)  # atomic: a reader sees the old record or the new one


def _remove_record(home: Path, pid: int | None = None) -> None:
    """Remove the record (only if it is still `pid`'s, when given)."""
    record = read_record(home)
    if record is not None and (pid is None or record.pid == pid):
        with contextlib.suppress(FileNotFoundError):
            (home / RECORD_NAME).unlink()


@contextlib.contextmanager
def _locked(home: Path, *, blocking: bool = True) -> Iterator[bool]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def ensure_server(config: Config) -> str:
    """The API URL of this Prefect home's server, started (or replaced) when there is none that answers."""
    home = prefect_home(config)
    with _locked(home):
        record = read_record(home)
        if record is not None:
            if record.alive() and _answers_within(record.url, config.flows.server_start_timeout_s):
                return record.url
            # Stale (process gone) or not answering: whatever is left of it goes, and a new one starts.
            _terminate(record.pid, record.start)
            _remove_record(home)
        failures = []
        for _ in range(START_ATTEMPTS):
            try:
                record = _start(config, home)
            except PrefectServerUnavailable as exc:
                failures.append(str(exc))
                continue
            _write_record(home, record)
            return record.url
        raise PrefectServerUnavailable(f"the local Prefect server did not start ({'; then '.join(failures)}); "
                                       f"see {server_log_path(config)}, or set PREFECT_API_URL to a running "
                                       "Prefect server")


def _answers_within(url: str, limit: float) -> bool:
    """A live server that is slow to answer (a busy machine) is given time before it is replaced."""
    deadline = time.monotonic() + limit
    while not healthy(url):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _start(config: Config, home: Path) -> ServerRecord:
    port = _free_port()
    log_path = server_log_path(config)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}  # no outside traffic
    env.setdefault("PREFECT_UI_ENABLED", "false")
    env.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    env.pop("PREFECT_API_URL", None)
    env.pop(OWNED_URL_ENV, None)
    root = str(Path(__file__).resolve().parent.parent)  # the server imports this module from the same tree
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.prefect_server", "--port", str(port),
             "--idle-s", str(config.flows.server_idle_s), "--home", str(home)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(home),
            start_new_session=True)  # its own session: a signal to the command's group does not reach it
    url = f"http://127.0.0.1:{port}/api"
    limit = config.flows.server_start_timeout_s
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PrefectServerUnavailable(f"the server exited with code {process.returncode}")
        if healthy(url, timeout=1.0):
            start = process_start_time(process.pid) or ""
            return ServerRecord(process.pid, start, port, url, time.time())
        time.sleep(0.1)
    _terminate(process.pid, process_start_time(process.pid))
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    raise PrefectServerUnavailable(f"no answer within {limit:.0f}s")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _terminate(pid: int, start: str | None, grace_s: float = 10.0) -> bool:
    """Stop the process (and its session's group) if it is still the one that was recorded; True if it ran."""
    if not _running(pid, start):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _running(pid, start):
        time.sleep(0.05)
    if _running(pid, start):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return True


def _running(pid: int, start: str | None) -> bool:
    """Whether `pid` is still the process that started at `start` and has not exited (an exited child of the
    process that started it stays a zombie until it is waited for)."""
    return start is not None and process_start_time(pid) == start and not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def stop_server(home: Path) -> ServerRecord | None:
    """Stop the server of this Prefect home; the record it had, or None when none was running."""
    with _locked(home):
        record = read_record(home)
        if record is None:
            return None
        ran = _terminate(record.pid, record.start)
        _remove_record(home)
        return record if ran else None


def server_status(home: Path) -> tuple[ServerRecord | None, str]:
    """The record of this Prefect home's server and one word: running, not answering, stale (its process is
    gone) or none."""
    record = read_record(home)
    if record is None:
        return None, "none"
    if not record.alive():
        return record, "stale"
    return record, "running" if healthy(record.url) else "not answering"


# ------------------------------------------------------------------------ orphans of Prefect's ephemeral mode


def orphaned_ephemeral_servers(home: Path) -> list[int]:
    """Pids of Prefect ephemeral servers started for this Prefect home whose command is gone (re-parented to
    init or a subreaper: their parent is no longer a Python process)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if b"prefect.server.api.server:create_app" not in cmdline:
                continue
            environ = dict(item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0")
                           if b"=" in item)
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[-1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if environ.get(b"PREFECT__SERVER_EPHEMERAL") != b"1":
            continue
        if Path(environ.get(b"PREFECT_HOME", b"").decode(errors="replace") or "/").resolve() != home:
            continue
        if ppid <= 1 or not _is_python(ppid):
            found.append(int(proc.name))
    return found


def _is_python(pid: int) -> bool:
    try:
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False


def reap_orphaned_ephemeral_servers(config: Config) -> int:
    reaped = 0
    for pid in orphaned_ephemeral_servers(prefect_home(config)):
        reaped += _terminate(pid, process_start_time(pid))
    return reaped


# ------------------------------------------------------------------------------------- the server program


class _Activity:
    """ASGI middleware that remembers when the last API request ended and how many are open (a websocket
    counts while it is open)."""

    def __init__(self, app) -> None:
        self.app = app
        self.open = 0
        self.last = time.monotonic()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        self.open += 1
        self.last = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1
            self.last = time.monotonic()

    def idle_for(self) -> float:
        return 0.0 if self.open else time.monotonic() - self.last


def _watch_idle(server, activity: _Activity, home: Path, idle_s: float) -> None:
    """Stop the server after `idle_s` without a request. The record goes first, under the lock, so a command
    that checks the server at that moment either made a request (and keeps it alive) or starts a new one."""
    while not server.should_exit:
        time.sleep(max(0.2, min(5.0, idle_s / 4)))
        if activity.idle_for() < idle_s:
            continue
        with _locked(home, blocking=False) as locked:
            if not locked or activity.idle_for() < idle_s:
                continue
            _remove_record(home, os.getpid())
            print(f"no API request for {idle_s:.0f}s: stopping", flush=True)
            server.should_exit = True


def serve(port: int, idle_s: float, home: Path) -> None:
    time.sleep(float(os.environ.get(START_DELAY_ENV) or 0))
    import threading

    import uvicorn
    from prefect.server.api.server import create_app

    activity = _Activity(create_app(final=True))
    server = uvicorn.Server(uvicorn.Config(activity, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    threading.Thread(target=_watch_idle, args=(server, activity, home, idle_s), daemon=True).start()
    server.run()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="A tasksynth home's Prefect server (started by tasksynth).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle-s", type=float, required=True)
    parser.add_argument("--home", type=Path, required=True)
    args = parser.parse_args(argv)
    serve(args.port, args.idle_s, args.home)


if __name__ == "__main__":
    main()
