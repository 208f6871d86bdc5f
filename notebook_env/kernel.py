"""The agent's `python(code)` tool: a stateful Jupyter kernel per attempt, in a sandbox session, kept warm.

    with KernelPool(config, data_root=Path("datasets"), size=2) as pool:
        with pool.attempt() as kernel:                        # a kernel already started: no start-up wait
            cell = kernel.python("import pandas as pd; df = pd.read_csv('/data/x.csv'); df.shape")
            cell.status, cell.text()                          # ok, "(344, 8)"
            notebook = kernel.notebook()                      # the attempt as nbformat v4

Each kernel host is a `tasksynth.sandbox.Session` of the kernel image (no network, uid 1000, no
capabilities, the container's memory/CPU/pids limits, read-only root). The data folder is mounted read-only
at /data, /work is the writable workspace (tmpfs, also the kernel's working directory). The kernel's client
(`kernel_driver.py`, mounted read-only) runs inside the container as a supervisor service: the host talks to
the supervisor over its unix socket only, and the kernel's ZeroMQ channels are unix sockets inside the
container, so no port is opened or published anywhere.

Between attempts a host is reset by the supervisor (every process of uid 1000 killed; /work, /tmp and the IPC
places emptied) and a fresh kernel is started in the background, so the next attempt finds one ready: what
one attempt did is never seen by the next. A cell that runs past its time is interrupted; a kernel that dies
(its memory limit) is restarted; a driver that stops answering is started again: each is the cell's status
and note, and `restarted` says the state is gone.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import nbformat

from notebook_env.errors import NotebookEnvError
from notebook_env.kernel_image import KERNEL_PYTHON
from tasksynth.sandbox import Limits, Mount, SandboxInfraError, ServiceReply, Session
from tasksynth.sandbox.results import SupervisorGone

DRIVER_SOURCE = Path(__file__).with_name("kernel_driver.py")
DRIVER_IN_CONTAINER = "/opt/tasksynth-kernel/driver.py"
DATA_IN_CONTAINER = "/data"
KERNEL_ENV = {"JUPYTER_RUNTIME_DIR": "/tmp/.kernel", "IPYTHONDIR": "/tmp/.ipython", "MPLCONFIGDIR": "/tmp/.mpl",
              "JUPYTER_DATA_DIR": "/tmp/.jupyter", "PYTHONDONTWRITEBYTECODE": "1", "OPENBLAS_NUM_THREADS": "1",
              "OMP_NUM_THREADS": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
START_TIMEOUT_S = 120.0  # a kernel's start-up and warm-up (imports pandas and matplotlib) on a loaded machine
REPLY_GRACE_S = 20.0  # past a cell's own timeout, for the driver's interrupt and restart, before it counts as hung
STATUSES = ("ok", "error", "timeout", "kernel_died", "output_capped", "sandbox_crash")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class CellResult:
    """What a notebook shows for one cell, and how it ended.

    status: ok | error (the code raised) | timeout (interrupted) | kernel_died (restarted: state lost) |
    output_capped (the answer was over the cap; the kernel restarted) | sandbox_crash (the container died)."""
    code: str
    status: str
    outputs: list[dict[str, Any]] = field(default_factory=list)
    execution_count: int | None = None
    restarted: bool = False
    note: str = ""
    seconds: float = 0.0

    @property
    def images(self) -> list[bytes]:
        return [base64.b64decode(o["data"]["image/png"]) for o in self.outputs
                if "image/png" in o.get("data", {})]

    @property
    def error(self) -> dict[str, Any] | None:
        return next((o for o in self.outputs if o["output_type"] == "error"), None)

    def text(self, image_names: list[str] | None = None) -> str:
        """The cell's outputs as the agent reads them: streams, the value, the traceback, one line per image."""
        parts: list[str] = []
        images = iter(image_names or [])
        for output in self.outputs:
            kind = output["output_type"]
            if kind == "stream":
                parts.append(output["text"] if output["name"] == "stdout" else f"[stderr]\n{output['text']}")
            elif kind == "error":
                parts.append(_ANSI.sub("", "\n".join(output["traceback"])) or
                             f"{output['ename']}: {output['evalue']}")
            else:
                data = output["data"]
                if "image/png" in data:
                    parts.append(f"[image {next(images, 'image/png')}]")
                elif "text/plain" in data:
                    parts.append(data["text/plain"])
        if self.note:
            parts.append(f"[{self.status}: {self.note}]")
        return "\n".join(part.rstrip("\n") for part in parts if part)


