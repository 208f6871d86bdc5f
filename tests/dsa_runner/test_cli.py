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
