"""Portable environments, with the real Docker engine: `tasksynth export --images tar` of one valid instance of
the shipped sample, loaded on a clean engine (a second dockerd with its own empty data root) where the
instance validates the same; `--images registry=` pushed to Debian's `docker-registry` on 127.0.0.1, its
digests added only once the local export is complete, then pulled by digest on the clean engine.

The sample is built once and exported once (one `docker save`, ~380 MB) for the module."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from envbuilder.samples import swebench_sample_path
from tasksynth.hashing import sha256_file

pytestmark = pytest.mark.docker

INSTANCE = "tasksynth__minicalc-1"
REGISTRY_BIN = shutil.which("docker-registry")


def run_tasksynth(*args, cwd, env, check=False, timeout=300) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it (as tests/conftest.py's `tasksynth` fixture does)."""
    exe = shutil.which("tasksynth", path=str(Path(sys.executable).parent)) or "tasksynth"
    result = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **env})
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]



def listed_files(out: Path) -> dict[str, dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    entries = [*manifest["shards"], *manifest["files"], manifest["card"], *manifest["images"]["archives"]]
    return {entry["path"]: entry for entry in entries}


def assert_manifest_lists_every_file(out: Path) -> None:
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    listed = listed_files(out)
    assert set(listed) == on_disk
    for path, entry in listed.items():
        assert (entry["bytes"], entry["sha256"]) == ((out / path).stat().st_size, sha256_file(out / path)), path


def code_environment(out: Path) -> dict:
    rows = pq.read_table(out / "code" / "train-00000-of-00001.parquet").to_pylist()
    assert [row["task_id"] for row in rows] == [f"code/{INSTANCE}"]
    return json.loads(rows[0]["environment"])


class Engine:
    """A second dockerd on its own socket, data root and containerd: an engine that has never seen our images."""

    def __init__(self, root: Path):
        self.root = root
        self.host = f"unix://{root}/docker.sock"
        self.log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - the daemon's, for its lifetime
        self.process = subprocess.Popen(
            ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"), "--pidfile",
             str(root / "dockerd.pid"), "-H", self.host, "--bridge=none", "--iptables=false", "--ip-masq=false"],
            stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            assert self.process.poll() is None and time.monotonic() < deadline, (root / "dockerd.log").read_text()
            time.sleep(0.5)

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}

    def docker(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, **self.env})
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def images(self) -> dict[str, str]:
        listed = self.docker("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
        return dict(line.split() for line in listed.splitlines() if line.strip())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def clean_engine(docker_engine):
    if os.geteuid() != 0 or not shutil.which("dockerd"):
        pytest.skip("a second, clean Docker engine needs root and dockerd")
    # Unix socket paths are short: not under pytest's long tmp path.
    engine = Engine(Path(tempfile.mkdtemp(prefix="ts-engine-", dir="/tmp")))
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def sample_export(tmp_path_factory, base_311):
    """One valid instance of the sample, built and exported with `--images tar --images registry=` while no
    registry answers at that address: the local export completes, the push fails."""
    work = tmp_path_factory.mktemp("portable")
    env = {"TASKSYNTH_HOME": str(work / "home")}
    repos = work / "home" / "repos" / "samples"

    def tasksynth(*args, **kw):
        return run_tasksynth(*args, cwd=work, env={**env, **kw.pop("env", {})}, **kw)

    tasksynth("code", "sample", check=True)
    tasksynth("code", "mine", "--git", str(repos / "tasksynth" / "minicalc"), "--swebench",
              str(swebench_sample_path()), "--repos-dir", str(repos), check=True)
    built = tasksynth("code", "build", INSTANCE, "--repeat", "1", check=True, timeout=900)
    assert "1 valid of 1 candidate(s)" in built.stdout, built.stdout + built.stderr
    registry = f"127.0.0.1:{free_port()}/tasksynth-test"
    out = work / "export"
    started = time.monotonic()
    exported = tasksynth("export", str(out), "--kind", "code", "--images", "tar", "--images",
                         f"registry={registry}", timeout=900)
    seconds = time.monotonic() - started
    return {"work": work, "out": out, "registry": registry, "tasksynth": tasksynth, "first_run": exported,
            "seconds": seconds}


def test_exported_images_load_on_a_clean_engine_and_validate_the_same(sample_export, clean_engine):
    out, first = sample_export["out"], sample_export["first_run"]
    # the push failed after the local export was complete: that export stands, without digests
    assert first.returncode == 1
    assert "complete without registry digests" in first.stderr and "run the same command again" in first.stderr
    assert "docker save of 3 image(s)" in first.stdout
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no staging left
    assert_manifest_lists_every_file(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"]["registry"] == {"repository": sample_export["registry"], "pushed": False}
    [archive] = manifest["images"]["archives"]
    assert archive["path"].startswith("images/base-py3.11-bookworm-") and archive["path"].endswith(".tar")
    images = {image["layer"]: image for image in manifest["images"]["images"]}
    assert sorted(images) == ["base", "env", "instance"] and sorted(archive["tags"]) == sorted(
        image["tag"] for image in images.values())

    environment = code_environment(out)
    assert environment["image"] == images["instance"]["tag"] and environment["registry"] is None
    assert environment["load"] == f"docker load -i {archive['path']}"
    assert environment["image_id"] == images["instance"]["image_id"]
    # what a trainer needs to rebuild it without this project
    assert environment["layers"] == {"base": images["base"]["tag"], "environment": images["env"]["tag"],
                                     "instance": images["instance"]["tag"]}
    assert environment["recipe"]["python"] == "3.11" and environment["recipe"]["env_steps"]
    assert environment["recipe"]["test_command"].startswith("python -m pytest")
    base = environment["base_image"]
    assert base["tag"] == images["base"]["tag"] and base["debian_suite"] == "bookworm"
    assert base["content_hash"] == base["tag"].rsplit("-", 1)[-1] and "debootstrap --variant=minbase" in base["made_by"]

    # a clean engine: load the archive (shared layers once), then validate the instance there
    assert clean_engine.images() == {}
    started = time.monotonic()
    clean_engine.docker("load", "-i", str(out / archive["path"]))
    load_seconds = time.monotonic() - started
    loaded = clean_engine.images()
    assert loaded == {image["tag"]: image["image_id"] for image in images.values()}
    tasksynth = sample_export["tasksynth"]
    before = json.loads(tasksynth("sql", "--json", "select verdict, fail_to_pass, pass_to_pass from code_tasks",
                                  check=True).stdout)
    again = tasksynth("code", "validate", INSTANCE, "--repeat", "1", env=clean_engine.env, check=True, timeout=600)
    assert "validated 1 candidate(s); 0 verdict(s) changed" in again.stdout, again.stdout
    after = json.loads(tasksynth("sql", "--json", "select verdict, fail_to_pass, pass_to_pass from code_tasks",
                                 check=True).stdout)
    assert after == before and after[0]["verdict"] == "valid" and after[0]["fail_to_pass"]
    validations = json.loads(tasksynth("sql", "--json", "select count(*) as n from validations", check=True).stdout)
    assert validations[0]["n"] == 2  # the build's and the one on the clean engine
    assert clean_engine.images() == loaded  # it ran the loaded image; nothing was rebuilt
    print(f"\nexport with --images tar: {sample_export['seconds']:.1f}s, archive {archive['bytes'] / 1e6:.0f} MB; "
          f"docker load on a clean engine: {load_seconds:.1f}s")


@pytest.mark.skipif(REGISTRY_BIN is None, reason="needs Debian's docker-registry (`make test` installs it)")
def test_a_rerun_pushes_adds_digests_and_the_image_pulls_by_digest(sample_export, clean_engine, tmp_path):
    out, registry = sample_export["out"], sample_export["registry"]
    [archive] = json.loads((out / "manifest.json").read_text())["images"]["archives"]
    archive_inode = (out / archive["path"]).stat().st_ino
    address = registry.split("/", 1)[0]
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: "
                      f"{tmp_path / 'blobs'}\nhttp:\n  addr: {address}\n")
    server = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(tuple(address.split(":")), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "docker-registry did not start"
                time.sleep(0.2)
        rerun = sample_export["tasksynth"]("export", str(out), "--kind", "code", "--images", "tar", "--images",
                                           f"registry={registry}", check=True, timeout=900)
        # only the push ran: the archive is the same file, not saved again
        assert "docker save" not in rerun.stdout and rerun.stdout.count("docker push") == 3, rerun.stdout
        assert (out / archive["path"]).stat().st_ino == archive_inode
        assert_manifest_lists_every_file(out)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["images"]["registry"]["pushed"] is True
        images = {image["layer"]: image for image in manifest["images"]["images"]}
        for image in images.values():
            assert image["registry"].startswith(f"{registry}@sha256:")
        environment = code_environment(out)
        assert environment["registry"] == images["instance"]["registry"]
        assert environment["pull"] == f"docker pull {images['instance']['registry']}"
        # the engine keeps no registry tag of ours
        ours = subprocess.run(["docker", "images", "--format", "{{.Repository}}"], capture_output=True,
                              text=True).stdout.split()
        assert registry not in ours

        # pulled by digest on the clean engine: the very image that was exported
        for tag in clean_engine.images():
            clean_engine.docker("rmi", tag)
        clean_engine.docker("pull", environment["registry"])
        pulled = clean_engine.docker("image", "inspect", "--format", "{{.Id}}", environment["registry"])
        assert pulled.stdout.strip() == environment["image_id"]
    finally:
        server.terminate()
        server.wait(timeout=30)
