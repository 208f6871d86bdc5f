"""The typer app the project CLI mounts as `tasksynth runner`."""

from typer.testing import CliRunner

from dsa_runner.cli import app


def test_cli_lists_its_commands_with_help():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "warmup" in result.output and "eval-indexer" in result.output
    for command in ("warmup", "eval-indexer"):
        sub = CliRunner().invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and "--model" in sub.output and "--corpus" in sub.output


def test_cli_reports_a_missing_model_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["eval-indexer", "--model", str(tmp_path / "nope.gguf")])
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_serve_options_come_from_one_definition():
    """`runner serve` and `python -m dsa_runner` are one command generated from ServerConfig's fields."""
    import dataclasses

    from dsa_runner.options import ServerConfig
    from dsa_runner.server_cli import app as serve_app

    help_text = CliRunner().invoke(serve_app, ["serve", "--help"], terminal_width=200).output
    for f in dataclasses.fields(ServerConfig):
        assert "--" + f.name.replace("_", "-") in help_text, f.name
    assert "--api-key-env" in help_text and "--untrained-indexers" in help_text


def test_serve_warns_when_reachable_without_a_key_and_never_logs_the_key(tmp_path, caplog):
    """Both checks run before the model loads (a missing model then stops the command)."""
    from dsa_runner.server_cli import app as serve_app

    missing = str(tmp_path / "nope.gguf")
    open_ = CliRunner().invoke(serve_app, ["serve", "--host", "0.0.0.0", "--model", missing])
    assert open_.exit_code == 1 and "does not exist" in open_.output
    assert "no API key is set" in caplog.text
    caplog.clear()

    key = "sk-never-logged-93a1"
    keyed = CliRunner().invoke(serve_app, ["serve", "--host", "0.0.0.0", "--model", missing,
                                           "--api-key-env", "RUNNER_TEST_KEY"], env={"RUNNER_TEST_KEY": key})
    assert keyed.exit_code == 1 and "no API key is set" not in caplog.text
    assert key not in keyed.output and key not in caplog.text

    unset = CliRunner().invoke(serve_app, ["serve", "--model", missing, "--api-key-env", "RUNNER_TEST_UNSET"],
                               env={"RUNNER_TEST_UNSET": ""})
    assert unset.exit_code == 1 and "RUNNER_TEST_UNSET" in unset.output and "not set" in unset.output


def test_server_config_repr_hides_the_key():
    from dsa_runner.options import ServerConfig

    assert "sk-secret" not in repr(ServerConfig(api_key="sk-secret"))


def test_the_flows_runner_command_parses_and_passes_the_key_by_name(tmp_path, monkeypatch, caplog):
    """What flows start (`flows.runner_process.runner_command`) is a valid `runner serve` command line;
    the key travels as the variable's name, never as its value."""
    from flows.runner_process import runner_command
    from tasksynth.config import load_config

    from dsa_runner.server_cli import app as serve_app

    monkeypatch.setenv("TASKSYNTH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={"TASKSYNTH_RUNNER__API_KEY_ENV": "RUNNER_FLOW_KEY",
                                  "TASKSYNTH_RUNNER__MODEL": str(tmp_path / "nope.gguf")})
    command = runner_command(config, 8123, "smollm2-135m-dsa")
    args = command[command.index("serve"):]
    assert args[args.index("--api-key-env") + 1] == "RUNNER_FLOW_KEY"
    result = CliRunner().invoke(serve_app, args, env={"RUNNER_FLOW_KEY": "sk-flow-secret"})
    assert result.exit_code == 1 and "does not exist" in result.output  # parsed; stopped at the model
    assert "sk-flow-secret" not in result.output + caplog.text
