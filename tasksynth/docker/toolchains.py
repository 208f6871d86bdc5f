"""Language toolchains on top of a base image, from Debian's packages: Go (golang-go) and the Go libraries
Debian packages (`golang-*-dev`, sources under /usr/share/gocode), the offline source of Go dependencies;
JavaScript (Debian's nodejs), a project's npm dependencies added by `node_modules_image`.

No container here has network, so apt cannot run inside a build: the host (trusted code, ours) downloads the
packages and their dependency closure with `apt-get download` into `<home>/debs/<language>/`, and
`docker build --network none` installs them with dpkg on top of the base image. Tag:
`tasksynth/toolchain:<language>-<hash of base tag and package files>`; an existing tag is a cache hit.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tasksynth.config import Config
from tasksynth.docker.base_images import image_lock
from tasksynth.docker.engine import MANAGED_LABEL, docker, image_exists
from tasksynth.errors import ImageBuildFailed
from tasksynth.hashing import content_hash, sha256_bytes

TOOLCHAIN_VERSION = 1
# Debian bookworm names; the closure beyond the base image (which has libc) is listed whole.
TOOLCHAIN_PACKAGES: dict[str, list[str]] = {
    "go": ["golang-go", "golang-src", "golang-1.19-go", "golang-1.19-src", "golang-github-google-go-cmp-dev"],
    # `name/bookworm`: Debian's own build, even where the host has another source's nodejs installed
    "javascript": ["nodejs/bookworm", "libnode108/bookworm", "libc-ares2", "libicu72", "libuv1", "node-acorn",
                   "node-busboy", "node-cjs-module-lexer", "node-undici", "node-xtend"],
    # rustc 1.63 and cargo with gcc as the linker; Debian's crates (`librust-*-dev`) under
    # /usr/share/cargo/registry are the offline crate source (envbuilder.runners_rust)
    "rust": ["cargo", "rustc", "libstd-rust-1.63", "libstd-rust-dev", "libllvm14", "libgit2-1.5", "libhttp-parser2.9",
             "libmbedcrypto7", "libmbedx509-1", "libmbedtls14", "libz3-4", "libedit2", "libbsd0", "libicu72",
             "libxml2", "binutils", "binutils-common", "binutils-x86-64-linux-gnu", "libbinutils", "libctf0",
             "libctf-nobfd0", "libgprofng0", "libjansson4", "gcc", "gcc-12", "cpp", "cpp-12", "libgcc-12-dev",
             "libcc1-0", "libgomp1", "libitm1", "libatomic1", "libasan8", "liblsan0", "libtsan2", "libubsan1",
             "libquadmath0", "libisl23", "libmpfr6", "libmpc3", "librust-hex-dev"],
    # CMake 3.25 (ctest --output-junit), g++ 12, make and ninja; libfmt-dev a packaged library to link against
    "cpp": ["cmake", "cmake-data", "g++", "g++-12", "libstdc++-12-dev", "make", "ninja-build", "libarchive13",
            "libcurl4", "libjsoncpp25", "librhash0", "libuv1", "libicu72", "libxml2", "binutils", "binutils-common",
            "binutils-x86-64-linux-gnu", "libbinutils", "libctf0", "libctf-nobfd0", "libgprofng0", "libjansson4",
            "gcc", "gcc-12", "cpp", "cpp-12", "libgcc-12-dev", "libcc1-0", "libgomp1", "libitm1", "libatomic1",
            "libasan8", "liblsan0", "libtsan2", "libubsan1", "libquadmath0", "libisl23", "libmpfr6", "libmpc3",
            "libfmt9", "libfmt-dev"],
}
# What a recipe of the language sets for its runs: Go in GOPATH mode over Debian's library sources (go.mod is
# not read: no module proxy is reachable), its build cache in the run's scratch /tmp.
TOOLCHAIN_ENV: dict[str, dict[str, str]] = {
    "go": {"GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "GOCACHE": "/tmp/gocache", "GOFLAGS": "",
           "CGO_ENABLED": "0"},
    "javascript": {},
    # Rust: cargo's home (its config.toml names the offline crate source) in the home tree, which a validation
    # run may write; the build output in the run's scratch /tmp, so a checkout stays as the image has it.
    "rust": {"CARGO_HOME": "/home/tester/.cargo", "CARGO_TARGET_DIR": "/tmp/cargo-target",
             "CARGO_NET_OFFLINE": "true", "CARGO_TERM_COLOR": "never"},
    # C/C++: the build tree in the run's scratch /tmp (configured afresh by each run)
    "cpp": {"CTEST_OUTPUT_ON_FAILURE": "1"},
}


def supported_languages() -> list[str]:
    return sorted(TOOLCHAIN_PACKAGES)


def toolchain_image(config: Config, base_tag: str, language: str, *, log=lambda _line: None) -> str:
    """The base image with `language`'s toolchain, built on first use; ImageBuildFailed says why it could not."""
    packages = TOOLCHAIN_PACKAGES.get(language)
    if packages is None:
        raise ImageBuildFailed(f"no toolchain for {language} (known: {', '.join(supported_languages())})")
    debs = _download(config, language, packages)
    key = content_hash(TOOLCHAIN_VERSION, base_tag, [(p.name, sha256_bytes(p.read_bytes())) for p in debs], length=12)
    tag = f"tasksynth/toolchain:{language}-{key}"
    with image_lock(config, tag):
        if image_exists(tag):
            return tag
        log(f"building {tag} ({len(debs)} Debian packages)")
        with tempfile.TemporaryDirectory(prefix="tasksynth-toolchain-") as tmp:
            context = Path(tmp)
            (context / "debs").mkdir()
            for deb in debs:
                shutil.copy2(deb, context / "debs" / deb.name)
            (context / "Dockerfile").write_text("\n".join([
                f"FROM {base_tag}",
                "COPY debs /tmp/debs",
                "RUN dpkg -i /tmp/debs/*.deb && rm -rf /tmp/debs",
                f"LABEL {MANAGED_LABEL}=true org.tasksynth.layer=toolchain org.tasksynth.language={language}",
            ]) + "\n")
            result = docker("build", "--network", "none", "--force-rm", "-t", tag, str(context), check=False,
                            timeout=config.docker.build_timeout_s)
        if result.returncode != 0:
            tail = "\n".join(((result.stdout or "") + (result.stderr or "")).strip().splitlines()[-12:])
            raise ImageBuildFailed(f"installing the {language} toolchain failed:\n{tail}")
    return tag


