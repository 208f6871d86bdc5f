"""The wheelhouse: the distributions an offline install may use, fetched by trusted code on the host.

No code of a repository or of its dependencies runs in the host's network namespace. The host only downloads
files; everything that executes package code (a setup.py, a PEP 517 backend, metadata preparation) runs in a
container without network (`tasksynth.sandbox.isolation`), and installs read the wheelhouse from a read-only
mount with `pip --no-index`. The host resolves iteratively from what those runs report:

1. `pip download --only-binary=:all:` for the image's interpreter (its tags, asked once per base image) fetches
   a requirement and its closure as wheels. With binaries only pip reads wheel metadata and runs nothing.
2. A requirement with no wheel for that interpreter is fetched as an sdist archive straight from the index's
   simple API (PEP 503), its sha256 checked against the index's, and built into a wheel in the sandbox; the
   wheel lands here, so step 1 now resolves through it (pip reads the built wheel's METADATA for its
   requirements). The build's own build requirements are what its offline pip reports missing: they are
   fetched the same way, and the build retried.
3. An install in the sandbox that still misses something says so ("No matching distribution found for X"):
   the caller asks for X and retries (`missing_requirement`).

Layout: `<home>/wheelhouse/files/<distribution file name>` (names are unique on an index: it refuses a second
upload of one name; a wheel built here from an sdist is named after that sdist's release), and `SHA256SUMS`
with the sha256 of every file, checked against the index when it was downloaded, kept for the reader and for
`verify()`. Every candidate of every repository shares it; writers hold a file lock.
"""

from __future__ import annotations

import fcntl
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

from envbuilder.errors import CodeEnvError
from tasksynth.config import Config
from tasksynth.docker.engine import docker
from tasksynth.docker.ownership import owner_labels
from tasksynth.errors import DockerUnavailable
from tasksynth.hashing import sha256_file
from tasksynth.sandbox import Limits, Mount, isolated_run_args, run_oneshot

WHEELHOUSE_MOUNT = "/wheelhouse"
MAX_SDIST_BUILDS = 40  # per fetch: a dependency tree that needs more is not one we build
DOWNLOAD_TIMEOUT_S = 600
_MISSING = re.compile(r"No matching distribution found for (.+?)\s*$", re.M)
_NOT_FOUND = re.compile(r"Could not find a version that satisfies the requirement (.+?) \((?:from|versions)", re.M)
_SDIST_SUFFIXES = (".tar.gz", ".zip")


class DependencyUnavailable(CodeEnvError):
    """A requirement that cannot be had without network inside the build: not on the index for the image's
    interpreter, or its sdist does not build offline."""

    def __init__(self, requirement: str, why: str):
        super().__init__(f"missing requirement {requirement}: {why}")
        self.requirement = requirement
        self.why = why


@dataclass(frozen=True)
class TargetPython:
    """The interpreter an image installs into, as `pip download` wants it described."""

    version: str  # "3.11"
    abis: tuple[str, ...]
    platforms: tuple[str, ...]
    image: str  # the base image whose interpreter this is (sdists are built there)

    def download_args(self) -> list[str]:
        args = ["--python-version", self.version, "--implementation", "cp"]
        for abi in self.abis:
            args += ["--abi", abi]
        for platform in self.platforms:
            args += ["--platform", platform]
        return args


