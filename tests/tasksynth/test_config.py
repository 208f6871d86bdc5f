import pytest

from tasksynth.config import load_config
from tasksynth.errors import ConfigError


def test_defaults_point_every_role_at_the_bundled_runner(home):
    config = load_config()
    assert config.store_path == home.resolve() / "tasksynth.duckdb"
    assert config.role("question_builder").base_url == "http://127.0.0.1:8000/v1"


def test_file_then_environment_override(tmp_path, home):
    (tmp_path / "tasksynth.toml").write_text(
        '[docker]\nmax_containers = 3\nmemory = "4g"\n[agents.answerer]\nmodel = "deepseek-chat"\n'
        'api_key_env = "DEEPSEEK_API_KEY"\n')
    config = load_config(environ={"TASKSYNTH_HOME": str(home), "TASKSYNTH_DOCKER__MAX_CONTAINERS": "5",
                                  "TASKSYNTH_AGENTS__ANSWERER__TEMPERATURE": "0.2"})
    assert config.docker.max_containers == 5
    assert config.docker.memory == "4g"
    assert config.role("answerer").model == "deepseek-chat"
    assert config.role("answerer").temperature == 0.2


def test_unknown_key_is_named(tmp_path, home):
    (tmp_path / "tasksynth.toml").write_text("[docker]\nmax_contaners = 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'docker\.max_contaners'"):
        load_config()


@pytest.mark.parametrize("text, key", [
    ("[docker]\nmax_containers = 'many'\n", "docker.max_containers"),
    ("[flows]\ntask_runner = 'ray'\n", "flows.task_runner"),
    ("[agents.x]\ncontext_strategy = 'forget'\n", "agents.x.context_strategy"),
    ("[flows.schedules]\ncode = 'hourly'\n", "flows.schedules.code"),
])
def test_bad_value_is_named(tmp_path, home, text, key):
    (tmp_path / "tasksynth.toml").write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config()


def test_secrets_are_masked_and_never_values(home, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_supersecret")
    shown = load_config().to_dict(mask_secrets=True)
    assert "ghp_supersecret" not in repr(shown)
    assert shown["github"]["token_env"] == "GITHUB_TOKEN"
