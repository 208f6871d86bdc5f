"""Prefect's client would send usage events to a third-party service; a command of ours never lets it."""

import os
import subprocess
import sys


def test_prepare_prefect_turns_the_client_telemetry_off_before_prefect_is_imported(tmp_path):
    probe = ("import os, sys\n"
             "from tasksynth.config import load_config\n"
             "from flows.runtime import prepare_prefect\n"
             f"config = load_config(environ={{'TASKSYNTH_HOME': {str(tmp_path / 'home')!r}}})\n"
             "config.home_path.mkdir(parents=True)\n"
             "assert 'prefect' not in sys.modules\n"
             "os.environ['PREFECT_API_URL'] = 'http://127.0.0.1:9/api'  # a server of the user's: none started\n"
             "prepare_prefect(config)\n"
             "from prefect._internal.analytics.enabled import is_telemetry_enabled\n"
             "print(os.environ['DO_NOT_TRACK'], is_telemetry_enabled())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DO_NOT_TRACK", "CI", "PREFECT_API_URL")}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "False"]
