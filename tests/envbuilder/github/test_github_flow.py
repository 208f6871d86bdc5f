"""The Prefect flow over a list of repositories, as `tasksynth code mine --github-list` runs it; and the token
stays out of every log line, row, blob, cache file, export and Prefect record."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest
import zstandard
from conftest import TOKEN
from rich.console import Console
from scenarios import EXPECTED, bulk_repo, widgets_repo

from envbuilder.sources.github.client import GithubError
from envbuilder.sources.github.miner import read_repo_list
from tasksynth.cli.github_mining import mine_github
from tasksynth.store import open_store

SECONDARY = {"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}


def _files_containing(root: Path, needle: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".zst":
            data = zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 28)
        if needle in data:
            found.append(str(path))
    return found


def test_flow_mines_a_list_in_parallel_resumably_and_never_leaks_the_token(gh_config, fake, capsys, tmp_path):
    widgets_repo(fake)
    bulk_repo(fake, "acme", "gadgets", 60, seed=3)
    listing = tmp_path / "repos.txt"
    listing.write_text("# repositories to mine\nacme/widgets\nhttps://github.com/acme/gadgets.git  # by URL\n"
                       "acme/missing\n")
    fake.fail(r"^/graphql$", 502)  # GitHub's flaky gateway: retried
    fake.fail(r"/issues/2$", 403, headers={"Retry-After": "1"}, body=SECONDARY)  # waited out, 1 s
    import flows.github  # noqa: F401 - Prefect sets up its logging on import; ours goes on top of it

    log_text = io.StringIO()
    handler = logging.StreamHandler(log_text)
    handler.setLevel(logging.DEBUG)
    watched = [logging.getLogger(name) for name in ("", "httpx", "httpcore", "envbuilder", "flows")]
    levels = [(logger, logger.level) for logger in watched]
    for logger in watched:
        logger.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    screen = io.StringIO()
    gh_config.github.page_size = 25

    summary = mine_github(gh_config, read_repo_list(listing), console=Console(file=screen, width=160))

    reports = {r["repo"]: r for r in summary["repos"]}
    assert list(reports) == ["acme/widgets", "acme/gadgets", "acme/missing"]
    assert reports["acme/widgets"]["candidates"] == 3 and reports["acme/widgets"]["finished"]
    assert reports["acme/gadgets"]["examined"] == 60 and reports["acme/gadgets"]["pages"] == 3
    assert "Could not resolve to a Repository" in reports["acme/missing"]["error"]
    assert summary["requests"]["rate_limit_waits"] >= 1 and summary["requests"]["retries"] >= 1
    with open_store(gh_config) as store:
        run = store.query("SELECT status, summary FROM flow_runs WHERE flow = 'github'")[0]
        by_repo = {r["repo"]: r["n"] for r in store.query("SELECT repo, count(*) AS n FROM github_pulls GROUP BY repo")}
        widgets = {r["number"]: r["reason"] for r in store.query(
            "SELECT number, reason FROM github_pulls WHERE repo = 'acme/widgets'")}
    assert run["status"] == "completed" and run["summary"]["candidates"] == summary["candidates"]
    assert by_repo == {"acme/widgets": len(EXPECTED), "acme/gadgets": 60} and widgets == EXPECTED
    printed = screen.getvalue()
    assert "acme/widgets: 14 examined, 3 candidates" in printed and "acme/missing:" in printed

    again = mine_github(gh_config, ["acme/widgets", "acme/gadgets"], console=Console(file=io.StringIO()))
    assert again["examined"] == 0 and again["candidates"] == 0  # mining twice adds nothing

    # The token: nowhere in logs, console, store rows, store file, blobs, the HTTP cache or Prefect's database.
    out, err = capsys.readouterr()
    logging.getLogger().removeHandler(handler)
    for logger, level in levels:
        logger.setLevel(level)
    logged = log_text.getvalue()
    assert "HTTP Request: POST" in logged and "send_request_headers" in logged  # httpx and httpcore at DEBUG
    assert "secondary rate limit" in logged  # our own warning when waiting
    for text in (logged, printed, out, err, repr(summary)):
        assert TOKEN not in text
    with open_store(gh_config) as store:
        columns = store.query("SELECT table_name AS t, column_name AS c FROM information_schema.columns "
                              "WHERE data_type IN ('VARCHAR', 'JSON') OR data_type LIKE '%[]'")
        for col in columns:
            hits = store.query(f'SELECT count(*) AS n FROM "{col["t"]}" WHERE CAST("{col["c"]}" AS VARCHAR) LIKE ?',
                               [f"%{TOKEN}%"])
            assert hits[0]["n"] == 0, f"{col['t']}.{col['c']} holds the token"
    assert list((gh_config.home_path / "cache" / "github").rglob("*.zst"))  # the cache was written...
    assert _files_containing(gh_config.home_path, TOKEN.encode()) == []  # ...and nothing in the home has it
    prefect_home = Path(os.environ["PREFECT_HOME"])
    assert _files_containing(prefect_home, TOKEN.encode()) == []
    from tasksynth.export import export_tasks

    with open_store(gh_config) as store:
        export_tasks(store, tmp_path / "export", include_all=True)
    assert (tmp_path / "export" / "manifest.json").is_file()
    assert _files_containing(tmp_path / "export", TOKEN.encode()) == []


def test_repo_list_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "repos.txt"
    bad.write_text("acme/widgets\nnot-a-repo\n")
    with pytest.raises(GithubError, match="repos.txt:2"):
        read_repo_list(bad)
    with pytest.raises(GithubError, match="no such file"):
        read_repo_list(tmp_path / "absent.txt")


def test_cli_mines_a_list_of_repositories_with_a_token(gh_config, fake, tasksynth, tmp_path):
    widgets_repo(fake)
    bulk_repo(fake, "acme", "gadgets", 12, seed=5)
    (tmp_path / "repos.txt").write_text("acme/gadgets\n")
    env = {"TASKSYNTH_HOME": str(gh_config.home_path), "TASKSYNTH_GITHUB__API_URL": fake.url, "GITHUB_TOKEN": TOKEN}
    help_text = tasksynth("code", "mine", "--help", cwd=tmp_path, env=env, check=True).stdout
    assert "--github" in help_text and "--github-list" in help_text and "--since" in help_text
    result = tasksynth("code", "mine", "--github", "acme/widgets", "--github-list", "repos.txt", "--limit", "5",
                       cwd=tmp_path, env=env, check=True)
    assert "acme/widgets: 5 examined" in result.stdout and "acme/gadgets: 5 examined" in result.stdout
    assert "scan continues next run" in result.stdout
    assert TOKEN not in result.stdout + result.stderr
    again = tasksynth("code", "mine", "--github", "acme/widgets", cwd=tmp_path, env=env, check=True)
    assert "acme/widgets: 9 examined" in again.stdout and "scan finished" in again.stdout
