"""What the server refuses or hides, over real HTTP on 127.0.0.1, in front of a stand-in engine (no model:
these checks happen before any generation): limits, the API key, 500s without internals, /v1/models
without local paths, template and tokenizer work off the event loop, the exposure warning."""

from __future__ import annotations

import logging
import socket
import threading
import time

import httpx
import pytest

pytest.importorskip("uvicorn")

from dsa_runner.generation import Finished, RequestDone, RequestFailed  # noqa: E402
from dsa_runner.loading import ModelInfo  # noqa: E402
from dsa_runner.protocol import Limits  # noqa: E402
from dsa_runner.server import create_app, exposure_warning  # noqa: E402

MODEL = "tiny"
KEY = "sk-test-4f1c9e0d2b"
PRIVATE_PATH = "/home/someone/models/secret-model.gguf"


class WordTokenizer:
    """A chat template (role: content lines) and one token per word; records the threads that use it."""

    chat_template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    eos_token_id = 0

    def __init__(self):
        self.threads: set[int] = set()

    def __deepcopy__(self, memo):
        return self  # the server's copy records into the same set

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True, **kwargs):
        self.threads.add(threading.get_ident())
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def __call__(self, text, add_special_tokens=False):
        self.threads.add(threading.get_ident())
        return {"input_ids": list(range(len(text.split())))}


class StandInEngine:
    """Answers each request at once with '{}' per choice; `fail` makes it fail (or raise) instead."""

    def __init__(self):
        self.tokenizer = WordTokenizer()
        self.max_context = 4096
        self._thread = None
        self.fail: str | None = None  # None | "event" | "raise"
        self.submit_threads: set[int] = set()

    def start(self):
        self._thread = threading.current_thread()

    def shutdown(self, drain_s=0.0):
        pass

    def load(self):
        return {"running_rows": 0, "waiting_requests": 0}

    def submit(self, gen):
        self.submit_threads.add(threading.get_ident())
        if self.fail == "raise":
            raise RuntimeError(f"cannot mmap {PRIVATE_PATH}")
        if self.fail == "event":
            gen.on_events([RequestFailed(f"generation failed: RuntimeError: {PRIVATE_PATH}")])
            return
        gen.on_events([Finished(i, "stop", "{}", 1) for i in range(gen.n)]
                      + [RequestDone(len(gen.prompt_ids), gen.n)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, engine, **app_kwargs):
        import uvicorn

        info = ModelInfo("secret-model", PRIVATE_PATH, "cpu", "bfloat16", 2048, 8, "/home/someone/idx.safetensors",
                         "dsa", model_hash="0123abcd")
        self.url = f"http://127.0.0.1:{_free_port()}"
        app = create_app(engine, info, served_name=MODEL, drain_s=1, **app_kwargs)
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)

    def post(self, body=None, **kw):
        return httpx.post(self.url + "/v1/chat/completions", json=body, timeout=30, **kw)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


LIMITS = Limits(max_body_bytes=20_000, max_messages=4, max_message_chars=1000, max_tools=2, max_n=8,
                default_max_tokens=100, max_total_tokens=400)


@pytest.fixture(scope="module")
def engine():
    return StandInEngine()


@pytest.fixture(scope="module")
def served(engine):
    running = Served(engine, limits=LIMITS)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def keyed():
    running = Served(StandInEngine(), api_key=KEY)
    yield running
    running.stop()


def _ask(**extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize("body, param, code, limit", [
    (_ask(messages=[{"role": "user", "content": "x"}] * 5), "messages", "too_many_messages", "4"),
    (_ask(messages=[{"role": "user", "content": "x" * 1001}]), "messages[0].content", "message_too_long", "1000"),
    (_ask(tools=[TOOL] * 3), "tools", "too_many_tools", "2"),
    (_ask(n=9), "n", None, "8"),
    (_ask(n=5, max_tokens=100), "max_tokens", "too_many_tokens", "400"),
    (_ask(n=5), "n", "too_many_tokens", "400"),  # n x the default max_tokens (100)
], ids=["messages", "message-length", "tools", "n", "n-x-max-tokens", "n-x-default-max-tokens"])
def test_each_limit_is_a_400_naming_it(served, body, param, code, limit):
    r = served.post(body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] == code
    assert limit in error["message"] and "limit" in error["message"]


def test_a_body_over_the_limit_is_refused_declared_or_streamed(served):
    big = _ask(messages=[{"role": "user", "content": "x" * 900}] * 30)
    r = served.post(big)
    assert r.status_code == 400 and r.json()["error"]["code"] == "request_too_large"
    assert "20000 bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the server counts what arrives
        for _ in range(30):
            yield b" " * 1000
    r = httpx.post(served.url + "/v1/chat/completions", content=chunks(), timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "request_too_large"


def test_without_max_tokens_the_default_cap_applies_and_within_limits_it_answers(served):
    r = served.post(_ask(n=4))
    assert r.status_code == 200, r.text
    assert [c["message"]["content"] for c in r.json()["choices"]] == ["{}"] * 4


def test_template_and_tokenizer_run_off_the_event_loop(served, engine):
    engine.tokenizer.threads.clear()
    assert served.post(_ask()).status_code == 200
    assert engine.tokenizer.threads and engine.submit_threads  # submit runs on the loop's thread
    assert not engine.tokenizer.threads & engine.submit_threads


@pytest.mark.parametrize("failure", ["event", "raise"])
def test_a_500_names_a_request_id_and_no_internals(served, engine, failure, caplog):
    engine.fail = failure
    try:
        with caplog.at_level(logging.ERROR, logger="dsa_runner.server"):
            r = served.post(_ask())
    finally:
        engine.fail = None
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "server_error"
    assert PRIVATE_PATH not in r.text and "RuntimeError" not in r.text
    request_id = r.headers["x-request-id"]
    assert request_id in error["message"]
    assert any(request_id in rec.getMessage() for rec in caplog.records)  # the details are in the log


def test_models_lists_no_local_path(served):
    r = httpx.get(served.url + "/v1/models", timeout=10)
    assert r.status_code == 200
    assert "/home/someone" not in r.text
    meta = r.json()["data"][0]["meta"]
    assert meta["indexers"] == "trained" and meta["model_hash"] == "0123abcd"


def test_the_api_key_is_enforced_with_the_openai_error_shape(keyed):
    openai = pytest.importorskip("openai")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for r in (keyed.post(_ask(), headers=headers), httpx.get(keyed.url + "/v1/models", headers=headers)):
            assert r.status_code == 401
            assert r.json() == {"error": {"message": r.json()["error"]["message"], "type": "invalid_request_error",
                                          "param": None, "code": "invalid_api_key"}}
            assert KEY not in r.text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY, max_retries=0)
    assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}]).choices
    assert httpx.get(keyed.url + "/health", timeout=10).status_code == 200  # liveness needs no key


def test_exposure_warning_only_for_a_reachable_server_without_a_key():
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("localhost", None) is None
    assert exposure_warning("::1", None) is None
    assert exposure_warning("0.0.0.0", KEY) is None
    warning = exposure_warning("0.0.0.0", None)
    assert warning and "API key" in warning and "0.0.0.0" in warning