@dataclass
class FetchLog:
    """What one fetch did, for the build log."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join(self.lines)


def missing_requirement(log: str) -> str | None:
    """The requirement an offline pip run reports it could not find, without its marker, or None."""
    found = _MISSING.findall(log) or _NOT_FOUND.findall(log)
    if not found:
        return None
    text = found[-1].strip().strip("'\"")
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        return text.split(";", 1)[0].strip() or None
    requirement.marker = None
    return str(requirement)


class Wheelhouse:
    def __init__(self, config: Config):
        self.config = config
        self.root = config.home_path / "wheelhouse"
        self.files = self.root / "files"
        self.files.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------------ the cache

    @contextmanager
    def writing(self) -> Iterator[None]:
        """One writer at a time, across the processes of a home (downloads land in place)."""
        with open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def sums(self) -> dict[str, str]:
        path = self.root / "SHA256SUMS"
        if not path.is_file():
            return {}
        return {name: digest for digest, name in (line.split("  ", 1) for line in path.read_text().splitlines()
                                                  if "  " in line)}

    def _record(self, name: str, digest: str) -> None:
        with open(self.root / "SHA256SUMS", "a") as handle:
            handle.write(f"{digest}  {name}\n")

    def _record_new_files(self, known: dict[str, str]) -> list[str]:
        added = []
        for path in sorted(self.files.iterdir()):
            if path.name not in known and path.is_file() and not path.is_symlink():
                digest = sha256_file(path)
                self._record(path.name, digest)
                known[path.name] = digest
                added.append(path.name)
        return added

    def verify(self) -> list[str]:
        """Files whose content no longer matches the recorded sha256."""
        return [name for name, digest in self.sums().items()
                if (self.files / name).is_file() and sha256_file(self.files / name) != digest]

    # ------------------------------------------------------------------------------------------ fetching

    def provide(self, requirements: list[str], target: TargetPython, log: FetchLog | None = None) -> FetchLog:
        """Make `requirements` and their closure installable offline for `target`, or raise
        DependencyUnavailable naming the one that cannot be had."""
        log = log or FetchLog()
        requirements = [r for r in dict.fromkeys(requirements) if r]
        if not requirements:
            return log
        built: set[str] = set()
        with self.writing():
            known = self.sums()
            for _ in range(MAX_SDIST_BUILDS + 1):
                result = self._pip_download(requirements, target)
                added = self._record_new_files(known)
                if added:
                    log.add(f"downloaded: {', '.join(added)}")
                if result.returncode == 0:
                    return log
                output = (result.stdout or "") + (result.stderr or "")
                missing = missing_requirement(output)
                if missing is None:
                    raise DependencyUnavailable(", ".join(requirements),
                                                "pip download failed: " + _tail(output, 6))
                name = canonicalize_name(Requirement(missing).name) if _valid(missing) else missing
                if name in built:
                    raise DependencyUnavailable(missing, f"its sdist was built for Python {target.version}, "
                                                         "but the wheel does not satisfy the requirement")
                log.add(f"no wheel of {missing} for Python {target.version}: building its sdist offline")
                self._build_sdist(missing, target, known, log, depth=0)
                built.add(name)
        raise DependencyUnavailable(", ".join(requirements), f"more than {MAX_SDIST_BUILDS} sdists to build")

    def _pip_download(self, requirements: list[str], target: TargetPython) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--progress-bar", "off",
                   "--disable-pip-version-check", "--no-input", "--dest", str(self.files),
                   "--find-links", str(self.files), *target.download_args(), *self._index_args(), *requirements]
        # PIP_NO_INDEX or a user's PIP_REQUIRE_VIRTUALENV must not change what the trusted fetcher does.
        environ = {k: v for k, v in os.environ.items() if k not in ("PIP_NO_INDEX", "PIP_REQUIRE_VIRTUALENV")}
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, env=environ)
        except subprocess.TimeoutExpired:
            raise DependencyUnavailable(", ".join(requirements),
                                        f"the download took longer than {DOWNLOAD_TIMEOUT_S}s") from None

    def _index_args(self) -> list[str]:
        return ["--index-url", self.config.code.index_url] if self.config.code.index_url else []

    def index_url(self) -> str:
        """The index the fetcher reads: the config's, else pip's own (environment, pip.conf), else PyPI."""
        if self.config.code.index_url:
            return self.config.code.index_url
        if os.environ.get("PIP_INDEX_URL"):
            return os.environ["PIP_INDEX_URL"]
        result = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                                capture_output=True, text=True, timeout=60)
        return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else \
            "https://pypi.org/simple"

    def _build_sdist(self, requirement: str, target: TargetPython, known: dict[str, str], log: FetchLog,
                     depth: int) -> None:
        """Fetch the newest sdist satisfying `requirement` and build it into a wheel here, offline; its build
        requirements are fetched (wheels, or sdists built the same way) as the offline build reports them."""
        if depth > 5:
            raise DependencyUnavailable(requirement, "build requirements nested too deep")
        sdist = self._download_sdist(requirement, known, log)
        # The build requirements it declares (read from its pyproject.toml as data) are fetched up front, so
        # that the first build usually succeeds; dynamic ones (get_requires_for_build_wheel) are reported.
        declared = declared_build_requirements(sdist)
        if self._pip_download(declared, target).returncode != 0:
            log.add(f"{sdist.name} declares build requirements {', '.join(declared)}: fetched one by one")
            for build_requirement in declared:
                self._fetch_one(build_requirement, target, known, log, depth)
        self._record_new_files(known)
        reported: set[str] = set()
        for _ in range(MAX_SDIST_BUILDS):
            result = build_wheel_offline(self.config, target, self.files, sdist)
            if result.ok:
                for wheel in result.wheels:
                    destination = self.files / wheel.name
                    if destination.name not in known:
                        shutil.move(str(wheel), destination)
                    self._record_new_files(known)
                    log.add(f"built {destination.name} from {sdist.name} offline; it requires: "
                            f"{', '.join(wheel_requirements(destination)) or 'nothing'}")
                result.cleanup()
                return
            result.cleanup()
            missing = missing_requirement(result.log)
            if missing is None or missing in reported:
                raise DependencyUnavailable(requirement, f"its sdist {sdist.name} does not build without network: "
                                                         + _tail(result.log, 8))
            reported.add(missing)
            log.add(f"building {sdist.name} needs {missing}")
            self._fetch_one(missing, target, known, log, depth)
        raise DependencyUnavailable(requirement, f"its sdist {sdist.name} kept reporting missing requirements")

    def _fetch_one(self, requirement: str, target: TargetPython, known: dict[str, str], log: FetchLog,
                   depth: int) -> None:
        """A build requirement: its wheels, or its sdist built here first."""
        download = self._pip_download([requirement], target)
        self._record_new_files(known)
        if download.returncode != 0:
            inner = missing_requirement((download.stdout or "") + (download.stderr or "")) or requirement
            self._build_sdist(inner, target, known, log, depth + 1)
            self._pip_download([requirement], target)
            self._record_new_files(known)

    def _download_sdist(self, requirement: str, known: dict[str, str], log: FetchLog) -> Path:
        """The newest release's sdist that satisfies `requirement`, from the simple API, hash checked."""
        wanted = Requirement(requirement)
        name = canonicalize_name(wanted.name)
        base = self.index_url().rstrip("/") + "/"
        page_url = urllib.parse.urljoin(base, f"{name}/")
        try:
            links = _simple_links(page_url)
        except DependencyUnavailable as exc:
            raise DependencyUnavailable(requirement, f"no wheel fits the image's Python, and {exc.why}") from None
        choices: list[tuple[Version, str, str, str]] = []
        for filename, url, digest in links:
            if not filename.endswith(_SDIST_SUFFIXES):
                continue
            try:
                project, version = parse_sdist_filename(filename)
            except Exception:  # noqa: BLE001 - an odd file name on the page is skipped, not fatal
                continue
            if project == name and wanted.specifier.contains(version, prereleases=False):
                choices.append((version, filename, url, digest))
        if not choices:
            raise DependencyUnavailable(requirement, f"no wheel fits the image's Python, and no sdist on {page_url}")
        version, filename, url, digest = max(choices, key=lambda choice: choice[0])
        destination = self.files / filename
        if filename in known:
            return destination
        if not digest:
            raise DependencyUnavailable(requirement, f"the index gives no sha256 for {filename}")
        partial = destination.with_name(destination.name + ".partial")
        _download(url, partial)
        actual = sha256_file(partial)
        if actual != digest:
            partial.unlink(missing_ok=True)
            raise DependencyUnavailable(requirement, f"{filename}: sha256 {actual} is not the index's {digest}")
        partial.rename(destination)
        self._record(filename, actual)
        known[filename] = actual
        log.add(f"downloaded sdist {filename} (sha256 checked)")
        return destination


