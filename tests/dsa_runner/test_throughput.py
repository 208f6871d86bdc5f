"""`tasksynth runner bench`: its options, the dense/sparse label of each figure, the llama-server baseline
(`dsa_runner.llama_server`) against a stand-in speaking llama-server's API on loopback, and a whole CPU run
of the benchmark with that stand-in. Set TASKSYNTH_LLAMA_SERVER to a real llama-server binary (built from the
llama-cpp-python sdist's vendored sources) to run the same client against llama.cpp itself."""

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dsa_runner import throughput
from dsa_runner.errors import LlamaServerError
from dsa_runner.llama_server import LlamaServer
from dsa_runner.machine import cpu_description, instruction_set, load_average
from dsa_runner.throughput import BenchConfig, attention_label, sparse_decode_steps

FAKE = Path(__file__).with_name("fake_llama_server.py")
REAL_LLAMA_SERVER = os.environ.get("TASKSYNTH_LLAMA_SERVER")


@pytest.fixture
def fake_binary(tmp_path, monkeypatch):
    """(an executable that runs the stand-in llama-server, a function reading what it recorded)."""
    record = tmp_path / "record.jsonl"
    monkeypatch.setenv("FAKE_LLAMA_RECORD", str(record))
    binary = tmp_path / "llama-server"
    binary.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)

    def recorded() -> list[dict]:
        return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []

    return binary, recorded


# --- options -----------------------------------------------------------------------------------------------


def test_bench_options_reach_the_benchmark(monkeypatch, tmp_path):
    from dsa_runner.server_cli import app

    seen = {}

    def fake_run(cfg, log=print):
        seen["cfg"] = cfg
        return {"figures": "none"}

    monkeypatch.setattr(throughput, "run_benchmark", fake_run)
    monkeypatch.setattr(throughput, "format_report", lambda report, cfg: f"report of {cfg.n} samples")
    out = tmp_path / "figures.json"
    result = CliRunner().invoke(app, ["bench", "--llama-server", "/opt/llama/llama-server", "--n", "4",
                                      "--concurrent", "3", "--long-prompt-tokens", "3000", "--rounds", "3",
                                      "--threads", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.llama, cfg.llama_server, cfg.n, cfg.concurrent, cfg.long_prompt_tokens, cfg.rounds, cfg.threads) == \
        (True, "/opt/llama/llama-server", 4, 3, 3000, 3, 2)
    assert "report of 4 samples" in result.output
    assert json.loads(out.read_text()) == {"figures": "none"}

    result = CliRunner().invoke(app, ["bench", "--no-llama", "--long-prompt-tokens", "0"])
    assert result.exit_code == 0, result.output
    assert seen["cfg"].llama is False and seen["cfg"].long_prompt_tokens == 0 and seen["cfg"].llama_server is None
    assert seen["cfg"].rounds == 2 and seen["cfg"].max_tokens == 128 and seen["cfg"].n == 16

    result = CliRunner().invoke(app, ["bench", "--rounds", "0"])
    assert result.exit_code != 0  # at least one round


def test_llama_server_is_found_on_path_unless_named(tmp_path, monkeypatch, fake_binary):
    binary, _ = fake_binary
    monkeypatch.setenv("PATH", str(binary.parent))
    assert throughput.find_llama_server(None) == str(binary)
    assert throughput.find_llama_server("/elsewhere/llama-server") == "/elsewhere/llama-server"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert throughput.find_llama_server(None) is None


# --- labels ------------------------------------------------------------------------------------------------


def test_a_context_within_top_k_is_labelled_dense():
    # the default short prompt: 40-odd tokens + 128 new ones, far below top-k 2048
    assert sparse_decode_steps(45, 128, 2048) == 0
    assert attention_label("dsa", "trained", 45, 128, 2048) == "dense"
    # the last key within top-k: DSA selects them all
    assert attention_label("dsa", "trained", 2048 - 127, 128, 2048) == "dense"


def test_a_context_above_top_k_is_labelled_sparse_with_its_indexers():
    assert sparse_decode_steps(2560, 128, 2048) == 127
    assert attention_label("dsa", "trained", 2560, 128, 2048) == "sparse, trained indexers"
    assert attention_label("dsa", "untrained", 2560, 128, 2048) == "sparse, untrained indexers"


def test_a_context_that_crosses_top_k_is_labelled_partly_sparse():
    # steps t = 1..127 attend to 2000 + t keys: sparse from t = 49
    assert sparse_decode_steps(2000, 128, 2048) == 79
    assert attention_label("dsa", "trained", 2000, 128, 2048) == "partly sparse (79 of 127 steps), trained indexers"


def test_dense_attention_is_dense_at_any_length():
    assert attention_label("dense", "none", 5000, 128, 2048) == "dense"


def test_machine_description_names_cpu_isa_and_load():
    cpuinfo = ("processor\t: 0\nmodel name\t: Example CPU 9000\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n"
               "processor\t: 1\nmodel name\t: Example CPU 9000\nflags\t\t: fpu\n")
    text = cpu_description(cpuinfo)
    assert text.startswith("Example CPU 9000;") and "avx512;" in text
    assert text.endswith("flags: avx2 avx512_vnni avx512f fma")
    assert instruction_set({"avx2", "fma"}) == "avx2" and instruction_set({"sse2"}) == "baseline"
    assert len(load_average().split()) == 3


# --- the llama-server client, against the stand-in --------------------------------------------------------


def test_llama_server_starts_waits_for_the_model_and_completes_token_ids(fake_binary, tmp_path):
    binary, recorded = fake_binary
    with LlamaServer(binary, tmp_path / "model.gguf", threads=2, slots=4, context_per_slot=512) as server:
        one = server.complete([1, 2, 3], 5, temperature=0.0, seed=7)
        four = server.complete([1, 2, 3], 6, temperature=0.8, n=4)
    assert len(one) == 1 and one[0].completion_tokens == 5 and one[0].prompt_tokens == 3
    assert len(four) == 4 and all(c.completion_tokens == 6 for c in four)
    argv = recorded()[0]["argv"]
    assert argv[argv.index("-np") + 1] == "4" and "-cb" in argv and argv[argv.index("-c") + 1] == "2048"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("-t") + 1] == argv[argv.index("-tb") + 1] == "2"
    first, second = (r["request"] for r in recorded()[1:])
    assert first["prompt"] == [1, 2, 3] and first["n_predict"] == 5 and first["ignore_eos"] is True
    assert first["seed"] == 7 and first["cache_prompt"] is False and "n_cmpl" not in first
    assert (first["top_k"], first["top_p"], first["min_p"]) == (0, 1.0, 0.0)  # the whole distribution, as ours
    assert second["n_cmpl"] == 4 and "seed" not in second
    assert server.proc.poll() is not None  # stopped


