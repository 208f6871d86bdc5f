"""Base images: an OS with a given Python, git and patch, and the host's CA bundle.

Two sources. With a registry, the official `python:X.Y-slim` image plus git and patch. Without one (the
default here: no registry answers), a Debian suite whose own Python is the wanted version, made with
`debootstrap --variant=minbase` and `docker import` (about a minute). Either way the host CA bundle is copied
in and named by SSL_CERT_FILE / PIP_CERT, so pip inside the image trusts what the host trusts.

Tags are content-addressed: the same inputs give the same tag, and an existing tag is a cache hit.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tasksynth.config import Config
from tasksynth.docker.engine import LAYER_LABEL, MANAGED_LABEL, docker, image_exists, registry_mirrors, require_engine
from tasksynth.errors import ImageBuildFailed
from tasksynth.hashing import content_hash, sha256_bytes

RECIPE_VERSION = 1
# The Debian suites whose system Python is each version; other versions need a registry image.
DEBIAN_SUITES = {"3.9": "bullseye", "3.11": "bookworm", "3.13": "trixie"}
DEBIAN_PACKAGES = ["python3", "python3-venv", "python3-dev", "git", "patch", "ca-certificates", "procps"]
CA_PATH_IN_IMAGE = "/etc/ssl/certs/tasksynth-host-ca.pem"


@dataclass(frozen=True)
class BaseImage:
    tag: str
    python: str
    source: str  # debian:<suite> | registry:python:X.Y-slim


# Official python:X.Y-slim images a registry serves.
REGISTRY_PYTHONS = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]


def supported_pythons(config: Config) -> list[str]:
    """Versions a base image can be had for: the official images' with a registry, the Debian suites' without."""
    versions = REGISTRY_PYTHONS if use_registry(config) else list(DEBIAN_SUITES)
    return sorted(versions, key=lambda v: tuple(map(int, v.split("."))))


def use_registry(config: Config) -> bool:
    """`auto` pulls only where the engine has a registry mirror configured: without one, a pull would go to
    the public Docker Hub, which this pipeline must not assume it can reach."""
    if config.docker.image_source == "registry":
        return True
    if config.docker.image_source == "debootstrap":
        return False
    return bool(registry_mirrors())


def base_image(config: Config, python: str = "3.11", *, log=print) -> BaseImage:
    """The base image for `python`, built or pulled on first use, a cache hit afterwards."""
    require_engine()
    ca = config.ca_bundle_path()
    ca_bytes = ca.read_bytes() if ca else b""
    if use_registry(config):
        upstream = f"python:{python}-slim"
        tag = f"tasksynth/base:py{python}-slim-{content_hash(RECIPE_VERSION, upstream, sha256_bytes(ca_bytes), length=10)}"
        image = BaseImage(tag, python, f"registry:{upstream}")
        with image_lock(config, tag):
            if not image_exists(tag):
                _build_from_registry(image, upstream, ca_bytes, log)
        return image
    suite = DEBIAN_SUITES.get(python)
    if suite is None:
        raise ImageBuildFailed(f"no base image for Python {python} without a registry: Debian suites give "
                               f"{', '.join(DEBIAN_SUITES)}; set docker.image_source = 'registry' where one answers")
    key = content_hash(RECIPE_VERSION, suite, DEBIAN_PACKAGES, config.docker.debian_mirror,
                       sha256_bytes(ca_bytes), length=10)
    tag = f"tasksynth/base:py{python}-{suite}-{key}"
    image = BaseImage(tag, python, f"debian:{suite}")
    with image_lock(config, tag):
        if not image_exists(tag):
            _build_from_debootstrap(image, suite, config.docker.debian_mirror, ca_bytes, log)
    return image


def _image_env(python: str) -> list[str]:
    return [f"ENV SSL_CERT_FILE={CA_PATH_IN_IMAGE}", f"ENV PIP_CERT={CA_PATH_IN_IMAGE}",
            f"ENV REQUESTS_CA_BUNDLE={CA_PATH_IN_IMAGE}", "ENV LANG=C.UTF-8",
            "ENV PIP_DISABLE_PIP_VERSION_CHECK=1", "ENV PYTHONDONTWRITEBYTECODE=1",
            f"LABEL {MANAGED_LABEL}=true", f"LABEL {LAYER_LABEL}=base", f"LABEL org.tasksynth.python={python}"]


def _build_from_debootstrap(image: BaseImage, suite: str, mirror: str, ca_bytes: bytes, log) -> None:
    if not shutil.which("debootstrap"):
        raise ImageBuildFailed("debootstrap is not installed (apt-get install debootstrap, or "
                               "`tasksynth doctor --fix`)")
    log(f"building {image.tag} from Debian {suite} with debootstrap (about a minute)")
    with tempfile.TemporaryDirectory(prefix="tasksynth-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        result = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
                                 suite, str(rootfs), mirror], capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise ImageBuildFailed(f"debootstrap {suite} failed:\n{tail}")
        if ca_bytes:
            (rootfs / CA_PATH_IN_IMAGE.lstrip("/")).write_bytes(ca_bytes)
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / cache, ignore_errors=True)
            (rootfs / cache).mkdir(parents=True, exist_ok=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        changes = [arg for change in [*_image_env(image.python), 'CMD ["/bin/bash"]'] for arg in ("--change", change)]
        imported = subprocess.run(["docker", "import", *changes, "-", image.tag], stdin=tar.stdout,
                                  capture_output=True, text=True)
        tar.wait()
        if imported.returncode != 0:
            raise ImageBuildFailed(f"docker import failed: {imported.stderr.strip()}")
    log(f"built {image.tag}")


def _build_from_registry(image: BaseImage, upstream: str, ca_bytes: bytes, log) -> None:
    log(f"building {image.tag} from {upstream}")
    with tempfile.TemporaryDirectory(prefix="tasksynth-base-") as tmp:
        context = Path(tmp)
        (context / "host-ca.pem").write_bytes(ca_bytes)
        dockerfile = "\n".join([
            f"FROM {upstream}",
            f"COPY host-ca.pem {CA_PATH_IN_IMAGE}",
            "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends git patch procps "
            "&& rm -rf /var/lib/apt/lists/*",
            *_image_env(image.python),
        ])
        (context / "Dockerfile").write_text(dockerfile + "\n")
        result = docker("build", "--network", "host", "-t", image.tag, str(context), check=False, timeout=1800)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-15:])
            raise ImageBuildFailed(f"building from {upstream} failed (no registry?):\n{tail}")
    log(f"built {image.tag}")


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def image_lock(config: Config, tag: str) -> Iterator[None]:
    """One build per tag at a time, across threads and processes: the second waiter finds the image built."""
    with _thread_locks_guard:
        local = _thread_locks.setdefault(tag, threading.Lock())
    locks = config.home_path / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with local, open(locks / (re.sub(r"[^A-Za-z0-9._-]", "_", tag) + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
