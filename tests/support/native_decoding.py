"""Decoding a left-padded batch with one of the runner's decoders, for tests that compare decode steps."""

from __future__ import annotations

import torch

from dsa_runner.engine import cache_layer_count, fresh_cache


def int8_default_model():
    """The default model as the C decode step's tests use it: DSA with 4 x 32 indexers, bfloat16, int8
    weights; (model, tokenizer)."""
    from dsa_runner.loading import load_dsa_model
    from dsa_runner.weights import quantize_int8

    torch.manual_seed(0)
    m, tok, _ = load_dsa_model(top_k=2048, index_heads=4, index_head_dim=32, dtype=torch.bfloat16)
    quantize_int8(m)
    return m, tok


def decode_left_padded(m, decoder, prompts: list[list[int]], steps: int, forced: torch.Tensor | None = None):
    """Tokens (B, steps) and logits (B, steps - 1, V) of the prompts decoded together: the model prefills
    them, then `decoder.step` runs steps - 1 times, greedy, or fed `forced` (B, steps: the token going into
    step i is forced[:, i - 1], teacher forcing; the returned tokens are then the fed ones)."""
    S = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (S - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (S - len(p)) + [1] * len(p) for p in prompts])
    cache = fresh_cache(cache_layer_count(m))
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.inference_mode():
        out = m(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                logits_to_keep=1)
        token, pos = out.logits[:, -1].float().argmax(-1), pos[:, -1] + 1
        if forced is not None:
            token = forced[:, 0]
        tokens, logits = [token], []
        for i in range(1, steps):
            mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
            step = decoder.step(token, pos, mask, cache)
            assert step is not None
            token, pos = step.argmax(-1), pos + 1
            if forced is not None:
                token = forced[:, i]
            tokens.append(token)
            logits.append(step)
    return torch.stack(tokens, 1), torch.stack(logits, 1)


def engine_greedy_text(engine, prompt: list[int], max_tokens: int = 6) -> str:
    """The text of one greedy request (end of sequence ignored) run through `engine` on this thread."""
    from dsa_runner.engine import GenerationRequest, SamplingParams

    out = {}

    def collect(events):
        for event in events:
            if hasattr(event, "reason"):
                out["text"] = event.text

    with torch.inference_mode():
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        engine._waiting.append(GenerationRequest(prompt, 1, params, collect))
        engine.run_until_idle()
    return out["text"]
