"""The one bundled-runner process every real-model test shares: SmolLM2-135M served by `tasksynth runner serve`
on 127.0.0.1, started once per test session (the model loads in tens of seconds on 2 cores) and stopped at
the end. Tests that use it keep their settings tiny: a few short calls each."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_runner(workdir: Path) -> Iterator[str]:
    """Start the runner as a user would, yield its base URL once /v1/models answers, stop it afterwards."""
    import pytest

    port = _free_port()
    log_path = workdir / "runner.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "tasksynth.cli.main", "runner", "serve", "--host",
                                    "127.0.0.1", "--port", str(port)], cwd=workdir, stdout=log,
                                   stderr=subprocess.STDOUT, env={**os.environ, "TASKSYNTH_HOME": str(workdir / "home")})
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the runner exited with {process.returncode}:\n{_tail(log_path)}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the runner did not answer within {START_TIMEOUT_S}s:\n{_tail(log_path)}")
            time.sleep(1)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
