"""Builds without host network, on the real engine: the repository's setup.py and a dependency's sdist both try
to reach a listener on the host's 127.0.0.1 while they build; nothing reaches it and the environment still
builds (the sdist built offline into the wheelhouse, sha256 checked against the index). A dependency that no
index has ends the candidate `install_failed`, naming it.

The package index is ours, on 127.0.0.1 (PEP 503 pages with sha256 fragments): the test's own sdist, plus the
wheels every recipe needs (pip, setuptools, wheel, pytest and its dependencies), downloaded once per session
with the host's pip configuration."""

from __future__ import annotations

import hashlib
import html
import http.server
import io
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from envbuilder.build import build_candidate
from envbuilder.images import PIP_REQUIREMENT, pip_upgrade_step
from envbuilder.samples import Sample, SampleCommit, build_repo
from envbuilder.wheelhouse import WHEELHOUSE_MOUNT, Wheelhouse, target_python
from tasksynth.docker.engine import docker
from tasksynth.sandbox import Mount, run_oneshot
from verifiers.grading import INSTALL_FAILED

pytestmark = pytest.mark.docker

# Runs while the package builds (setup.py is executed for its metadata and its wheel): it tries the host's
# loopback, tolerates failure, and the build goes on.
PHONE_HOME = '''
import socket
try:
    connection = socket.create_connection(("127.0.0.1", {port}), timeout=3)
    connection.sendall(b"{who} reached the host")
    connection.close()
except OSError:
    pass
'''


class Listener:
    """A TCP listener on the host's loopback that records every connection it accepts."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.received: list[bytes] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.server.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(2)
                try:
                    self.received.append(connection.recv(1024) or b"(connected)")
                except OSError:
                    self.received.append(b"(connected)")

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.server.close()


def serve_index(files: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A PEP 503 simple index over the distribution files in `files`, on 127.0.0.1."""

    def project_of(name: str) -> str | None:
        try:
            return canonicalize_name(parse_wheel_filename(name)[0] if name.endswith(".whl")
                                     else parse_sdist_filename(name)[0])
        except Exception:  # noqa: BLE001 - not a distribution file
            return None

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            parts = [p for p in self.path.split("?")[0].split("/") if p]
            if len(parts) == 2 and parts[0] == "files" and (files / parts[1]).is_file():
                return self._send((files / parts[1]).read_bytes(), "application/octet-stream")
            if len(parts) == 2 and parts[0] == "simple":
                links = [f'<a href="/files/{html.escape(f.name)}#sha256={hashlib.sha256(f.read_bytes()).hexdigest()}">'
                         f"{html.escape(f.name)}</a><br>" for f in sorted(files.iterdir())
                         if project_of(f.name) == canonicalize_name(parts[1])]
                if links:
                    return self._send(("<html><body>" + "".join(links) + "</body></html>").encode(), "text/html")
            self.send_error(404)

        def _send(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/simple/"


def sdist(folder: Path, name: str, version: str, setup_py: str, modules: dict[str, str]) -> Path:
    """A legacy setup.py sdist, written as tar.gz by hand (building it with setuptools here would run it)."""
    base = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{base}.tar.gz"
    members = {"setup.py": setup_py, "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
               **modules}
    with tarfile.open(path, "w:gz") as archive:
        for member, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{base}/{member}")
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="session")
def index_files(tmp_path_factory) -> Path:
    """The wheels every recipe asks for, fetched once with the host's pip (its index and configuration)."""
    folder = tmp_path_factory.mktemp("index-files")
    subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--dest", str(folder),
                    "--disable-pip-version-check", "--progress-bar", "off",
                    "pip>=22.1", "setuptools>=61", "wheel", "pytest"], check=True, capture_output=True, timeout=600)
    # an old pip, for the test that the recipe's pip is upgraded first (it knows no --config-settings)
    subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--dest", str(folder),
                    "--disable-pip-version-check", "--progress-bar", "off", "pip==21.3.1"],
                   check=True, capture_output=True, timeout=600)
    return folder


@pytest.fixture
def offline(tmp_path, index_files, flow_config):
    """A listener on the host's loopback, our index (the listener's port baked into a dependency's sdist),
    and a config that fetches from that index."""
    listener = Listener()
    files = tmp_path / "index"
    files.mkdir()
    for wheel in index_files.iterdir():
        (files / wheel.name).write_bytes(wheel.read_bytes())
    sdist(files, "phonehome-dep", "1.0",
          PHONE_HOME.format(port=listener.port, who="the dependency's setup.py") +
          "from setuptools import setup\nsetup(name='phonehome-dep', version='1.0', py_modules=['phonehome_dep'])\n",
          {"phonehome_dep.py": "ANSWER = 42\n"})
    server, url = serve_index(files)
    config = flow_config(code__index_url=url)
    yield config, listener
    server.shutdown()
    listener.close()


