"""A real Docker engine: doctor, base images (debootstrap + docker import when no registry), pruning."""

import io
import json
import tarfile

import pytest

from tasksynth.docker.base_images import CA_PATH_IN_IMAGE, base_image
from tasksynth.docker.engine import MANAGED_LABEL, docker, engine_status, image_exists, prune_images

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module", autouse=True)
def engine():
    status = engine_status()
    if not status.ok:
        pytest.fail(f"these tests need a Docker engine (`make test` starts one): {status.detail}")


def test_base_image_has_python_git_and_the_host_ca(config):
    image = base_image(config, "3.11", log=lambda line: None)
    assert image.source == "debian:bookworm"
    labels = json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", image.tag).stdout)
    assert labels[MANAGED_LABEL] == "true" and labels["org.tasksynth.layer"] == "base"
    out = docker("run", "--rm", "--network", "none", image.tag, "bash", "-c",
                 f"python3 --version && git --version && patch --version | head -1 && test -s {CA_PATH_IN_IMAGE} "
                 "&& echo $PIP_CERT && python3 -m venv /tmp/v && /tmp/v/bin/python -c 'print(\"venv ok\")'",
                 timeout=120).stdout
    assert "Python 3.11" in out and "git version" in out and "venv ok" in out
    assert CA_PATH_IN_IMAGE in out


def test_second_request_is_a_cache_hit(config):
    first = base_image(config, "3.11", log=lambda line: None)
    messages = []
    again = base_image(config, "3.11", log=messages.append)
    assert again.tag == first.tag and messages == []  # nothing was built


def test_unsupported_python_without_registry_is_clear(config):
    from tasksynth.errors import ImageBuildFailed

    with pytest.raises(ImageBuildFailed, match="no base image for Python 3.7"):
        base_image(config, "3.7")


def _import_tiny_image(tag, labels):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    changes = [arg for label in labels for arg in ("--change", f"LABEL {label}")]
    docker("import", *changes, "-", tag, input=buffer.getvalue(), timeout=60)


def test_prune_removes_only_ours(config):
    _import_tiny_image("tasksynth-test/ours:1", [f"{MANAGED_LABEL}=true", "org.tasksynth.layer=instance"])
    _import_tiny_image("tasksynth-test/theirs:1", [])
    base = base_image(config, "3.11", log=lambda line: None)
    try:
        removed = prune_images(["instance"])
        assert "tasksynth-test/ours:1" in removed
        assert not image_exists("tasksynth-test/ours:1")
        assert image_exists("tasksynth-test/theirs:1")
        assert image_exists(base.tag)  # another layer was not asked for
    finally:
        docker("rmi", "-f", "tasksynth-test/theirs:1", "tasksynth-test/ours:1", check=False)


def test_doctor_reports_engine_and_store(home, tmp_path, tasksynth):
    result = tasksynth("doctor", "--json", cwd=tmp_path)
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["docker engine"]["ok"], checks["docker engine"]
    assert checks["store"]["ok"]
    assert not checks["endpoint default"]["ok"]  # nothing serves on 127.0.0.1:8000 here
    assert "tasksynth runner serve" in checks["endpoint default"]["fix"]
