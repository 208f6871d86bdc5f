"""A stand-in for llama.cpp's llama-server, for tests: the same command line and the same /health and /completion
API shape (503 while "loading", n_cmpl, return_tokens, timings), on 127.0.0.1. It records its argv and every
request body as JSON lines in $FAKE_LLAMA_RECORD, and exits with status 3 on a request whose prompt is [666].
With $FAKE_LLAMA_CRASH_WITHOUT set to an option, it dies of SIGSEGV at start unless that option is given
(as llama.cpp does in a VM that lists AMX without granting it, unless --no-repack).
Run as `python fake_llama_server.py ARGS...`."""

import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.monotonic()
LOADING_S = 0.3


def option(argv: list[str], name: str, default: str) -> str:
    return argv[argv.index(name) + 1] if name in argv else default


def record(entry: dict) -> None:
    with open(os.environ["FAKE_LLAMA_RECORD"], "a") as f:
        f.write(json.dumps(entry) + "\n")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def reply(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path != "/health":
            return self.reply(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})
        if time.monotonic() - STARTED < LOADING_S:
            return self.reply(503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
        self.reply(200, {"status": "ok"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        record({"request": body})
        prompt = body.get("prompt")
        if prompt == [666]:
            os._exit(3)
        if not isinstance(prompt, list) or not all(isinstance(t, int) for t in prompt):
            return self.reply(400, {"error": {"code": 400, "message": "\"prompt\" must be token ids here",
                                              "type": "invalid_request_error"}})
        n_predict = body.get("n_predict", 16)
        results = []
        for i in range(body.get("n_cmpl", 1)):
            tokens = [(sum(prompt) + 7 * j + i) % 1000 for j in range(n_predict)]
            results.append({
                "index": i, "content": "x" * n_predict, "tokens": tokens if body.get("return_tokens") else [],
                "id_slot": i, "stop": True, "tokens_predicted": n_predict, "tokens_evaluated": len(prompt),
                "stop_type": "limit", "tokens_cached": 0,
                "timings": {"cache_n": 0, "prompt_n": len(prompt), "prompt_ms": 2.0,
                            "prompt_per_token_ms": 0.1, "prompt_per_second": 500.0, "predicted_n": n_predict,
                            "predicted_ms": 4.0 * n_predict, "predicted_per_token_ms": 4.0,
                            "predicted_per_second": 250.0}})
        time.sleep(0.01)
        self.reply(200, results[0] if len(results) == 1 else results)


def main() -> None:
    argv = sys.argv[1:]
    record({"argv": argv})
    needed = os.environ.get("FAKE_LLAMA_CRASH_WITHOUT")
    if needed and needed not in argv:
        os.kill(os.getpid(), signal.SIGSEGV)
    server = ThreadingHTTPServer((option(argv, "--host", "127.0.0.1"), int(option(argv, "--port", "8080"))), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