# ---------------------------------------------------------------------------------------------- the index


class _LinkParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href)


def _simple_links(page_url: str) -> list[tuple[str, str, str]]:
    """(file name, absolute URL without fragment, sha256 or "") of every file on a PEP 503 project page."""
    parser = _LinkParser()
    parser.feed(_read_url(page_url).decode("utf-8", "replace"))
    links = []
    for href in parser.links:
        url = urllib.parse.urljoin(page_url, href)
        without, _, fragment = url.partition("#")
        digest = dict(urllib.parse.parse_qsl(fragment)).get("sha256", "")
        links.append((urllib.parse.unquote(without.rsplit("/", 1)[-1]), without, digest))
    return links


def _read_url(url: str) -> bytes:
    if url.startswith("file://"):
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
        path = path / "index.html" if path.is_dir() else path
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DependencyUnavailable(url, f"cannot read the index: {exc}") from None
    import httpx

    try:
        response = httpx.get(url, follow_redirects=True, timeout=60, headers={"Accept": "text/html"})
    except httpx.HTTPError as exc:
        raise DependencyUnavailable(url, f"the index did not answer: {exc}") from None
    if response.status_code == 404:
        raise DependencyUnavailable(url, f"the index has no such project ({url})")
    if response.status_code != 200:
        raise DependencyUnavailable(url, f"the index answered HTTP {response.status_code}")
    return response.content