def _download(config: Config, language: str, packages: list[str]) -> list[Path]:
    folder = config.home_path / "debs" / language
    folder.mkdir(parents=True, exist_ok=True)
    names = [_name(p) for p in packages]
    have = {p.name.split("_", 1)[0] for p in folder.glob("*.deb")}
    wanted = [p for p in packages if _name(p) not in have]
    if wanted:
        result = subprocess.run(["apt-get", "download", *wanted], cwd=folder, capture_output=True, text=True,
                                timeout=900)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-6:])
            raise ImageBuildFailed(f"apt-get download of the {language} toolchain failed (run `apt-get update`?):"
                                   f"\n{tail}")
    debs = sorted(p for p in folder.glob("*.deb") if p.name.split("_", 1)[0] in names)
    missing = sorted(set(names) - {p.name.split("_", 1)[0] for p in debs})
    if missing:
        raise ImageBuildFailed(f"Debian packages not downloaded: {', '.join(missing)}")
    return debs


def _name(package: str) -> str:
    return package.split("=", 1)[0].split("/", 1)[0]


def node_modules_image(config: Config, toolchain_tag: str, node_modules: Path, key: str,
                       reporters: Path | None = None, owner: str | None = None) -> str:
    """The JavaScript toolchain image with a project's dependencies at /opt/node_modules (fetched by the host,
    `envbuilder.npm_fetch`, `envbuilder.js_package_managers`), copied in by a build without network; the JUnit
    reporters the project lacks at /opt/js-reporters/node_modules; `owner` (`uid:gid`) owns the dependencies, so
    that lifecycle scripts run by the sandboxed user can write there. Tag: `tasksynth/toolchain:npm-<key>`."""
    extra = [] if reporters is None and owner is None else [reporters.parent.name if reporters else None, owner]
    tag = f"tasksynth/toolchain:npm-{content_hash(TOOLCHAIN_VERSION, toolchain_tag, key, *extra, length=12)}"
    with image_lock(config, tag):
        if image_exists(tag):
            return tag
        with tempfile.TemporaryDirectory(prefix="tasksynth-npm-") as tmp:
            context = Path(tmp)
            shutil.copytree(node_modules, context / "node_modules", symlinks=True)
            if reporters is not None:
                shutil.copytree(reporters, context / "reporters", symlinks=True)
            chown = f"--chown={owner} " if owner else ""
            (context / "Dockerfile").write_text("\n".join([
                f"FROM {toolchain_tag}", f"COPY {chown}node_modules /opt/node_modules",
                *(["COPY reporters /opt/js-reporters/node_modules"] if reporters is not None else []),
                f"LABEL {MANAGED_LABEL}=true org.tasksynth.layer=toolchain org.tasksynth.language=javascript"]) + "\n")
            result = docker("build", "--network", "none", "--force-rm", "-t", tag, str(context), check=False,
                            timeout=config.docker.build_timeout_s)
        if result.returncode != 0:
            tail = "\n".join(((result.stdout or "") + (result.stderr or "")).strip().splitlines()[-12:])
            raise ImageBuildFailed(f"copying the project's node_modules into an image failed:\n{tail}")
    return tag


def vendored_crates_image(config: Config, toolchain_tag: str, vendor: Path, key: str) -> str:
    """The Rust toolchain image with the crates the host fetched (`envbuilder.cargo_fetch`) at /opt/cargo-vendor,
    copied in by a build without network. Tag: `tasksynth/toolchain:crates-<key>`."""
    tag = f"tasksynth/toolchain:crates-{content_hash(TOOLCHAIN_VERSION, toolchain_tag, key, length=12)}"
    with image_lock(config, tag):
        if image_exists(tag):
            return tag
        with tempfile.TemporaryDirectory(prefix="tasksynth-crates-") as tmp:
            context = Path(tmp)
            shutil.copytree(vendor, context / "vendor", symlinks=True)
            (context / "Dockerfile").write_text("\n".join([
                f"FROM {toolchain_tag}", "COPY vendor /opt/cargo-vendor",
                f"LABEL {MANAGED_LABEL}=true org.tasksynth.layer=toolchain org.tasksynth.language=rust"]) + "\n")
            result = docker("build", "--network", "none", "--force-rm", "-t", tag, str(context), check=False,
                            timeout=config.docker.build_timeout_s)
        if result.returncode != 0:
            tail = "\n".join(((result.stdout or "") + (result.stderr or "")).strip().splitlines()[-12:])
            raise ImageBuildFailed(f"copying the fetched crates into an image failed:\n{tail}")
    return tag
