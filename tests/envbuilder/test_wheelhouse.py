"""The trusted fetcher's parts that need no engine: what an offline pip reports missing, the requirements a
recipe names, and an sdist whose bytes are not the ones the index vouches for."""

import hashlib
import http.server
import threading

import pytest

from envbuilder.recipes import Recipe, recipe_requirements
from envbuilder.wheelhouse import DependencyUnavailable, Wheelhouse, missing_requirement
from tasksynth.config import load_config


@pytest.mark.parametrize("log, requirement", [
    ("ERROR: Could not find a version that satisfies the requirement attrs>=22 (from benchpkg) (from versions: none)\n"
     "ERROR: No matching distribution found for attrs>=22\n", "attrs>=22"),
    ('ERROR: No matching distribution found for exceptiongroup>=1.0.0rc8; python_version < "3.11"\n',
     "exceptiongroup>=1.0.0rc8"),  # the marker held for the image's Python, not for the host's
    ("  ERROR: Could not find a version that satisfies the requirement setuptools>=40.8.0 (from versions: none)\n",
     "setuptools>=40.8.0"),  # a build requirement, reported from inside pip's build-isolation subprocess
    ("error: invalid command 'bdist_wheel'\n", None),
])
def test_missing_requirement_is_read_from_an_offline_pip_log(log, requirement):
    assert missing_requirement(log) == requirement


def test_requirements_a_recipe_names_are_read_without_running_anything():
    recipe = Recipe(env_steps=[
        "python -m pip install setuptools wheel",
        "python -m pip install -r requirements-test.txt",
        "python -m pip install --no-build-isolation --config-settings editable_mode=compat -e '.[test]'",
        "apt-get install -y libfoo && python -m pip install 'pytest>=7'",
    ])
    files = {"requirements-test.txt": "hypothesis  # property tests\n-r base.txt\n-e .\n",
             "base.txt": "attrs\ngit+https://example.invalid/x.git\n",
             "pyproject.toml": '[project]\nname = "x"\ndependencies = ["packaging"]\n'
                               '[project.optional-dependencies]\ntest = ["pytest-xdist"]\n'}
    assert recipe_requirements(recipe, files.get) == ["setuptools", "wheel", "hypothesis", "attrs", "packaging",
                                                      "pytest-xdist", "pytest>=7"]


def test_an_sdist_whose_sha256_is_not_the_index_s_is_refused(tmp_path):
    archive = b"not the archive the index vouches for"
    wrong = hashlib.sha256(b"the real archive").hexdigest()

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = (f'<a href="/files/tampered-1.0.tar.gz#sha256={wrong}">tampered-1.0.tar.gz</a>'.encode()
                    if self.path.startswith("/simple/") else archive)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        index = f"http://127.0.0.1:{server.server_address[1]}/simple/"
        config = load_config(environ={"TASKSYNTH_HOME": str(tmp_path / "home"), "TASKSYNTH_CODE__INDEX_URL": index})
        wheelhouse = Wheelhouse(config)
        with pytest.raises(DependencyUnavailable, match=r"missing requirement tampered: .*is not the index's"):
            wheelhouse._download_sdist("tampered", {}, log=None)
    finally:
        server.shutdown()
    assert list(wheelhouse.files.iterdir()) == []  # nothing of it is kept


def test_an_sdist_s_declared_build_requirements_are_read_from_the_archive(tmp_path):
    import io
    import tarfile

    from envbuilder.wheelhouse import PEP517_FALLBACK_REQUIRES, declared_build_requirements

    def archive(name, members):
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as tar:
            for member, text in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(text.encode())
                tar.addfile(info, io.BytesIO(text.encode()))
        return path

    flit = archive("a-1.0.tar.gz", {"a-1.0/pyproject.toml": '[build-system]\nrequires = ["flit_core>=3.2,<4"]\n',
                                    "a-1.0/tests/pyproject.toml": '[build-system]\nrequires = ["other"]\n'})
    legacy = archive("b-1.0.tar.gz", {"b-1.0/setup.py": "raise SystemExit('never run by the host')\n"})
    assert declared_build_requirements(flit) == ["flit_core>=3.2,<4"]
    assert declared_build_requirements(legacy) == PEP517_FALLBACK_REQUIRES