def _download(url: str, destination: Path) -> None:
    if url.startswith("file://"):
        shutil.copyfile(urllib.parse.unquote(urllib.parse.urlparse(url).path), destination)
        return
    import httpx

    with httpx.stream("GET", url, follow_redirects=True, timeout=120) as response, open(destination, "wb") as out:
        if response.status_code != 200:
            raise DependencyUnavailable(url, f"download answered HTTP {response.status_code}")
        for chunk in response.iter_bytes():
            out.write(chunk)


# ---------------------------------------------------------------------------------------------- offline builds


@dataclass
class OfflineBuild:
    ok: bool
    log: str
    wheels: list[Path]
    scratch: Path

    def cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


BUILD_SCRIPT = (
    "set -e; python3 -m venv /tmp/build-venv; "
    f"/tmp/build-venv/bin/python -m pip wheel --no-index --find-links {WHEELHOUSE_MOUNT} --no-deps --use-pep517 "
    "--disable-pip-version-check --progress-bar off --wheel-dir /out/wheels \"/in/$SDIST\""
)


def build_wheel_offline(config: Config, target: TargetPython, wheelhouse: Path, sdist: Path) -> OfflineBuild:
    """Build `sdist` into a wheel in a container without network, as a non-root user, the wheelhouse mounted
    read-only (build requirements come from it). Only regular files with a wheel's name come back."""
    scratch = Path(tempfile.mkdtemp(prefix="tasksynth-sdist-", dir=config.home_path))
    (scratch / "in").mkdir()
    (scratch / "out").mkdir()
    (scratch / "out" / "wheels").mkdir()
    os.chmod(scratch / "out", 0o777)
    os.chmod(scratch / "out" / "wheels", 0o777)
    shutil.copyfile(sdist, scratch / "in" / sdist.name)
    from envbuilder.containers import container_slot

    with container_slot(config):
        result = run_oneshot(config, target.image, ["bash", "-c", BUILD_SCRIPT],
                             mounts=[Mount(str(wheelhouse), WHEELHOUSE_MOUNT), Mount(str(scratch / "in"), "/in"),
                                     Mount(str(scratch / "out"), "/out", read_only=False)],
                             limits=Limits.from_config(config, wall_s=float(config.docker.build_timeout_s)),
                             env={"SDIST": sdist.name, "HOME": "/tmp", "PIP_NO_CACHE_DIR": "1"})
    wheels = []
    out = scratch / "out" / "wheels"
    for entry in os.scandir(out):
        # The build wrote this folder: a link or an odd name is not followed nor trusted.
        if entry.is_file(follow_symlinks=False) and _is_wheel_name(entry.name):
            wheels.append(out / entry.name)
    log = "\n".join(part for part in (result.stdout, result.stderr, result.reason) if part)
    return OfflineBuild(result.ok and bool(wheels), log, wheels, scratch)


