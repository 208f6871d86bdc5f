"""Fixtures of the sandbox tests: the base image, a config with a fresh home and small limits, and one warm
call pool per module (starting containers is the slow part; the hostile tests share one pool and check that
it keeps serving after each)."""

from __future__ import annotations

import socket
import threading

import pytest


@pytest.fixture(scope="session")
def sandbox_image(base_311):
    return base_311.tag


@pytest.fixture(scope="module")
def sandbox_config(tmp_path_factory, sandbox_image):
    """Small limits so that the hostile tests end quickly and cost the shared machine little."""
    from tasksynth.config import load_config

    home = tmp_path_factory.mktemp("sandbox-home")
    return load_config(environ={
        "TASKSYNTH_HOME": str(home), "TASKSYNTH_SANDBOX__IMAGE": sandbox_image,
        "TASKSYNTH_SANDBOX__SLOT_DIR": str(home / "slots"), "TASKSYNTH_SANDBOX__MAX_CONTAINERS": "2",
        "TASKSYNTH_DOCKER__MEMORY": "768m", "TASKSYNTH_DOCKER__PIDS_LIMIT": "96", "TASKSYNTH_DOCKER__CPUS": "1",
        "TASKSYNTH_DOCKER__SANDBOX_TIMEOUT_S": "20", "TASKSYNTH_SANDBOX__TMPFS_BYTES": str(32 << 20),
        "TASKSYNTH_SANDBOX__FILE_SIZE_BYTES": str(8 << 20), "TASKSYNTH_SANDBOX__OUTPUT_CAP_BYTES": "65536",
        "TASKSYNTH_SANDBOX__CALL_TIMEOUT_S": "5", "TASKSYNTH_SANDBOX__CALL_CPU_S": "5",
        "TASKSYNTH_SANDBOX__CALL_MEMORY_BYTES": str(256 << 20), "TASKSYNTH_SANDBOX__INFRA_RETRIES": "1"})


@pytest.fixture(scope="module")
def pool(sandbox_config):
    from tasksynth.sandbox import CallPool

    with CallPool(sandbox_config) as opened:
        yield opened


class LoopbackListener:
    """A TCP listener on the host's 127.0.0.1 that records every connection and byte it gets."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.settimeout(2)
            try:
                self.received += conn.recv(4096)
            except OSError:
                pass
            conn.close()

    def close(self):
        self.server.close()


@pytest.fixture
def loopback_listener():
    listener = LoopbackListener()
    yield listener
    listener.close()
