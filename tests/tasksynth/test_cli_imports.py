"""The CLI's fixed cost: a command that never calls a model does not pay for the model client's import.

`bench/cli_latency.py` measures the whole command; this guards the one cost that crept in unnoticed before
(openai's package, about half a second, pulled in by the code pipeline through the environment agent)."""

import subprocess
import sys


def test_code_pipeline_and_cli_load_without_the_model_client():
    probe = ("import sys\n"
             "import tasksynth.cli.main, flows.code, flows.search, flows.general, flows.notebook\n"
             "print(sorted(m for m in ('openai',) if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_code_command_loads_neither_arrow_nor_the_build_stage_until_it_needs_them():
    probe = ("import sys\n"
             "import tasksynth.cli.main, flows.code\n"
             "print(sorted(m for m in ('pyarrow', 'numpy', 'pandas', 'fastapi', 'envbuilder.build',\n"
             "                         'envbuilder.validation', 'tasksynth.export') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_endpoint_still_builds_its_client_on_first_use():
    probe = ("import sys\n"
             "from agent.endpoint import describe_error, retryable\n"
             "assert 'openai' not in sys.modules\n"
             "import httpx, openai\n"
             "error = openai.APIConnectionError(request=httpx.Request('GET', 'http://127.0.0.1:1/'))\n"
             "print(retryable(error), describe_error(openai.APITimeoutError(request=error.request)))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True timeout: the endpoint did not answer in time"
