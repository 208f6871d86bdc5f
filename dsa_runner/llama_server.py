"""llama.cpp's own server, `llama-server`, as the baseline of the runner's benchmarks: started on 127.0.0.1 at a
free port on a GGUF with parallel slots and continuous batching, asked for completions of prompt token ids
through its native ``/completion`` API, stopped.

llama.cpp is not a dependency: the binary is built from the sources vendored in the ``llama-cpp-python``
sdist (``docs/runner.md`` says how) and named by path."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dsa_runner.errors import LlamaServerError

HOST = "127.0.0.1"


@dataclass
class Completion:
    """One generated sequence, with the server's own timings of its request."""

    tokens: list[int]  # the generated token ids
    prompt_tokens: int  # prompt tokens the server evaluated for this sequence (0 for a sample that shared them)
    cached_tokens: int  # prompt tokens it took from its cache instead
    prompt_ms: float
    predicted_ms: float

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _exit_description(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


class LlamaServer:
    """One llama-server process: ``slots`` sequences decoded together (``-np``, ``-cb``), each with a context of
    ``context_per_slot`` tokens, ``threads`` threads for decoding and for prompts. Use as a context manager, or
    ``start()`` then ``wait_ready()``, and ``stop()``."""

    def __init__(self, binary: str | Path, model: str | Path, *, threads: int, slots: int = 1,
                 context_per_slot: int = 2048, extra_args: list[str] | tuple[str, ...] = (),
                 log_path: str | Path | None = None, request_timeout_s: float = 1800):
        self.binary = Path(binary)
        self.model = Path(model)
        self.threads = threads
        self.slots = slots
        self.context_per_slot = context_per_slot
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        self.request_timeout_s = request_timeout_s
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._client = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        # -np without --kv-unified gives each slot an equal share of -c
        return [str(self.binary), "-m", str(self.model), "--host", HOST, "--port", str(self.port),
                "-np", str(self.slots), "-cb", "-c", str(self.slots * self.context_per_slot),
                "-t", str(self.threads), "-tb", str(self.threads), "--no-webui", *self.extra_args]

    def start(self) -> "LlamaServer":
        import httpx

        if not self.binary.is_file() or not os.access(self.binary, os.X_OK):
            raise LlamaServerError(f"llama-server: {self.binary} is not an executable file")
        self.port = free_port()
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self._client = httpx.Client(base_url=self.url, timeout=self.request_timeout_s,
                                    limits=httpx.Limits(max_connections=max(self.slots, 1) + 4))
        return self

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def killed_by_signal(self) -> bool:
        """The process ended by a signal (a crash such as SIGSEGV or SIGILL, not an error exit)."""
        return self.proc is not None and self.proc.returncode is not None and self.proc.returncode < 0

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far (Linux: /proc/PID/stat)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15

    def exited(self) -> str | None:
        """None while the process runs; else how it ended and the last lines of its log."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"llama-server {_exit_description(self.proc.returncode)}; log {self.log_path}: {self.log_tail()}"

    def wait_ready(self, timeout_s: float = 300) -> None:
        """Until /health answers 200 (it answers 503 while the model loads)."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (ended := self.exited()) is not None:
                raise LlamaServerError(ended)
            try:
                if self._client.get("/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise LlamaServerError(f"llama-server did not answer /health within {timeout_s:.0f}s; log {self.log_path}")

    def complete(self, prompt_ids: list[int], max_tokens: int, *, temperature: float = 0.0, seed: int | None = None,
                 n: int = 1, ignore_eos: bool = True) -> list[Completion]:
        """``n`` sequences of exactly ``max_tokens`` new tokens (end of sequence ignored) after the prompt token
        ids, sampled from the whole distribution at ``temperature`` (0: greedy) as the runner samples: llama.cpp's
        default truncations (top-k 40, top-p 0.95, min-p 0.05) are turned off. ``n > 1`` asks for ``n_cmpl``
        completions: one prompt evaluation whose state is copied to ``n`` slots."""
        import httpx

        if n > self.slots:  # the server would wait for free slots that never come
            raise LlamaServerError(f"n_cmpl={n} needs {n} slots; this llama-server has {self.slots}")
        body = {"prompt": list(prompt_ids), "n_predict": max_tokens, "ignore_eos": ignore_eos,
                "temperature": temperature, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "cache_prompt": False,
                "return_tokens": True, "stream": False}
        if n > 1:
            body["n_cmpl"] = n
        if seed is not None:
            body["seed"] = seed
        try:
            response = self._client.post("/completion", json=body)
        except httpx.HTTPError as exc:
            try:  # a crash closes the connection a moment before the process is seen to end
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
            raise LlamaServerError(self.exited() or f"llama-server request failed: {exc}") from exc
        if response.status_code != 200:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise LlamaServerError(f"llama-server answered {response.status_code}: {message}")
        results = response.json()
        results = results if isinstance(results, list) else [results]
        if len(results) != n:
            raise LlamaServerError(f"llama-server returned {len(results)} completions for n_cmpl={n} "
                                   "(a build without n_cmpl?)")
        return [Completion(tokens=list(r["tokens"]), prompt_tokens=int(r["timings"]["prompt_n"]),
                           cached_tokens=int(r["timings"].get("cache_n", 0)),
                           prompt_ms=float(r["timings"]["prompt_ms"]), predicted_ms=float(r["timings"]["predicted_ms"]))
                for r in results]

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "LlamaServer":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
