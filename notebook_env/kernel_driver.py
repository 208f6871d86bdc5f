"""The kernel's client, run inside the sandbox container as the untrusted user (a supervisor service).

It starts an IPython kernel (`ipykernel`) with `jupyter_client` over ZeroMQ `ipc` sockets in /tmp (unix
sockets: no TCP port is opened, and the container has no network anyway), then answers one JSON line per
JSON line on stdin:

    {"op": "ready"}                                    -> {"ready": true}            (after start-up)
    {"op": "execute", "code": ..., "timeout_s": 30, "text_cap": 20000, "image_cap": 262144, "max_images": 4}
        -> {"status": "ok" | "error" | "timeout" | "kernel_died", "execution_count", "outputs": [...],
            "restarted": bool, "note": "..."}

`outputs` are notebook outputs (nbformat v4: stream, execute_result, display_data, error), texts cut at
`text_cap`, PNG images over `image_cap` left out with a note. On timeout the kernel is interrupted
(SIGINT, like Jupyter's stop button); one that does not come back is restarted. A kernel that died (the
out-of-memory killer takes it first, being the biggest process) is restarted; either is reported, and the
new kernel starts with no state. This file runs on the kernel image's interpreter, not the host's: it is
mounted read-only and imports only what that image has.
"""

import json
import os
import queue
import subprocess
import sys
import time
import traceback

from jupyter_client.manager import KernelManager

RUNTIME = "/tmp/.kernel"
WARM_UP = ("import numpy as _np, pandas as _pd, matplotlib as _mpl\n"
           "import matplotlib.pyplot as _plt\n"
           "del _np, _pd, _mpl, _plt\n")
START_TIMEOUT_S = 60
INTERRUPT_GRACE_S = 5


class Kernel:
    def __init__(self):
        os.makedirs(RUNTIME, exist_ok=True)
        self.generation = 0
        self.manager = self.client = None
        self.start()

    def start(self):
        # A fresh manager per kernel: a manager whose kernel died keeps a closed ZeroMQ context behind.
        self.generation += 1
        prefix = os.path.join(RUNTIME, f"kernel-{self.generation}")
        self.manager = KernelManager(transport="ipc", ip=prefix, connection_file=prefix + ".json")
        # The kernel's own stdout and stderr must not reach ours: ours is the line channel to the supervisor.
        self.manager.start_kernel(extra_arguments=["--HistoryManager.enabled=False"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=START_TIMEOUT_S)
        self.client.execute_interactive(WARM_UP, silent=True, store_history=False, timeout=START_TIMEOUT_S,
                                        output_hook=lambda message: None)

    def restart(self):
        for stop in (self.client.stop_channels, lambda: self.manager.shutdown_kernel(now=True)):
            try:
                stop()
            except Exception:  # noqa: BLE001 - a dead kernel's channels and sockets may already be broken
                pass
        self.start()

    def execute(self, request):
        code, timeout_s = request["code"], float(request.get("timeout_s", 30))
        shaper = OutputShaper(int(request.get("text_cap", 20000)), int(request.get("image_cap", 262144)),
                              int(request.get("max_images", 4)))
        # Anything left on the channel from an earlier, interrupted cell is not this cell's.
        while True:
            try:
                self.client.get_iopub_msg(timeout=0)
            except queue.Empty:
                break
        msg_id = self.client.execute(code, store_history=True, allow_stdin=False)
        deadline = time.monotonic() + timeout_s
        status, count, interrupted_at = "ok", None, None
        while True:
            now = time.monotonic()
            if interrupted_at is None and now > deadline:
                self.manager.interrupt_kernel()
                interrupted_at, status = now, "timeout"
            if interrupted_at is not None and now > interrupted_at + INTERRUPT_GRACE_S:
                self.restart()
                return shaper.reply("timeout", count, True,
                                    f"still running after {timeout_s:g} s; the interrupt did not stop it, "
                                    "so the kernel was restarted (its state is lost)")
            try:
                message = self.client.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                if not self.manager.is_alive():
                    self.restart()
                    return shaper.reply("kernel_died", count, True,
                                        "the kernel died (most likely out of memory) and was restarted; "
                                        "its state is lost")
                continue
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "status" and content.get("execution_state") == "idle":
                break
            if kind == "execute_input":
                count = content.get("execution_count")
            elif kind == "error" and status == "ok":
                status = "error"
            shaper.add(kind, content)
        note = f"still running after {timeout_s:g} s; interrupted (the kernel keeps its state)" \
            if status == "timeout" else ""
        return shaper.reply(status, count, False, note)


class OutputShaper:
    """Notebook outputs of one cell, consecutive stream texts merged, everything capped."""

    def __init__(self, text_cap, image_cap, max_images):
        self.text_cap, self.image_cap, self.max_images = text_cap, image_cap, max_images
        self.outputs, self.images, self.notes = [], 0, []
        self.text_used = 0

    def _text(self, text):
        room = max(self.text_cap - self.text_used, 0)
        if len(text) > room:
            text = text[:room] + f"\n... [{len(text) - room} more characters cut]"
        self.text_used += min(len(text), room)
        return text

    def _data(self, data):
        shaped = {}
        for mime in ("text/plain", "text/html"):
            if mime in data and not (mime == "text/html" and "image/png" in data):
                shaped[mime] = self._text(data[mime]) if mime == "text/plain" else data[mime][:self.text_cap]
        if "image/png" in data:
            size = len(data["image/png"]) * 3 // 4
            if self.images >= self.max_images:
                self.notes.append(f"an image left out (more than {self.max_images} in one cell)")
            elif size > self.image_cap:
                self.notes.append(f"an image of {size} bytes left out (over the cap of {self.image_cap})")
            else:
                self.images += 1
                shaped["image/png"] = data["image/png"]
        return shaped

    def add(self, kind, content):
        if kind == "stream":
            text = self._text(content.get("text", ""))
            last = self.outputs[-1] if self.outputs else None
            if last and last["output_type"] == "stream" and last["name"] == content.get("name"):
                last["text"] += text
            else:
                self.outputs.append({"output_type": "stream", "name": content.get("name", "stdout"), "text": text})
        elif kind in ("execute_result", "display_data"):
            data = self._data(content.get("data", {}))
            if data:
                output = {"output_type": kind, "data": data, "metadata": {}}
                if kind == "execute_result":
                    output["execution_count"] = content.get("execution_count")
                self.outputs.append(output)
        elif kind == "error":
            self.outputs.append({"output_type": "error", "ename": content.get("ename", ""),
                                 "evalue": self._text(content.get("evalue", "")),
                                 "traceback": [self._text(line) for line in content.get("traceback", [])[-30:]]})

    def reply(self, status, count, restarted, note):
        notes = self.notes + ([note] if note else [])
        return {"status": status, "execution_count": count, "outputs": self.outputs, "restarted": restarted,
                "note": "; ".join(notes)}


def main():
    kernel = Kernel()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            if request.get("op") == "execute":
                reply = kernel.execute(request)
            else:
                reply = {"ready": True}
        except Exception as exc:  # noqa: BLE001 - the driver answers every line
            where = traceback.extract_tb(exc.__traceback__)[-3:]
            reply = {"status": "driver_error", "note": f"{type(exc).__name__}: {exc} at "
                     + " < ".join(f"{frame.name}:{frame.lineno}" for frame in reversed(where)), "outputs": [],
                     "restarted": False, "execution_count": None}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
