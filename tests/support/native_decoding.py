"""Decoding a left-padded batch with one of the runner's decoders, for tests that compare decode steps."""

from __future__ import annotations

import torch

from dsa_runner.engine import cache_layer_count, fresh_cache


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