PEP517_FALLBACK_REQUIRES = ["setuptools>=40.8.0", "wheel"]  # what pip builds a setup.py-only sdist with


def declared_build_requirements(sdist: Path) -> list[str]:
    """`[build-system] requires` of an sdist's top-level pyproject.toml, read from the archive as data (pip's
    fallback for a project without one); nothing of the archive is extracted or run."""
    import tarfile
    import tomllib
    import zipfile

    text = None
    try:
        if sdist.name.endswith(".zip"):
            with zipfile.ZipFile(sdist) as archive:
                names = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/pyproject.toml")]
                if names and archive.getinfo(names[0]).file_size < 1_000_000:
                    text = archive.read(names[0]).decode("utf-8", "replace")
        else:
            with tarfile.open(sdist) as archive:
                for member in archive:
                    if member.isfile() and member.name.count("/") == 1 and member.name.endswith("/pyproject.toml"):
                        if member.size < 1_000_000:
                            handle = archive.extractfile(member)
                            text = handle.read().decode("utf-8", "replace") if handle else None
                        break
    except (OSError, tarfile.TarError, zipfile.BadZipFile):
        return list(PEP517_FALLBACK_REQUIRES)
    try:
        build_system = tomllib.loads(text).get("build-system", {}) if text else {}
    except tomllib.TOMLDecodeError:
        build_system = {}
    requires = [r for r in build_system.get("requires", []) if isinstance(r, str) and _valid(r)]
    return requires if "requires" in build_system else list(PEP517_FALLBACK_REQUIRES)


def wheel_requirements(wheel: Path) -> list[str]:
    """Requires-Dist of a wheel's METADATA (read as data; nothing in the wheel runs)."""
    import email.parser
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
            text = archive.read(name)[:1_000_000].decode("utf-8", "replace")
    except (zipfile.BadZipFile, StopIteration, OSError):
        return []
    return email.parser.Parser().parsestr(text, headersonly=True).get_all("Requires-Dist") or []


# ---------------------------------------------------------------------------------------------- containers

OUTPUT_CAP_BYTES = 4 * 1024 * 1024  # of a build's output, its tail kept: pip's errors come last


@dataclass
class ContainerRun:
    name: str
    returncode: int
    output: str  # stdout and stderr together, capped
    timed_out: bool = False


