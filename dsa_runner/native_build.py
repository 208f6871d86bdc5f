"""Compiles a C source of ``dsa_runner/native`` into a shared library on first use, cached by content.

The library goes to ``$XDG_CACHE_HOME/tasksynth/native`` (default ``~/.cache``), named by a hash of the
source, the flags, the compiler and the CPU (``-march=native`` depends on it), so a change to any of them
builds a new one. Compiled with ``$CC``, else ``cc``/``gcc``/``clang``; without one, NativeUnavailable.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger("dsa_runner")

FLAGS = ["-O3", "-march=native", "-pthread", "-shared", "-fPIC", "-std=gnu11"]


class NativeUnavailable(RuntimeError):
    """A C kernel cannot be built or cannot run here."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tasksynth" / "native"


def compiler() -> str:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise NativeUnavailable("no C compiler (set CC, or install gcc)")


def cpu_signature() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


def library_path(source: Path, flags: list[str] = FLAGS, name: str | None = None) -> Path:
    """Where the library of ``source`` built with ``flags`` is cached: ``name`` (default: the source's stem),
    then the hash of everything the build depends on."""
    cc = compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    digest = hashlib.sha256()
    for part in (source.read_bytes(), " ".join(flags).encode(), cc.encode(), "".join(version).encode(),
                 cpu_signature().encode(), platform.machine().encode()):
        digest.update(part)
        digest.update(b"\0")
    return cache_dir() / f"{name or source.stem}-{digest.hexdigest()[:16]}.so"


def build_library(source: Path, flags: list[str] = FLAGS, name: str | None = None) -> Path:
    """Compiles ``source`` unless the cache has it; returns the library's path (see library_path). Safe
    across processes: each compiles to its own temporary file and renames it into place."""
    path = library_path(source, flags, name)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".build-", suffix=".so")
    os.close(fd)
    cmd = [compiler(), *flags, "-o", tmp, str(source), "-lm"]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NativeUnavailable(f"compiling {source.name}: {exc}") from exc
        if proc.returncode != 0:
            raise NativeUnavailable(f"compiling {source.name} failed: {proc.stderr.strip()[-800:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("native library compiled: %s", path)
    return path
