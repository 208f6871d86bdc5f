"""The trusted cargo fetcher: a Rust project's crates, downloaded on the host, no code of theirs run.

Debian's packaged crates (`librust-*-dev` in the toolchain image, `/usr/share/cargo/registry`) are the offline
source first: `crates_debian_lacks` reads the manifests' dependency tables and names what the toolchain's
packages do not hold. Only then does the host fetch, and only downloads: the commit's manifests
(`Cargo.toml`, `Cargo.lock`, with empty stand-ins for the source files cargo looks for) are copied to a scratch
folder, never the repository's `.cargo/` configuration or `rust-toolchain` file; `cargo fetch` downloads
exactly the locked versions (no `build.rs`, no proc-macro runs: those run only when a crate is built, in the
sandbox) from crates.io or the mirror `code.cargo_registry`, and `cargo vendor --offline` lays them out as a
directory source. The result is kept at `<home>/cargo/<hash of the manifests and the mirror>/vendor` and copied
into the environment's image at `/opt/cargo-vendor` by a build without network. Where crates.io cannot be
reached (and no mirror is set) the fetch fails with cargo's own reason: `install_failed`, not a fake.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path, PurePosixPath

from envbuilder.repos import SourceTree
from envbuilder.wheelhouse import DependencyUnavailable
from tasksynth.config import Config
from tasksynth.hashing import content_hash

_DEPENDENCY_TABLES = ("dependencies", "dev-dependencies", "build-dependencies")
_SKIPPED_FOLDERS = {"target", ".cargo", ".git"}


def manifest_paths(tree: SourceTree) -> list[str]:
    return sorted(path for path in tree.files if PurePosixPath(path).name == "Cargo.toml"
                  and not _SKIPPED_FOLDERS & set(PurePosixPath(path).parts[:-1]))


def registry_dependencies(tree: SourceTree) -> list[str]:
    """The crates.io crates the manifests name (normal, dev and build dependencies, per target too, and the
    workspace's table); path-only dependencies are the repository's own."""
    names: list[str] = []
    for path in manifest_paths(tree):
        try:
            manifest = tomllib.loads(tree.read(path) or "")
        except tomllib.TOMLDecodeError:
            continue
        tables = [manifest, manifest.get("workspace", {}),
                  *[t for t in manifest.get("target", {}).values() if isinstance(t, dict)]]
        for table in tables:
            for kind in _DEPENDENCY_TABLES:
                for name, spec in (table.get(kind) or {}).items():
                    if isinstance(spec, dict):
                        if spec.get("workspace") or ("path" in spec and "version" not in spec):
                            continue
                        name = spec.get("package", name)
                    names.append(name)
    return list(dict.fromkeys(names))


def debian_crates() -> set[str]:
    """Crates the rust toolchain's Debian packages hold (`librust-<crate>-dev`, `_` spelled `-` by Debian)."""
    from tasksynth.docker.toolchains import TOOLCHAIN_PACKAGES

    return {p.split("/", 1)[0].removeprefix("librust-").removesuffix("-dev")
            for p in TOOLCHAIN_PACKAGES.get("rust", []) if p.startswith("librust-")}


def crates_debian_lacks(tree: SourceTree) -> list[str]:
    offered = debian_crates()
    return [name for name in registry_dependencies(tree) if name.replace("_", "-").lower() not in offered]


def fetch_crates(config: Config, tree: SourceTree) -> tuple[Path, str]:
    """(the vendored crates folder, a hash of the crates it holds) for the commit's manifests, downloaded once
    per manifests and mirror. The hash, not the mirror's address, names the image layer made of them."""
    manifests = {path: tree.read(path) or "" for path in manifest_paths(tree)}
    manifests.update({lock: tree.read(lock) or "" for lock in tree.files if PurePosixPath(lock).name == "Cargo.lock"
                      and not _SKIPPED_FOLDERS & set(PurePosixPath(lock).parts[:-1])})
    if "Cargo.toml" not in manifests:
        raise DependencyUnavailable("crates", "the repository has no Cargo.toml at its root")
    mirror = config.code.cargo_registry
    key = content_hash("cargo", sorted(manifests.items()), mirror, length=16)
    folder = config.home_path / "cargo" / key
    if (folder / "vendor").is_dir():
        return folder / "vendor", vendored_key(folder / "vendor")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tasksynth-cargo-", dir=folder.parent) as tmp:
        work, cargo_home = Path(tmp) / "project", Path(tmp) / "cargo-home"
        _write_manifests(work, manifests, tree)
        cargo_home.mkdir()
        if mirror:
            registry = mirror if mirror.startswith(("sparse+", "registry+")) or mirror.endswith(".git") \
                else f"sparse+{mirror.rstrip('/')}/"
            (cargo_home / "config.toml").write_text(
                f'[source.crates-io]\nreplace-with = "mirror"\n[source.mirror]\nregistry = "{registry}"\n')
        environ = _cargo_environment(cargo_home)
        source = f"the mirror {mirror}" if mirror else "crates.io (set code.cargo_registry to a mirror)"
        _cargo(["cargo", "fetch"], work, environ, f"cargo fetch could not download the crates from {source}")
        _cargo(["cargo", "vendor", "--offline", "--respect-source-config", "--versioned-dirs",
                str(Path(tmp) / "vendor")], work, environ,
               "cargo vendor could not lay out the fetched crates")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        (Path(tmp) / "vendor").rename(folder / "vendor")
    return folder / "vendor", vendored_key(folder / "vendor")


def vendored_key(vendor: Path) -> str:
    """The crates of a vendor folder by name, version and the .crate checksum cargo verified."""
    crates = []
    for checksum in sorted(vendor.glob("*/.cargo-checksum.json")):
        crates.append((checksum.parent.name, json.loads(checksum.read_text()).get("package")))
    return content_hash("crates", crates, length=16)


def _write_manifests(work: Path, manifests: dict[str, str], tree: SourceTree) -> None:
    """The manifests, and empty files where cargo looks for a package's targets (their code is not needed to
    resolve and download; it is not copied, so none of it is even read on the host)."""
    files = set(tree.files)
    for path, text in manifests.items():
        target = work / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        if PurePosixPath(path).name != "Cargo.toml":
            continue
        folder = PurePosixPath(path).parent
        stand_ins = [str(folder / name) for name in ("src/lib.rs", "src/main.rs", "build.rs")
                     if str(folder / name) in files]
        for stand_in in stand_ins or [str(folder / "src/lib.rs")]:
            (work / stand_in).parent.mkdir(parents=True, exist_ok=True)
            (work / stand_in).touch()


def _cargo(command: list[str], work: Path, environ: dict[str, str], failure: str) -> None:
    try:
        result = subprocess.run(command, cwd=work, env=environ, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise DependencyUnavailable("crates", "cargo is not installed on this host (the trusted fetcher needs "
                                    "it to download crates)") from None
    if result.returncode != 0:
        lines = [line for line in (result.stdout + result.stderr).strip().splitlines() if line.strip()]
        raise DependencyUnavailable("crates", f"{failure}:\n" + "\n".join(lines[-6:]))


def _cargo_environment(cargo_home: Path) -> dict[str, str]:
    """The host's environment (proxies, CA bundle, rustup's home) without any cargo or rustc setting of its own:
    the private CARGO_HOME holds the only configuration cargo reads besides the scratch folder's."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO_", "RUSTC", "RUSTFLAGS",
                                                                         "RUSTDOC"))}
    environ.update(PATH=_path_with_cargo(), CARGO_HOME=str(cargo_home), CARGO_NET_RETRY="1",
                   CARGO_HTTP_TIMEOUT="30", CARGO_TERM_COLOR="never")
    return environ


def _path_with_cargo() -> str:
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    return os.pathsep.join([str(Path(cargo).parent), os.environ.get("PATH", "/usr/bin:/bin")])
