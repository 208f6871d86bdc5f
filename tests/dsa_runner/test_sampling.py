"""A seeded request draws the same tokens whatever else shares its batch (sampling.row_generator)."""

from __future__ import annotations

import pytest

from dsa_runner.engine import Engine, Finished, GenerationRequest, SamplingParams

pytestmark = pytest.mark.model


def _texts(engine: Engine, requests: list[tuple[list[int], int, SamplingParams]]) -> list[dict[int, str]]:
    """Queues the requests together, runs the scheduler until idle; each request's {choice: text}."""
    results: list[dict[int, str]] = [{} for _ in requests]
    for slot, (prompt, n, params) in zip(results, requests):
        def collect(events, slot=slot):
            for ev in events:
                if isinstance(ev, Finished):
                    slot[ev.index] = ev.text
        engine._waiting.append(GenerationRequest(prompt, n, params, collect))
    engine.run_until_idle()
    return results


def test_a_seeded_request_gives_the_same_tokens_alone_or_batched(loaded):
    """Alone, both samples of A start together; batched behind B (max_batch 3), A's second sample only
    gets a row when B finishes, many steps later. Its draws must not shift (temperature 1, a few tokens:
    logits of batched and single-row steps differ at most in their last bits, see sampling)."""
    served, _ = loaded
    engine = Engine(served.model, served.tokenizer, max_batch=3, max_context=1024)
    tok = served.tokenizer
    prompt_a = tok("Once upon a time, in a small village,", add_special_tokens=False)["input_ids"]
    prompt_b = tok("The list of prime numbers begins", add_special_tokens=False)["input_ids"]
    a = SamplingParams(max_tokens=8, temperature=1.0, seed=7, ignore_eos=True)
    b = SamplingParams(max_tokens=3, temperature=1.0, seed=99, ignore_eos=True)

    [alone] = _texts(engine, [(prompt_a, 2, a)])
    _, batched = _texts(engine, [(prompt_b, 2, b), (prompt_a, 2, a)])
    assert alone[0] != alone[1]  # two samples, two streams
    assert batched == alone
