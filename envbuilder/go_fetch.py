"""The trusted Go module fetcher: a Go project's modules, downloaded on the host, no code of theirs run.

Debian's packaged Go libraries (`golang-*-dev` in the toolchain image, sources under /usr/share/gocode/src) are
the offline source first, in GOPATH mode. A repository needs modules when its root go.mod `require`s a module
path those packages do not provide (`GO_DEBIAN_MODULES` in `tasksynth.docker.toolchains` names the paths the
toolchain's packages hold; a `replace` by a folder of the repository is its own code). Only then does the host
fetch, and only downloads: go.mod and go.sum (and the go.mod of a folder a `replace` names) are copied to a
scratch folder, no source file; the host's `go mod download -x` fetches the whole module graph from the proxy
`code.go_proxy` (proxy.golang.org by default, or a mirror speaking the GOPROXY protocol) into a private module
cache under `<home>/gomod/<hash of go.mod, go.sum, proxy, checksum database>`. `go mod download` runs no module
code; version-control tools are off too (GOVCS=*:off), so a `direct` in the proxy list cannot run git.

Checksums: go.sum verifies every module it lists, always. A module go.sum lacks is checked against the checksum
database `code.go_sumdb` (sum.golang.org by default, asked through the proxy first); behind a private mirror
whose modules that database cannot vouch for, or without a route to it, the fetch fails, and turning it off is an
explicit `code.go_sumdb = "off"`, never a silent fallback.

The module cache's `cache/download` folder (the GOPROXY protocol's own layout) becomes an image layer at
/opt/gomodcache/cache/download, built without network; the recipe's tests run in module mode with it as a
`file://` proxy and a module cache in the run's scratch /tmp (the image is read-only in validation runs). Where
the proxy cannot be reached the fetch fails with go's own reason: `install_failed`, not a fake.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path, PurePosixPath

from envbuilder.repos import SourceTree
from envbuilder.wheelhouse import DependencyUnavailable
from tasksynth.config import Config
from tasksynth.hashing import content_hash, sha256_bytes

GO_MODULE_PROXY_DIR = "/opt/gomodcache/cache/download"
# What the recipe's module-mode runs set: the layer as a file proxy, nothing else reachable, go.sum verifying
# (values without spaces: they become the instance image's ENV line as they are).
GO_MODULE_ENV = {"GO111MODULE": "on", "GOPROXY": f"file://{GO_MODULE_PROXY_DIR}", "GOSUMDB": "off",
                 "GOFLAGS": "-mod=mod", "GOMODCACHE": "/tmp/gomodcache", "GOPATH": "/tmp/gopath",
                 "GOCACHE": "/tmp/gocache", "CGO_ENABLED": "0", "GOTOOLCHAIN": "local"}
_DIRECTIVE = re.compile(r"^(require|replace)\b\s*(.*)$")


def module_requirements(go_mod: str) -> tuple[list[str], dict[str, str]]:
    """(the module paths go.mod requires, in order; {module path: local folder} of its `replace`s by a folder)."""
    required: list[str] = []
    local: dict[str, str] = {}
    block = None
    for raw in go_mod.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if block is not None:
            if line == ")":
                block = None
                continue
            entry = line
            kind = block
        else:
            match = _DIRECTIVE.match(line)
            if not match:
                continue
            kind, entry = match.groups()
            if entry == "(":
                block = kind
                continue
        if kind == "require" and entry.split():
            required.append(entry.split()[0].strip('"'))
        elif kind == "replace" and "=>" in entry:
            old, new = (side.split() for side in entry.split("=>", 1))
            if old and new and new[0].startswith(("./", "../", "/")):
                local[old[0].strip('"')] = new[0]
    return list(dict.fromkeys(required)), local


def debian_go_modules() -> set[str]:
    from tasksynth.docker.toolchains import GO_DEBIAN_MODULES

    return set(GO_DEBIAN_MODULES)


def go_modules_debian_lacks(tree: SourceTree) -> list[str]:
    """The modules the root go.mod requires that neither Debian's packages nor the repository itself provide."""
    required, local = module_requirements(tree.read("go.mod") or "")
    offered = debian_go_modules()
    return [path for path in required if path not in local
            and not any(path == m or path.startswith(m + "/") for m in offered)]


