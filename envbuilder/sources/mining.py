"""One entry point for every source of candidates: a `SourceRequest` names the kind and the target, `MINERS`
maps each kind to the function that mines it. A new source (GitHub) registers itself with `register_miner`.

Each request has a key that changes when its input changes (a repository's HEAD, a file's contents), so the
flow's mine step skips a source already mined at that state and mining twice adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envbuilder.errors import SourceError
from envbuilder.repos import git, is_url
from envbuilder.sources.candidate import Discard
from envbuilder.sources.git_history import Limits, MineResult, mine_history
from envbuilder.sources.swebench import import_instances
from tasksynth.config import Config
from tasksynth.hashing import content_hash, sha256_bytes


@dataclass(frozen=True)
class SourceRequest:
    kind: str  # git | swebench | (github, registered by its module)
    target: str  # a path, URL, file or repository name
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def describe(self) -> str:
        return f"{self.kind}:{self.target}"


Miner = Callable[[SourceRequest, Config], MineResult]
StateOf = Callable[[SourceRequest, Config], str]


def _mine_git(request: SourceRequest, config: Config) -> MineResult:
    limits = Limits(config.code.max_patch_bytes, config.code.max_files_changed)
    return mine_history(request.target, config.home_path, limits=limits, clone=request.options.get("clone", True),
                        name=request.options.get("name"))


def _git_state(request: SourceRequest, config: Config) -> str:
    if is_url(request.target):
        return request.target  # a clone is mined once; `git fetch` in the mirror and mine again for more
    path = Path(request.target).expanduser().resolve()
    if not path.exists():
        return "missing"
    try:
        return git(path, "rev-parse", "HEAD").strip()
    except SourceError:
        return "unreadable"


def _import_swebench(request: SourceRequest, config: Config) -> MineResult:
    repos_dir = request.options.get("repos_dir")
    return import_instances(Path(request.target), config.home_path, repos_dir=Path(repos_dir) if repos_dir else None,
                            clone=request.options.get("clone", True))


def _file_state(request: SourceRequest, config: Config) -> str:
    path = Path(request.target)
    return sha256_bytes(path.read_bytes()) if path.is_file() else "missing"


MINERS: dict[str, tuple[Miner, StateOf]] = {"git": (_mine_git, _git_state), "swebench": (_import_swebench, _file_state)}


def register_miner(kind: str, miner: Miner, state_of: StateOf) -> None:
    MINERS[kind] = (miner, state_of)


def request_key(request: SourceRequest, config: Config) -> str:
    if request.kind not in MINERS:
        raise SourceError(f"no source named {request.kind!r} (known: {', '.join(MINERS)})")
    state = MINERS[request.kind][1](request, config)
    options = {k: str(v) for k, v in request.options.items()}
    return content_hash(request.kind, request.target, options, state, config.code.max_patch_bytes,
                        config.code.max_files_changed)


def mine(request: SourceRequest, config: Config) -> MineResult:
    """The candidates and discards of one source; a source that cannot be read at all is one discard with the
    reason, so the batch goes on and the funnel shows it."""
    if request.kind not in MINERS:
        raise SourceError(f"no source named {request.kind!r} (known: {', '.join(MINERS)})")
    try:
        return MINERS[request.kind][0](request, config)
    except SourceError as exc:
        return MineResult(discards=[Discard("mine", request.kind, request.target, "source_unavailable",
                                            detail=str(exc))])