def test_llama_server_refuses_more_samples_than_slots(fake_binary, tmp_path):
    binary, _ = fake_binary
    with LlamaServer(binary, tmp_path / "model.gguf", threads=1, slots=2) as server:
        with pytest.raises(LlamaServerError, match="n_cmpl=3 needs 3 slots"):
            server.complete([1], 4, n=3)


def test_llama_server_errors_are_reported_with_its_message_or_exit(fake_binary, tmp_path):
    binary, _ = fake_binary
    with LlamaServer(binary, tmp_path / "model.gguf", threads=1) as server:
        with pytest.raises(LlamaServerError, match="400: \"prompt\" must be token ids"):
            server.complete(["text"], 4)
        with pytest.raises(LlamaServerError, match="llama-server exit status 3"):
            server.complete([666], 4)


def test_llama_server_that_cannot_start_says_so(tmp_path):
    broken = tmp_path / "llama-server"
    broken.write_text("#!/bin/sh\necho 'error: unknown argument: -cb' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(LlamaServerError, match="exit status 1.*unknown argument"):
        with LlamaServer(broken, tmp_path / "model.gguf", threads=1):
            pass
    with pytest.raises(LlamaServerError, match="not an executable"):
        LlamaServer(tmp_path / "missing", tmp_path / "model.gguf", threads=1).start()


# --- a whole CPU run, the stand-in as the baseline ---------------------------------------------------------


def test_cpu_benchmark_batches_the_baseline_as_it_batches_ours(fake_binary, monkeypatch):
    binary, recorded = fake_binary
    monkeypatch.setenv("FAKE_LLAMA_CRASH_WITHOUT", "--no-repack")  # its first start crashes
    # float32 without quantisation: what is served is the reference, so no second model is loaded to compare
    cfg = BenchConfig(max_tokens=4, n=3, concurrent=2, threads=1, long_prompt_tokens=0, rounds=2,
                      llama_server=str(binary), quantize="none", dtype="float32")
    report = throughput.run_benchmark(cfg, log=lambda line: None)
    rows = report["measures"]
    assert list(rows) == ["single", "n3", "concurrent2"]
    for row in rows.values():
        assert row["attention"] == "dense"  # a short prompt: no sparse step
        assert len(row["rounds"]["dsa_runner"]) == len(row["rounds"]["llama_server"]) == 2
        assert row["dsa_runner"]["tokens"] == row["llama_server"]["tokens"] == row["sequences"] * 4
    # one server per number of sequences decoded together, its slots that number
    starts = [r["argv"] for r in recorded() if "argv" in r]
    assert "--no-repack" not in starts[0] and all("--no-repack" in argv for argv in starts[1:])
    assert sorted(int(argv[argv.index("-np") + 1]) for argv in starts[1:]) == [1, 2, 3]
    assert report["llama_server"]["notes"] == ["crashed with its default weight layouts (llama-server killed by "
                                               "SIGSEGV); started again with --no-repack"]
    requests = [r["request"] for r in recorded() if "request" in r]
    assert sum(1 for r in requests if r.get("n_cmpl") == 3) == 2  # n samples: one n_cmpl request a round
    assert all(r["prompt"] == requests[0]["prompt"] for r in requests)  # the same token ids everywhere
    assert "greedy_agreement_tokens" in report and "accuracy_vs_float32" not in report
    text = throughput.format_report(report, cfg)
    assert "llama-server tok/s" in text and "load average before" in text and report["cpu"] in text
    assert "started again with --no-repack" in text
    assert text.count(" dense ") >= 3


# --- the real llama-server ---------------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_LLAMA_SERVER, reason="set TASKSYNTH_LLAMA_SERVER to a llama-server binary")
def test_real_llama_server_batches_samples_of_one_prompt():
    from dsa_runner.loading import default_model_path

    # --no-repack: the API is what is tested, not llama.cpp's AMX kernels (which crash where AMX is listed but
    # not granted, as in some VMs)
    with LlamaServer(REAL_LLAMA_SERVER, default_model_path(), threads=2, slots=3, context_per_slot=256,
                     extra_args=["--no-repack"]) as server:
        prompt = [1, 504, 3245, 314, 253, 1345]
        greedy = server.complete(prompt, 12)
        again = server.complete(prompt, 12)
        samples = server.complete(prompt, 12, temperature=0.8, n=3)
    assert greedy[0].tokens == again[0].tokens and greedy[0].completion_tokens == 12
    assert greedy[0].prompt_tokens == again[0].prompt_tokens == len(prompt)  # evaluated afresh: no prompt cache
    assert [c.completion_tokens for c in samples] == [12, 12, 12]
