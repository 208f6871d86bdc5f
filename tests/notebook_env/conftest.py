"""Fixtures of the code-interpreter tests: the kernel image (built once per machine: a later session finds
it by its content-addressed tag), a config with small limits, a data folder of CSV fixtures, and one warm
kernel pool per module (starting a kernel is the slow part)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def kernel_image_tag(docker_engine, tmp_path_factory):
    from notebook_env.kernel_image import kernel_image
    from tasksynth.config import load_config

    config = load_config(environ={"TASKSYNTH_HOME": str(tmp_path_factory.mktemp("kernel-image-home"))})
    return kernel_image(config, log=lambda line: None).tag


@pytest.fixture(scope="module")
def kernel_config(tmp_path_factory, kernel_image_tag):
    from tasksynth.config import load_config

    home = tmp_path_factory.mktemp("notebook-home")
    return load_config(environ={
        "TASKSYNTH_HOME": str(home), "TASKSYNTH_DOCKER__MEMORY": "640m", "TASKSYNTH_DOCKER__PIDS_LIMIT": "128",
        "TASKSYNTH_DOCKER__CPUS": "1", "TASKSYNTH_SANDBOX__TMPFS_BYTES": str(64 << 20),
        "TASKSYNTH_SANDBOX__OUTPUT_CAP_BYTES": str(1 << 20), "TASKSYNTH_SANDBOX__INFRA_RETRIES": "1"})


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebook-data")
    (root / "sales").mkdir()
    (root / "sales" / "sales.csv").write_text(
        "region,month,units,price\n"
        "north,1,10,2.5\nnorth,2,12,2.5\nsouth,1,7,3.0\nsouth,2,9,3.0\neast,1,4,4.0\neast,2,6,4.0\n")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # read by the sandbox's uid 1000 as "other"
    return root


@pytest.fixture(scope="module")
def kernel_pool(kernel_config, kernel_image_tag, data_root):
    from notebook_env.kernel import KernelPool

    with KernelPool(kernel_config, kernel_image_tag, data_root=data_root, size=1, timeout_s=20) as pool:
        yield pool
