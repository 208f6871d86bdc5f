"""The kernel image: the base image plus a virtualenv at /opt/kernel with the kernel's libraries.

Built the way envbuilder builds an environment layer, reusing its parts: `docker build --network none` runs
only our own step (the empty venv), the host fetches the wheels into the trusted wheelhouse
(`envbuilder.wheelhouse.Wheelhouse.provide`: binaries only, sha256 checked), and the install runs in a
sandboxed container without network from the read-only wheelhouse (`run_sandboxed`, `pip --no-index`), as
the untrusted user; that container becomes the image (`docker commit`). The tag is a hash of the base image,
the requirements and this recipe's version: a machine builds it once, later runs find it.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from envbuilder.images import PIP_REQUIREMENT, _layer_labels
from envbuilder.wheelhouse import (WHEELHOUSE_MOUNT, DependencyUnavailable, FetchLog, Wheelhouse, remove_container,
                                   run_sandboxed, target_python)
from notebook_env.errors import NotebookEnvError
from tasksynth.config import Config
from tasksynth.docker.base_images import base_image, image_lock
from tasksynth.docker.engine import MANAGED_LABEL, docker, image_exists
from tasksynth.hashing import content_hash
from tasksynth.sandbox import UNTRUSTED_UID, Mount

KERNEL_VENV = "/opt/kernel"
KERNEL_PYTHON = f"{KERNEL_VENV}/bin/python"
IMAGE_VERSION = 1
# Pinned below the next major so the image's hash names what it holds; the wheelhouse resolves the rest.
KERNEL_REQUIREMENTS = ("numpy>=1.26,<3", "pandas>=2.1,<3", "matplotlib>=3.8,<4", "scikit-learn>=1.4,<2",
                       "scipy>=1.11,<2", "ipykernel>=6.29,<7", "jupyter_client>=8.6,<9")


@dataclass
class KernelImage:
    tag: str
    status: str  # built | cached
    seconds: float = 0.0


def kernel_image_tag(base_tag: str) -> str:
    return f"tasksynth/kernel:{content_hash(IMAGE_VERSION, base_tag, *KERNEL_REQUIREMENTS, length=12)}"


def _prepare_dockerfile(base_tag: str) -> str:
    return "\n".join([
        f"FROM {base_tag}",
        f"RUN python3 -m venv {KERNEL_VENV} && chown -R {UNTRUSTED_UID}:{UNTRUSTED_UID} {KERNEL_VENV}",
        f"LABEL {MANAGED_LABEL}=true org.tasksynth.layer=kernel-prepare",
    ]) + "\n"


def install_script() -> str:
    requirements = " ".join(f"'{r}'" for r in (PIP_REQUIREMENT, *KERNEL_REQUIREMENTS))
    return "\n".join([
        "set -euxo pipefail",
        f"export PIP_NO_INDEX=1 PIP_FIND_LINKS={WHEELHOUSE_MOUNT} PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1",
        f"{KERNEL_PYTHON} -m pip install --upgrade '{PIP_REQUIREMENT}'",
        f"{KERNEL_PYTHON} -m pip install {requirements}",
        # Compile once here: the image's root is read-only in the sandbox, so a kernel cannot write .pyc files.
        f"{KERNEL_PYTHON} -m compileall -q -j 0 {KERNEL_VENV}/lib || true",
        f"{KERNEL_PYTHON} -c 'import numpy, pandas, matplotlib, sklearn, ipykernel, jupyter_client'",
    ]) + "\n"


def kernel_image(config: Config, *, log=print) -> KernelImage:
    """The kernel image for this machine's base image, built on first use, a cache hit afterwards."""
    base_tag = base_image(config, "3.11", log=log).tag
    tag = kernel_image_tag(base_tag)
    with image_lock(config, tag):
        if image_exists(tag):
            return KernelImage(tag, "cached")
        started = time.monotonic()
        log(f"building the kernel image {tag} (once per machine)")
        prepared = f"tasksynth/kernel-prepare:{tag.split(':')[1]}"
        _build_prepare(prepared, base_tag, config)
        try:
            _install_offline(config, prepared, base_tag, tag, log)
        finally:
            docker("rmi", "-f", prepared, check=False, timeout=120)
        return KernelImage(tag, "built", time.monotonic() - started)


def _build_prepare(tag: str, base_tag: str, config: Config) -> None:
    with tempfile.TemporaryDirectory(prefix="tasksynth-kernel-") as tmp:
        (Path(tmp) / "Dockerfile").write_text(_prepare_dockerfile(base_tag))
        try:
            result = docker("build", "--network", "none", "--force-rm", "-t", tag, tmp, check=False,
                            timeout=config.docker.build_timeout_s)
        except subprocess.TimeoutExpired:
            raise NotebookEnvError(f"building {tag} took longer than {config.docker.build_timeout_s}s") from None
    if result.returncode != 0:
        tail = ((result.stderr or "") + (result.stdout or "")).strip().splitlines()[-3:]
        raise NotebookEnvError(f"building {tag} failed: {' | '.join(tail)}")


def _install_offline(config: Config, prepared: str, base_tag: str, tag: str, log) -> None:
    wheelhouse = Wheelhouse(config)
    target = target_python(config, "3.11", base_tag)
    fetched = FetchLog()
    try:
        wheelhouse.provide([PIP_REQUIREMENT, *KERNEL_REQUIREMENTS], target, fetched)
    except DependencyUnavailable as exc:
        raise NotebookEnvError(f"the kernel's libraries cannot be had: {exc}") from None
    run = run_sandboxed(config, prepared, ["bash", "-c", install_script()],
                        mounts=[Mount(str(wheelhouse.files), WHEELHOUSE_MOUNT)],
                        user=f"{UNTRUSTED_UID}:{UNTRUSTED_UID}", workdir="/tmp", writable_root=True, keep=True,
                        wall_s=float(config.docker.build_timeout_s))
    try:
        if run.returncode != 0:
            tail = run.output.strip().splitlines()[-4:]
            raise NotebookEnvError(f"the offline install of the kernel's libraries failed: {' | '.join(tail)}")
        labels = {**_layer_labels("kernel", "kernel"), "org.tasksynth.layer": "kernel"}
        args = [arg for key, value in labels.items() for arg in ("--change", f"LABEL {key}={value}")]
        args += ["--change", "USER root"]
        committed = docker("commit", *args, run.name, tag, check=False, timeout=600)
        if committed.returncode != 0:
            raise NotebookEnvError(f"committing the kernel image failed: {committed.stderr.strip()}")
    finally:
        remove_container(run.name)
