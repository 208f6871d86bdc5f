"""A thin, explicit layer over the `docker` CLI: the engine's health, running commands, our labels.

The CLI (not an SDK) is used on purpose: it is what users debug with, every call here can be replayed by
hand, and the client is the one thing Docker installs everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tasksynth.errors import DockerUnavailable

MANAGED_LABEL = "org.tasksynth.managed"
DOCKERD_FLAGS = ["--bridge=none", "--iptables=false", "--ip-masq=false"]


@dataclass
class EngineStatus:
    ok: bool
    detail: str  # server version when ok, else what is wrong


def engine_status(timeout: float = 10) -> EngineStatus:
    if not shutil.which("docker"):
        return EngineStatus(False, "no docker client on PATH")
    try:
        result = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                                text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return EngineStatus(False, "the Docker engine did not answer within "
                                   f"{timeout:.0f}s")
    if result.returncode != 0:
        return EngineStatus(False, (result.stderr.strip().splitlines() or ["no engine answers"])[-1])
    return EngineStatus(True, result.stdout.strip())


def require_engine() -> None:
    status = engine_status()
    if not status.ok:
        raise DockerUnavailable(f"no Docker engine: {status.detail}. Run `tasksynth doctor --fix` (as root on "
                                "Debian) or start dockerd yourself")


def docker(*args: str, input: bytes | str | None = None, timeout: float | None = None,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run `docker ARGS`; a dead engine becomes `DockerUnavailable`, other failures are returned or raised
    (`check`) as CalledProcessError with the output attached."""
    text = not isinstance(input, bytes)
    try:
        result = subprocess.run(["docker", *args], input=input, capture_output=True, text=text, timeout=timeout,
                                errors="replace" if text else None)
    except FileNotFoundError:
        raise DockerUnavailable("no docker client on PATH; run `tasksynth doctor --fix`") from None
    stderr = result.stderr if text else result.stderr.decode(errors="replace")
    if result.returncode != 0 and _engine_down(stderr):
        raise DockerUnavailable(f"the Docker engine stopped answering: {stderr.strip().splitlines()[-1]}")
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, ["docker", *args], result.stdout, result.stderr)
    return result


def _engine_down(stderr: str) -> bool:
    return "Cannot connect to the Docker daemon" in stderr or "Is the docker daemon running" in stderr


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False, timeout=30).returncode == 0


LAYER_LABEL = "org.tasksynth.layer"  # base | env | instance


def managed_images(layers: list[str] | None = None) -> list[str]:
    """Tags of our images, optionally only those of the given layers."""
    tags: list[str] = []
    for layer in layers or [None]:
        label = f"{LAYER_LABEL}={layer}" if layer else f"{MANAGED_LABEL}=true"
        result = docker("images", "--filter", f"label={MANAGED_LABEL}=true", "--filter", f"label={label}",
                        "--format", "{{.Repository}}:{{.Tag}}", timeout=60)
        tags += [line for line in result.stdout.split() if line and "<none>" not in line]
    return sorted(set(tags))


def prune_images(layers: list[str] | None = None) -> list[str]:
    """Remove only images that carry our label (of the given layers); other images are never touched."""
    tags = managed_images(layers)
    if tags:
        docker("rmi", "-f", *tags, check=False, timeout=600)
    docker("image", "prune", "-f", "--filter", f"label={MANAGED_LABEL}=true", check=False, timeout=600)
    return tags


def registry_mirrors() -> list[str]:
    result = docker("info", "--format", "{{json .RegistryConfig.Mirrors}}", check=False, timeout=30)
    text = result.stdout.strip()
    return [] if result.returncode != 0 or text in ("", "null", "[]") else text.strip("[]").replace('"', "").split(",")


def start_engine(log_dir: Path, *, install: bool = True, wait_s: float = 60) -> str:
    """Install docker.io (Debian, as root) when no engine binary exists, start dockerd with no bridge
    network (builds use --network host, runs use --network none), and wait until it answers."""
    if engine_status().ok:
        return "already running"
    actions = []
    if not shutil.which("dockerd"):
        if not install:
            raise DockerUnavailable("dockerd is not installed")
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise DockerUnavailable("dockerd is not installed; install docker.io (needs root on Debian)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "docker.io", "debootstrap"], check=True, env=env,
                       capture_output=True)
        actions.append("installed docker.io")
    if os.geteuid() != 0:
        raise DockerUnavailable("starting dockerd needs root")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "dockerd.log", "ab")  # noqa: SIM115 - handed to the daemon for its lifetime
    subprocess.Popen(["dockerd", *DOCKERD_FLAGS], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if engine_status(timeout=5).ok:
            actions.append(f"started dockerd (log: {log_dir / 'dockerd.log'})")
            return "; ".join(actions)
        time.sleep(1)
    raise DockerUnavailable(f"dockerd did not come up within {wait_s:.0f}s; see {log_dir / 'dockerd.log'}")