def fetch_go_modules(config: Config, tree: SourceTree) -> tuple[Path, str]:
    """(the `cache/download` folder holding the module graph, a hash of the modules in it), downloaded once per
    go.mod, go.sum, proxy and checksum database. The hash, not the proxy's address, names the image layer."""
    go_mod = tree.read("go.mod")
    if go_mod is None:
        raise DependencyUnavailable("go modules", "the repository has no go.mod at its root")
    manifests = {"go.mod": go_mod}
    if tree.exists("go.sum"):
        manifests["go.sum"] = tree.read("go.sum") or ""
    for folder in module_requirements(go_mod)[1].values():
        path = str(PurePosixPath(folder) / "go.mod")
        if not folder.startswith("/") and ".." not in PurePosixPath(path).parts and tree.exists(path):
            manifests[path] = tree.read(path) or ""  # a replacement inside the repository: its go.mod only
    proxy, sumdb = config.code.go_proxy, config.code.go_sumdb
    key = content_hash("gomod", sorted(manifests.items()), proxy, sumdb, length=16)
    folder = config.home_path / "gomod" / key
    if (folder / "download").is_dir():
        return folder / "download", downloaded_key(folder / "download")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tasksynth-gomod-", dir=folder.parent) as tmp:
        work, cache = Path(tmp) / "module", Path(tmp) / "modcache"
        for path, text in manifests.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(text)
        _go(["go", "mod", "download", "-x"], work, _go_environment(Path(tmp), cache, proxy, sumdb),
            f"go mod download could not fetch the modules from {proxy or 'the default proxy'}"
            + ("" if sumdb == "off" else f" (checksum database {sumdb or 'sum.golang.org'})"))
        download = cache / "cache" / "download"
        if not download.is_dir():  # a go.mod without requirements: an empty proxy serves it
            download.mkdir(parents=True)
        for lock in download.rglob("*.lock"):
            lock.unlink()
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        download.rename(folder / "download")
    return folder / "download", downloaded_key(folder / "download")


def downloaded_key(download: Path) -> str:
    """The modules of a `cache/download` folder by file and content (go.mod, zip and info files)."""
    files = sorted(p for p in download.rglob("*") if p.is_file())
    return content_hash("gomodules", [(str(p.relative_to(download)), sha256_bytes(p.read_bytes())) for p in files],
                        length=16)


def _go(command: list[str], work: Path, environ: dict[str, str], failure: str) -> None:
    try:
        result = subprocess.run(command, cwd=work, env=environ, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise DependencyUnavailable("go modules", "go is not installed on this host (the trusted fetcher needs "
                                    "it to download modules: `make fetchers`)") from None
    if result.returncode != 0:
        # -x traces every command and request (`# get ...`); go's own reason is in the other lines, from its
        # first `go: ...` or `verifying ...` line (a checksum mismatch explains itself over several)
        lines = [line for line in (result.stdout + result.stderr).strip().splitlines()
                 if line.strip() and not line.startswith("# get ")]
        first = next((i for i, line in enumerate(lines) if line.startswith(("go: ", "verifying "))),
                     max(len(lines) - 6, 0))
        raise DependencyUnavailable("go modules", f"{failure}:\n" + "\n".join(lines[first:first + 12]))


def _go_environment(scratch: Path, cache: Path, proxy: str, sumdb: str) -> dict[str, str]:
    """The host's environment (proxies, CA bundle) without any Go setting of its own (GOENV=off: no user's go
    env file either); only module downloads, from the configured proxy, into the private cache."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GO", "CGO_"))}
    environ.update(PATH=os.environ.get("PATH", "/usr/bin:/bin"), HOME=str(scratch), GOENV="off",
                   GO111MODULE="on", GOFLAGS="-mod=mod -modcacherw", GOPATH=str(scratch / "gopath"),
                   GOMODCACHE=str(cache), GOCACHE=str(scratch / "gocache"), GOVCS="*:off", GOTOOLCHAIN="local",
                   GONOSUMDB="", GONOPROXY="", GOPRIVATE="", GOINSECURE="")
    if proxy:
        environ["GOPROXY"] = proxy
    if sumdb:
        environ["GOSUMDB"] = sumdb
    return environ