class KernelHost:
    """One sandbox session with a running kernel driver."""

    def __init__(self, config: Any, image: str, data_root: Path | None, limits: Limits):
        mounts = [Mount(str(DRIVER_SOURCE), DRIVER_IN_CONTAINER)]
        if data_root is not None:
            mounts.append(Mount(str(Path(data_root).resolve()), DATA_IN_CONTAINER))
        self.session = Session(config, image, mounts=mounts, limits=limits, env=KERNEL_ENV)
        self.starts = 0
        try:
            self.start_kernel()
        except BaseException:
            self.session.close()
            raise

    def start_kernel(self) -> None:
        """Start the driver (which starts and warms up the kernel) and wait until it says it is ready."""
        try:
            self.session.start_service([KERNEL_PYTHON, DRIVER_IN_CONTAINER])
        except SupervisorGone as exc:
            raise NotebookEnvError(f"the kernel's container died: {exc}") from None
        reply = self.session.service_call(json.dumps({"op": "ready"}), timeout_s=START_TIMEOUT_S)
        if reply.outcome != "ok" or not json.loads(reply.line or "{}").get("ready"):
            raise NotebookEnvError(f"the kernel did not start: {reply.outcome} {reply.reason}".strip())
        self.starts += 1

    def reset(self) -> None:
        self.session.reset()
        self.start_kernel()

    def close(self) -> None:
        self.session.close()


