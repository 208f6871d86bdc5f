"""Next tokens from logits: greedy, temperature + top-p, stop tokens, and JSON-constrained choices.

The draw is an exponential race: argmax_v p(v) / E(v), E ~ Exp(1), which picks v with probability p(v)
and also orders the candidates as a draw without replacement would (the JSON constraint walks that
order until a token fits).

Reproducibility: every sample (row) draws from its own ``torch.Generator``, seeded from the request's
seed and the sample's index (``row_generator``). Its t-th token therefore uses the t-th draw of its own
stream whatever else is in the batch: which other requests run, how many rows a request got at once,
or whether its sibling samples already finished. What can still differ between a request alone and
in a batch is the logits themselves: a batched matrix product may sum in another order than a
single-row one (and the CPU's int8 weight-only path switches to bfloat16 above ``weights.SMALL_BATCH``
rows), so logits may differ in their last bits, or by the int8 rounding across that switch. A sampled
token changes only where two candidates' p/E are within that difference, which is rare over a few tokens;
greedy decoding is exposed the same way at near ties. The prompt's own logits are not exposed: the same
prompt sent again takes the logits its first run left in the prefix cache, so a seeded request repeated
on an idle server draws exactly the same tokens (the server test sends one twice: 4 samples, 10 tokens).
"""

from __future__ import annotations

import hashlib

import torch

from dsa_runner import json_prefix
from dsa_runner.generation import Row


def row_generator(seed: int, index: int, device) -> torch.Generator:
    """The random stream of sample ``index`` of a request with ``seed``: independent of everything else."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") >> 1)


class Sampler:
    """Picks one token per row of the batch."""

    def __init__(self, tokenizer, stop_token_ids: list[int]):
        self.tokenizer = tokenizer
        self.stop_token_ids = stop_token_ids
        self._token_texts: list[str] | None = None
        self._stop_ids_dev: torch.Tensor | None = None

    def sample(self, logits: torch.Tensor, rows: list[Row]) -> tuple[torch.Tensor, list[int]]:
        """One token per row: greedy at temperature 0, else temperature + top-p and the exponential race.
        Returns the tokens as a (B,) long tensor on the device (the next step's input, never copied back
        from the host) and as a list (one device-to-host copy per step: the only synchronisation of a
        decode step)."""
        B = logits.shape[0]
        no_eos = [i for i, r in enumerate(rows) if r.request.params.ignore_eos]
        if no_eos:
            stops = self._stop_ids_tensor(logits.device)
            if len(no_eos) == B:
                logits = logits.index_fill(-1, stops, float("-inf"))
            else:
                logits = logits.clone()
                logits[torch.tensor(no_eos, device=logits.device)[:, None], stops[None]] = float("-inf")
        temps = [r.request.params.temperature for r in rows]
        greedy = all(t == 0 for t in temps)
        json_rows = [i for i, r in enumerate(rows) if r.json_state is not None]
        if greedy:
            scores = logits
        else:
            t = torch.tensor([max(x, 1e-5) for x in temps], device=logits.device)[:, None]
            probs = torch.softmax(logits / t, dim=-1)
            top_ps = [r.request.params.top_p for r in rows]
            nucleus = [i for i, p in enumerate(top_ps) if p < 1.0]
            if nucleus:
                idx = torch.tensor(nucleus, device=logits.device)
                sub = probs[idx]
                sorted_p, order = sub.sort(dim=-1, descending=True)
                limit = torch.tensor([top_ps[i] for i in nucleus], device=logits.device)[:, None]
                sorted_p[(sorted_p.cumsum(-1) - sorted_p) > limit] = 0.0
                probs[idx] = torch.zeros_like(sub).scatter_(-1, order, sorted_p)
            noise = torch.ones_like(probs)
            for i, row in enumerate(rows):  # each row from its own stream: one draw of V numbers per step
                if temps[i] != 0:
                    noise[i].exponential_(generator=row.generator)
            scores = probs / noise
            greedy_rows = [i for i, x in enumerate(temps) if x == 0]
            if greedy_rows:
                gi = torch.tensor(greedy_rows, device=logits.device)
                scores[gi] = logits[gi]
        ids = scores.argmax(-1)
        tokens = ids.tolist()
        if json_rows:
            for i in json_rows:
                tokens[i] = self._json_token(scores[i], rows[i])
            ids = torch.tensor(tokens, dtype=torch.long, device=logits.device)
        return ids, tokens

    def _stop_ids_tensor(self, device) -> torch.Tensor:
        cached = self._stop_ids_dev
        if cached is None or cached.device != torch.device(device):
            cached = self._stop_ids_dev = torch.tensor(self.stop_token_ids, dtype=torch.long, device=device)
        return cached

    def _json_token(self, scores: torch.Tensor, row: Row) -> int:
        """The best-ranked token that keeps the output a prefix of what the JSON constraint accepts."""
        texts = self.token_texts()
        for count in (64, scores.shape[0]):
            top = torch.topk(scores, min(count, scores.shape[0])).indices.tolist()
            for tok in top:
                text = texts[tok] if tok < len(texts) else ""
                if text and "\ufffd" not in text and json_prefix.advance(row.json_state, text) is not None:
                    return tok
        return self.stop_token_ids[0]  # nothing fits (cannot happen with a byte-level vocabulary)

    def token_texts(self) -> list[str]:
        if self._token_texts is None:
            self._token_texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        return self._token_texts