def run_sandboxed(config: Config, image: str, command: list[str], *, mounts: tuple[Mount, ...] | list[Mount] = (),
                  env: dict[str, str] | None = None, workdir: str | None = None, user: str | None = None,
                  writable_root: bool = False, keep: bool = False, wall_s: float | None = None) -> ContainerRun:
    """Run `command` in a fresh container of `image` under the sandbox's isolation (no network, no
    capabilities, non-root, limits), owned by this home's build role, output capped (its tail kept) while
    it is read. For a container whose file system becomes an image (`docker commit` of an install), which
    `tasksynth.sandbox.run_oneshot` does not offer: `writable_root` lets the root take the install (it changes
    nothing else about the isolation), `keep` leaves the stopped container for the commit; the caller removes
    it (`remove_container`)."""
    wall_s = wall_s or float(config.docker.build_timeout_s)
    limits = Limits.from_config(config, wall_s=wall_s)
    name = f"tasksynth-build-{uuid.uuid4().hex[:12]}"
    args = isolated_run_args(limits, name=name, labels=owner_labels(config.home_path, "build"), mounts=mounts,
                             user=user, workdir=workdir, env=env)
    if writable_root:
        args.remove("--read-only")
    argv = ["docker", "run", *([] if keep else ["--rm"]), *args, image, *command]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    kept = bytearray()
    expired = threading.Event()

    def stop() -> None:
        expired.set()
        docker("rm", "-f", name, check=False, timeout=60)

    timer = threading.Timer(wall_s, stop)
    timer.start()
    try:
        assert process.stdout is not None
        for chunk in iter(lambda: process.stdout.read1(65536), b""):
            kept += chunk
            if len(kept) > OUTPUT_CAP_BYTES:
                del kept[:len(kept) - OUTPUT_CAP_BYTES]
        returncode = process.wait()
    finally:
        timer.cancel()
    timed_out = expired.is_set()
    if timed_out:
        kept += f"\nthe container ran longer than {wall_s:.0f}s and was stopped\n".encode()
    return ContainerRun(name, returncode, kept.decode("utf-8", "replace"), timed_out)


def remove_container(name: str) -> None:
    docker("rm", "-f", name, check=False, timeout=120)


# ---------------------------------------------------------------------------------------------- the target

# Asked of the image's own interpreter (a Debian python3 has no pip, so no `packaging.tags` to ask).
_TAGS_SCRIPT = ("import json, os, platform, sys\n"
                "print(json.dumps({'abi': 'cp%d%d' % sys.version_info[:2], 'machine': platform.machine(),"
                " 'glibc': os.confstr('CS_GNU_LIBC_VERSION').split()[-1]}))\n")
_LEGACY_MANYLINUX = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}


def target_python(config: Config, python: str, image: str) -> TargetPython:
    """The tags `image`'s interpreter accepts: its ABI, and the manylinux platforms its glibc runs (PEP 600),
    asked once per image (in the sandbox) and kept."""
    cache = config.home_path / "wheelhouse" / "targets.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if image not in known:
        result = run_oneshot(config, image, ["python3", "-c", _TAGS_SCRIPT],
                             limits=Limits.from_config(config, wall_s=120.0))
        if result.outcome == "infra_error":
            raise DockerUnavailable(f"could not start {image} to read its interpreter's tags: {result.reason}")
        try:
            known[image] = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise CodeEnvError(f"could not read the interpreter tags of {image}: "
                               f"{_tail(result.stderr + result.reason, 4)}") from None
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(known))
        temporary.replace(cache)
    facts = known[image]
    machine = facts["machine"]
    major, minor = (int(part) for part in facts["glibc"].split(".")[:2])
    platforms = []
    for glibc_minor in range(minor, 4, -1):
        platforms.append(f"manylinux_{major}_{glibc_minor}_{machine}")
        if (major, glibc_minor) in _LEGACY_MANYLINUX:
            platforms.append(f"{_LEGACY_MANYLINUX[(major, glibc_minor)]}_{machine}")
    platforms.append(f"linux_{machine}")
    return TargetPython(python, (facts["abi"],), tuple(platforms), image)


# ---------------------------------------------------------------------------------------------- small parts


def _is_wheel_name(name: str) -> bool:
    try:
        parse_wheel_filename(name)
    except Exception:  # noqa: BLE001 - packaging raises its own InvalidWheelFilename
        return False
    return "/" not in name and not name.startswith(".")


def _valid(requirement: str) -> bool:
    try:
        Requirement(requirement)
    except InvalidRequirement:
        return False
    return True



def _tail(text: str, count: int) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:])