def candidate_of(tmp_path: Path, files: dict[str, str], name: str) -> dict:
    repo = build_repo(Sample(name, f"t/{name}", [SampleCommit("init", files)]), tmp_path / name)
    return {"instance_id": f"{name}-1", "candidate_id": f"{name}-1", "repo": f"t/{name}", "repo_url": str(repo.path),
            "base_commit": repo.head, "patch": "", "test_patch": "", "language": "python"}


def test_setup_py_of_the_repository_and_of_a_dependency_sdist_never_reach_the_host(tmp_path, offline):
    config, listener = offline
    setup_py = (PHONE_HOME.format(port=listener.port, who="the repository's setup.py") +
                "from setuptools import setup\n"
                "setup(name='callsout', version='0.1', packages=['callsout'], install_requires=['phonehome-dep'])\n")
    candidate = candidate_of(tmp_path, {"setup.py": setup_py, "callsout/__init__.py": "",
                                        "tests/test_it.py": "def test_ok():\n    assert True\n"}, "callsout")

    outcome = build_candidate(config, candidate)

    assert outcome.ok, outcome.instance["detail"]
    assert listener.received == []
    # the dependency came as an sdist only: it was built offline into the wheelhouse, its archive hash-checked
    wheelhouse = config.home_path / "wheelhouse"
    built = [p.name for p in (wheelhouse / "files").glob("phonehome_dep-1.0-*.whl")]
    assert built, sorted(p.name for p in (wheelhouse / "files").iterdir())
    sums = dict(line.split("  ")[::-1] for line in (wheelhouse / "SHA256SUMS").read_text().splitlines())
    archive = wheelhouse / "files" / "phonehome_dep-1.0.tar.gz"
    assert sums[archive.name] == hashlib.sha256(archive.read_bytes()).hexdigest()
    # and the environment has both packages, installed without any network
    image = outcome.instance["image"]
    shown = docker("run", "--rm", "--network", "none", image, "python", "-c",
                   "import phonehome_dep, callsout; print(phonehome_dep.ANSWER)", check=False, timeout=120)
    assert shown.stdout.strip() == "42", shown.stderr
    labels = docker("image", "inspect", "--format", "{{json .Config.Labels}}", outcome.environment["image"],
                    timeout=60).stdout
    assert '"org.tasksynth.layer":"env"' in labels and '"org.tasksynth.owner_pid":""' in labels


def test_a_dependency_no_index_has_is_install_failed_naming_it(tmp_path, offline):
    config, listener = offline
    pyproject = ('[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
                 '[project]\nname = "wantsmissing"\nversion = "0.1"\ndependencies = ["no-such-dist-x3>=1"]\n'
                 '[tool.setuptools]\npackages = ["wantsmissing"]\n')
    candidate = candidate_of(tmp_path, {"pyproject.toml": pyproject, "wantsmissing/__init__.py": "",
                                        "tests/test_it.py": "def test_ok():\n    assert True\n"}, "wantsmissing")

    outcome = build_candidate(config, candidate)

    assert not outcome.ok and outcome.instance["reason"] == INSTALL_FAILED
    assert "missing requirement no-such-dist-x3>=1" in outcome.instance["detail"]
    assert listener.received == []


def test_an_old_pip_is_upgraded_from_the_wheelhouse_before_the_recipe_runs(offline, base_311):
    """Python 3.9's venv brings pip 20.3, which refuses the recipe's --config-settings; here pip 21.3 (no
    --config-settings either) stands in for it in the 3.11 image."""
    config, listener = offline
    wheelhouse = Wheelhouse(config)
    target = target_python(config, "3.11", base_311.tag)
    wheelhouse.provide(["pip==21.3.1"], target)
    wheelhouse.provide([PIP_REQUIREMENT, "wheel"], target)
    script = "\n".join([
        f"export PIP_NO_INDEX=1 PIP_FIND_LINKS={WHEELHOUSE_MOUNT} HOME=/tmp PIP_DISABLE_PIP_VERSION_CHECK=1",
        "python3 -m venv /tmp/venv && /tmp/venv/bin/python -m pip install -q 'pip==21.3.1'",
        "/tmp/venv/bin/python -m pip install -q --config-settings x=y wheel 2>&1 || echo OLD PIP REFUSED",
        pip_upgrade_step("/tmp/venv/bin/python"),
        "/tmp/venv/bin/python -m pip install -q --config-settings x=y wheel && echo CURRENT PIP ACCEPTED",
        "/tmp/venv/bin/python -m pip --version",
    ])
    run = run_oneshot(config, base_311.tag, ["bash", "-c", script], mounts=[Mount(str(wheelhouse.files),
                                                                                  WHEELHOUSE_MOUNT)])
    assert run.ok, run.stdout + run.stderr
    assert "no such option: --config-settings" in run.stdout and "OLD PIP REFUSED" in run.stdout
    assert "CURRENT PIP ACCEPTED" in run.stdout and "pip 21." not in run.stdout.splitlines()[-1]
