"""The `tasksynth` command as a user runs it: a real process, real exit codes, real output."""

import json

import pytest

GROUPS = ["code", "search", "general", "runner", "export", "sql", "flows", "doctor", "demo", "config", "images"]


@pytest.fixture
def made_store(config):
    """A store file that exists and is closed (`tasksynth sql` refuses a missing one, and opens read-only)."""
    from tasksynth.store import open_store

    open_store(config).close()
    return config.store_path




@pytest.mark.parametrize("group", GROUPS)
def test_every_group_answers_help(group, home, tmp_path, tasksynth):
    result = tasksynth(group, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage: tasksynth" in result.stdout
    assert len(result.stdout.splitlines()) > 4


def test_sql_json(made_store, tmp_path, tasksynth):
    result = tasksynth("sql", "--json", "select 1 as one", cwd=tmp_path, check=True)
    assert json.loads(result.stdout) == [{"one": 1}]
    listed = tasksynth("sql", "--json", "select [1, 2] as xs", cwd=tmp_path, check=True)
    assert json.loads(listed.stdout) == [{"xs": [1, 2]}]


def test_sql_table_output(made_store, tmp_path, tasksynth):
    result = tasksynth("sql", "select 42 as answer", cwd=tmp_path, check=True)
    assert "answer" in result.stdout and "42" in result.stdout and "1 row" in result.stdout


def test_errors_are_one_line_and_exit_non_zero(made_store, tmp_path, tasksynth):
    result = tasksynth("sql", "select * from no_such_table", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: query failed:")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    debug = tasksynth("--debug", "sql", "select * from no_such_table", cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_bad_config_names_the_key(home, tmp_path, tasksynth):
    (tmp_path / "tasksynth.toml").write_text("[store]\npaht = 'x'\n")
    result = tasksynth("config", "show", cwd=tmp_path)
    assert result.returncode == 1
    assert "unknown config key 'store.paht'" in result.stderr


def test_config_show_masks_and_reflects_environment(home, tmp_path, tasksynth):
    result = tasksynth("config", "show", "--json", cwd=tmp_path,
                       env={"TASKSYNTH_DOCKER__CPUS": "3", "GITHUB_TOKEN": "ghp_do_not_print"}, check=True)
    shown = json.loads(result.stdout)
    assert shown["docker"]["cpus"] == 3.0
    assert shown["home"] == str(home.resolve())
    assert "ghp_do_not_print" not in result.stdout


def test_export_cli_writes_manifest(home, tmp_path, tasksynth):
    out = tmp_path / "export"
    result = tasksynth("export", str(out), "--kind", "code", cwd=tmp_path, check=True)
    assert "exported 0 tasks" in result.stdout
    assert json.loads((out / "manifest.json").read_text())["totals"] == {"code": 0}
    again = tasksynth("export", str(out), cwd=tmp_path)
    assert again.returncode == 1 and "--overwrite" in again.stderr


def test_unknown_flow_is_a_clear_error(home, tmp_path, tasksynth):
    result = tasksynth("flows", "run", "nope", cwd=tmp_path)
    assert result.returncode == 1 and "no flow named 'nope'" in result.stderr
