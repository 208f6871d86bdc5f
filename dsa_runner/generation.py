"""What the engine is asked for and what it answers: requests, their sampling settings, their rows, events.

A request is one prompt and ``n`` samples; each sample decodes as one ``Row`` of the running batch.
Results go back through a callback per request (``on_events``) that receives lists of events, ending
with ``RequestDone`` or ``RequestFailed``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import torch

from dsa_runner.detokenizer import Detokenizer
from dsa_runner.errors import DSARunnerError


class EngineError(DSARunnerError):
    """The engine cannot take a request (closed, overloaded) or failed while running it."""


class QueueFull(EngineError):
    """More requests are waiting than ``max_queue`` allows."""


class EngineClosed(EngineError):
    """The engine is shutting down."""


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # constrain the output to JSON: the json_prefix state to start from (json_prefix.INITIAL: one
    # object; json_schema.initial_state(...): an object of a schema); the choice finishes when the
    # object closes. None: free text.
    json_state: tuple | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_tokens


@dataclass
class TextDelta:
    index: int  # choice index
    text: str


@dataclass
class Finished:
    index: int
    reason: str  # "stop" | "length" | "cancelled"
    text: str  # the whole output of this choice (stop string excluded)
    completion_tokens: int


@dataclass
class RequestDone:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache


@dataclass
class RequestFailed:
    message: str  # for the client: no internals (the engine logs those)


Event = TextDelta | Finished | RequestDone | RequestFailed

_ids = itertools.count()


@dataclass(eq=False)
class GenerationRequest:
    """One prompt, ``n`` samples. ``on_events`` is called from the engine thread with lists of events,
    ending with RequestDone or RequestFailed."""

    prompt_ids: list[int]
    n: int
    params: SamplingParams
    on_events: Callable[[list[Event]], None]
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: bool = False
    # engine-side state
    admitted: int = 0  # samples that got a row so far
    finished: int = 0
    completion_tokens: int = 0
    seed: int | None = None  # params.seed, or a random one drawn at prefill; rows derive theirs from it
    prefill: tuple | None = field(default=None, repr=False)  # (cache layers, last logits)
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache
    closed: bool = False

    def cancel(self) -> None:
        """Frees the request's rows at the next step (thread-safe: a flag read by the engine)."""
        self.cancelled = True


class Row:
    """One sample of a request: one row of the running batch."""

    __slots__ = ("request", "index", "tokens", "text", "emitted", "detok", "done", "json_state", "hold",
                 "generator")

    def __init__(self, request: GenerationRequest, index: int, tokenizer, generator: torch.Generator | None = None):
        self.request = request
        self.index = index
        self.tokens: list[int] = []
        self.text = ""
        self.emitted = 0
        self.detok = Detokenizer(tokenizer)
        self.done: str | None = None
        self.json_state = request.params.json_state
        self.hold = max((len(s) for s in request.params.stop), default=1) - 1
        # this sample's own random stream (see sampling.row_generator); None for greedy rows
        self.generator = generator
