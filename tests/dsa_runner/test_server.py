"""The runner's HTTP server, driven by the real `openai` client over 127.0.0.1 against the real default
model (SmolLM2-135M-Instruct with DSA, loaded once per session)."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.model

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

MODEL = "smollm2-135m-dsa"
CONTEXT = 1024  # the `loaded` engine's (conftest)
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a time zone",
                                      "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """uvicorn in a thread, serving one engine."""

    def __init__(self, engine, info, drain_s: float = 5.0):
        import uvicorn

        from dsa_runner.server import create_app

        self.engine = engine
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(engine, info, served_name=MODEL, drain_s=drain_s)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=drain_s))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)

    def client(self, **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=120, **kw)

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.fixture(scope="session")
def server(loaded):
    engine, info = loaded
    running = RunningServer(engine, info)
    yield running
    running.stop()


def _wait_idle(server, timeout=30) -> dict:
    deadline = time.time() + timeout
    while True:
        h = server.health()
        if h["running_rows"] == 0 and h["waiting_requests"] == 0:
            return h
        assert time.time() < deadline, f"server still busy: {h}"
        time.sleep(0.05)


def test_models_lists_the_served_model(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_completion_answers_with_usage(server):
    r = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12, temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_n_samples_share_a_prompt_and_a_seed_reproduces_them(server):
    client = server.client()
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "Name an animal."}], n=4, max_tokens=10,
               temperature=1.0, seed=1234)
    first = client.chat.completions.create(**ask)
    assert sorted(c.index for c in first.choices) == [0, 1, 2, 3]
    texts = [c.message.content for c in first.choices]
    assert all(texts) and len(set(texts)) > 1  # sampled, not four copies
    assert first.usage.prompt_tokens < 100 and first.usage.completion_tokens <= 4 * 10
    again = client.chat.completions.create(**ask)
    assert [c.message.content for c in again.choices] == texts


def test_stop_string_ends_the_choice(server):
    r = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count from 1 to 20, separated by commas."}],
        max_tokens=60, temperature=0, stop=["5"])
    assert "5" not in r.choices[0].message.content and r.choices[0].finish_reason == "stop"


def test_streaming_matches_the_non_streaming_answer(server):
    client = server.client()
    ask = dict(model=MODEL, messages=[{"role": "user", "content": "Say something about the sea."}], max_tokens=16,
               temperature=0)
    whole = client.chat.completions.create(**ask).choices[0].message.content
    stream = client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    first = chunks[0].choices[0].delta
    assert first.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == whole and len(finishes) == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_streaming_n_choices_each_finish(server):
    stream = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi!"}], n=3, max_tokens=8, temperature=0.9,
        seed=7, stream=True)
    finished = {c.choices[0].index for c in stream if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1, 2}


def test_named_tool_choice_gives_a_parsed_tool_call(server):
    r = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=40, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert isinstance(json.loads(call.function.arguments), dict)


def test_required_tool_choice_picks_a_declared_function_and_streams_it(server):
    stream = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What time is it in Tokyo?"}], tools=TOOLS,
        tool_choice="required", max_tokens=40, temperature=0, stream=True)
    calls, reasons, content = [], [], ""
    for chunk in stream:
        delta = chunk.choices[0].delta
        calls += delta.tool_calls or []
        content += delta.content or ""
        reasons.append(chunk.choices[0].finish_reason)
    assert reasons[-1] == "tool_calls" and "<tool_call>" not in content
    assert [c.function.name in ("get_weather", "get_time") for c in calls] == [True]
    assert isinstance(json.loads(calls[0].function.arguments), dict)


def test_tool_results_can_be_sent_back(server):
    r = server.client().chat.completions.create(
        model=MODEL, tools=TOOLS, max_tokens=20, temperature=0,
        messages=[{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": "call_1", "type": "function",
                       "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                  {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}])
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_json_mode_output_parses(server):
    r = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe a cat with its name and age."}], n=2,
        max_tokens=60, temperature=0.8, seed=3, response_format={"type": "json_object"})
    for choice in r.choices:
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content), dict)
        else:  # cut by max_tokens: still a JSON prefix
            assert choice.message.content.lstrip().startswith("{")
    assert any(c.finish_reason == "stop" for c in r.choices)


def test_json_schema_output_follows_the_schema(server):
    jsonschema = pytest.importorskip("jsonschema")
    # every value bounded (no free string), so the object closes well within max_tokens
    schema = {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}, "age": {"type": "integer"},
                                               "indoor": {"type": "boolean"}},
              "required": ["kind", "age", "indoor"], "additionalProperties": False}
    r = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Describe a pet: its kind, age and whether it lives "
                                                           "indoors."}],
        max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "pet", "schema": schema, "strict": True}})
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), schema)


@pytest.mark.parametrize("kwargs, param", [
    ({"n": 0}, "n"),
    ({"temperature": 5}, "temperature"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"max_tokens": -3}, "max_tokens"),
])
def test_bad_requests_are_400_naming_the_field(server, kwargs, param):
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(**ask)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param and err.value.body["type"] == "invalid_request_error"


def test_invalid_json_and_unknown_model_and_path(server):
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    with pytest.raises(openai.NotFoundError) as err:
        server.client().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "model_not_found"
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["code"] == "not_found"


def test_context_overflow_is_a_400_not_a_crash(server):
    client = server.client()
    long_text = "word " * (CONTEXT + 50)
    before = server.health()["prefill_tokens"]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long_text}], max_tokens=5)
    assert err.value.body["code"] == "context_length_exceeded" and err.value.body["param"] == "messages"
    assert f"maximum context length is {CONTEXT} tokens" in err.value.body["message"]
    assert server.health()["prefill_tokens"] == before  # refused before any model work
    with pytest.raises(openai.BadRequestError) as err:  # fits alone, not with the completion
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=CONTEXT)
    assert err.value.body["code"] == "context_length_exceeded"
    # and the server still answers
    assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=3).choices


def test_next_turn_reuses_the_cached_prompt(server):
    """An agent's second turn resends the first: usage counts the first turn's prompt as cached."""
    client = server.client()
    messages = [{"role": "system", "content": "You answer in one short line. Session 4711."},
                {"role": "user", "content": "Name a river in Europe."}]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And one in Africa?"}]
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    usage = [c.usage for c in second if c.usage][0]
    assert usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens
    assert usage.prompt_tokens > first.usage.prompt_tokens
    assert first.usage.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens


def test_concurrent_clients_are_batched(server):
    before = server.health()
    prompts = ["Name a color.", "Name a fruit.", "Name a city.", "Name a planet.", "Name a sport.", "Name a tree."]
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def ask(i):
        try:
            results[i] = server.client().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompts[i]}], max_tokens=16, temperature=0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == len(prompts)
    assert all(r.choices[0].message.content for r in results.values())
    after = server.health()
    tokens = after["generated_tokens"] - before["generated_tokens"]
    steps = after["steps"] - before["steps"]
    assert steps < tokens, f"{steps} decode steps for {tokens} tokens: requests were not decoded together"


def test_disconnects_free_the_rows(server):
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "List the numbers from 1 to 500, one per line."}],
           "max_tokens": 400, "temperature": 0}
    before = server.health()["requests_cancelled"]
    # streaming: read a few chunks, then hang up
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**ask, "stream": True}, timeout=60) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: ") for line in got)
    # not streaming: give up waiting
    with pytest.raises(httpx.ReadTimeout):
        # (0.3 s: the native step makes 400 tokens in ~1.5 s on 2 cores; the request must still be running)
        httpx.post(server.url + "/v1/chat/completions", json=ask, timeout=httpx.Timeout(60, read=0.3))
    health = _wait_idle(server, timeout=20)
    assert health["requests_cancelled"] - before == 2


def test_full_queue_answers_503_and_shutdown_drains(loaded):
    """A second engine on the same model with one row and a queue of one: the third request is refused.
    Then the server is stopped with a request in flight: that request still completes."""
    from dsa_runner.engine import Engine

    model_engine, info = loaded
    _wait_idle_engine(model_engine)
    engine = Engine(model_engine.model, model_engine.tokenizer, max_batch=1, max_queue=1, max_context=CONTEXT)
    small = RunningServer(engine, info, drain_s=30)
    try:
        long_ask = {"model": MODEL, "messages": [{"role": "user", "content": "List the numbers from 1 to 500."}],
                    "max_tokens": 200, "temperature": 0, "stream": True}
        with httpx.stream("POST", small.url + "/v1/chat/completions", json=long_ask, timeout=60) as first:
            deadline = time.time() + 30
            while small.health()["running_rows"] < 1:  # the row is taken
                assert time.time() < deadline
                time.sleep(0.02)
            queued = threading.Thread(target=lambda: small.client().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2))
            queued.start()
            deadline = time.time() + 30
            while small.health()["waiting_requests"] < 1:
                assert time.time() < deadline
                time.sleep(0.02)
            with pytest.raises(openai.APIStatusError) as err:
                small.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                       max_tokens=2)
            assert err.value.status_code == 503 and err.value.body["code"] == "queue_full"
        queued.join(60)
        assert not queued.is_alive()

        # graceful shutdown with a request in flight: it completes, then the engine stops
        done: dict = {}

        def in_flight():
            stream = small.client().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Tell me about the moon."}], max_tokens=24,
                temperature=0, stream=True)
            done["reasons"] = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]

        t = threading.Thread(target=in_flight)
        t.start()
        deadline = time.time() + 30
        while small.health()["running_rows"] < 1:
            assert time.time() < deadline
            time.sleep(0.02)
        small.stop()
        t.join(60)
        assert done.get("reasons") and done["reasons"][0] in ("stop", "length")
        assert not engine._thread.is_alive()
    finally:
        small.stop()


def _wait_idle_engine(engine, timeout=30):
    deadline = time.time() + timeout
    while engine.load()["running_rows"] or engine.load()["waiting_requests"]:
        assert time.time() < deadline
        time.sleep(0.05)