class KernelAttempt:
    """One attempt's kernel: `python(code)` runs a cell; every cell is kept for `notebook()`."""

    def __init__(self, host: KernelHost, *, timeout_s: float, text_cap: int, image_cap: int, max_images: int,
                 on_image: Callable[[bytes], str] | None = None):
        self.host = host
        self.timeout_s, self.text_cap, self.image_cap, self.max_images = timeout_s, text_cap, image_cap, max_images
        self.on_image = on_image
        self.cells: list[CellResult] = []
        self.image_names: list[list[str]] = []
        self.restarts = 0

    def python(self, code: str, *, timeout_s: float | None = None) -> CellResult:
        timeout_s = timeout_s or self.timeout_s
        request = {"op": "execute", "code": code, "timeout_s": timeout_s, "text_cap": self.text_cap,
                   "image_cap": self.image_cap, "max_images": self.max_images}
        # The line's cap: the texts, the images (base64) and the JSON around them.
        cap = 4 * self.text_cap + self.max_images * (self.image_cap * 4 // 3 + 1024) + 65536
        started = time.monotonic()
        reply = self.host.session.service_call(json.dumps(request), timeout_s=timeout_s + REPLY_GRACE_S,
                                               output_cap=cap)
        seconds = time.monotonic() - started
        answer = _json_object(reply.line) if reply.outcome == "ok" else None
        if reply.outcome == "ok" and answer is None:
            # Not the driver's answer (the code wrote into the driver's channel itself): the driver is restarted.
            try:
                self.host.session.stop_service()
            except SandboxInfraError:
                pass  # a dead container: the restart below reports it
            reply = ServiceReply("service_gone", "", "the kernel's driver answered something that is not JSON")
        if answer is not None:
            cell = CellResult(code, answer.get("status", "error"), answer.get("outputs", []),
                              answer.get("execution_count"), bool(answer.get("restarted")), answer.get("note", ""),
                              seconds)
        else:
            status = {"oom": "kernel_died", "service_gone": "kernel_died", "timeout": "timeout",
                      "output_capped": "output_capped"}.get(reply.outcome, "sandbox_crash")
            cell = CellResult(code, status, [], None, True, reply.reason, seconds)
            if status != "sandbox_crash":
                try:
                    self.host.start_kernel()
                    cell.note += "; the kernel was restarted (its state is lost)"
                except (NotebookEnvError, SandboxInfraError) as exc:
                    cell.status, cell.note = "sandbox_crash", f"{cell.note}; restart failed: {exc}"
        self.restarts += cell.restarted
        names = [self.on_image(png) for png in cell.images] if self.on_image else []
        self.cells.append(cell)
        self.image_names.append(names)
        return cell

    def text_of(self, cell: CellResult) -> str:
        return cell.text(self.image_names[self.cells.index(cell)])

    def notebook(self, *, title: str = "") -> nbformat.NotebookNode:
        return attempt_notebook(self.cells, title=title)


OUTPUT_TYPES = ("stream", "execute_result", "display_data", "error")


def _json_object(line: str) -> dict[str, Any] | None:
    """The driver's answer, or None when the line is not one (the cell's code can write into the channel)."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("outputs", []), list):
        return None
    if not all(isinstance(o, dict) and o.get("output_type") in OUTPUT_TYPES for o in value.get("outputs", [])):
        return None
    return value


def attempt_notebook(cells: list[CellResult], *, title: str = "") -> nbformat.NotebookNode:
    """An attempt as a notebook a person opens in Jupyter: one code cell per call with its outputs."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if title:
        notebook.cells.append(nbformat.v4.new_markdown_cell(title))
    for cell in cells:
        outputs = [nbformat.from_dict(output) for output in cell.outputs]
        code_cell = nbformat.v4.new_code_cell(cell.code, execution_count=cell.execution_count, outputs=outputs)
        code_cell.metadata["tasksynth"] = {"status": cell.status, "restarted": cell.restarted, "note": cell.note,
                                           "seconds": round(cell.seconds, 4)}
        notebook.cells.append(code_cell)
    nbformat.validate(notebook)
    return notebook


class KernelPool:
    """Warm kernel hosts for one data folder. `attempt()` takes a ready one (or the oldest still starting; with
    none at all it starts one: attempts never wait for each other); when the attempt ends the host is reset
    and its fresh kernel started in the background, up to `size` hosts. Thread-safe."""

    def __init__(self, config: Any, image: str, *, data_root: Path | None = None, size: int = 2,
                 limits: Limits | None = None, timeout_s: float = 30.0, text_cap: int = 20000,
                 image_cap: int = 256 * 1024, max_images: int = 4):
        self.config, self.image, self.data_root, self.size = config, image, data_root, max(1, size)
        self.limits = limits or Limits.from_config(config)
        self.cell_options = {"timeout_s": timeout_s, "text_cap": text_cap, "image_cap": image_cap,
                             "max_images": max_images}
        self._executor = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="kernel-host")
        self._ready: list[Future] = []
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> "KernelPool":
        self.warm()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def warm(self) -> None:
        """Start hosts in the background up to the pool's size."""
        with self._lock:
            while len(self._ready) < self.size:
                self._ready.append(self._executor.submit(self._new_host))

    def ready_now(self) -> int:
        """Hosts whose kernel is started and waiting for an attempt."""
        with self._lock:
            return sum(f.done() and f.exception() is None for f in self._ready)

    def _new_host(self) -> KernelHost:
        return KernelHost(self.config, self.image, self.data_root, self.limits)

    def _recycle(self, host: KernelHost) -> KernelHost:
        if host.session.crashed:
            host.close()
            return self._new_host()
        try:
            host.reset()
            return host
        except (NotebookEnvError, SandboxInfraError, SupervisorGone):
            host.close()
            return self._new_host()

    def _take(self) -> KernelHost:
        with self._lock:
            if self._closed:
                raise NotebookEnvError("the kernel pool is closed")
            # The first host that is ready, else the oldest one still starting.
            future = next((f for f in self._ready if f.done()), self._ready[0] if self._ready else None)
            if future is not None:
                self._ready.remove(future)
        if future is None:
            return self._new_host()
        try:
            return future.result()
        except (SandboxInfraError, SupervisorGone) as exc:
            raise NotebookEnvError(f"a kernel host could not be started: {exc}") from None

    @contextmanager
    def attempt(self, *, on_image: Callable[[bytes], str] | None = None) -> Iterator[KernelAttempt]:
        host = self._take()
        try:
            yield KernelAttempt(host, on_image=on_image, **self.cell_options)
        finally:
            with self._lock:
                # Hosts started beyond the pool's size (attempts ran at once) are closed, not kept.
                if self._closed or len(self._ready) >= self.size:
                    host.close()
                else:
                    self._ready.append(self._executor.submit(self._recycle, host))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pending, self._ready = self._ready, []
        for future in pending:
            try:
                future.result(timeout=START_TIMEOUT_S).close()
            except Exception:  # noqa: BLE001 - a host that failed to start has nothing to close
                pass
        self._executor.shutdown(wait=True)
