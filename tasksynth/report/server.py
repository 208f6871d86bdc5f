"""`tasksynth report --serve`: the report page on 127.0.0.1, browsing every task of the store, not a sample.

The store is read once at start (then closed, so flows can write meanwhile); a task's trajectories are read
when it is opened. Only loopback is served."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from tasksynth.report.page import render_page, report_data
from tasksynth.report.tasks import task_rows, with_trajectories

PAGE_LIMIT = 500


class ReportServer:
    def __init__(self, open_store, kinds: list[str] | None, host: str = "127.0.0.1", port: int = 0):
        self.open_store = open_store
        with open_store() as store:
            data = report_data(store, kinds, with_tasks=False)
            self.rows = task_rows(store, [k["kind"] for k in data["kinds"]])
        data["task_total"] = len(self.rows)
        self.page = render_page(data, api=True).encode()
        self.by_id = {row["task_id"]: row for row in self.rows}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                if url.path == "/":
                    self._send(200, server.page, "text/html; charset=utf-8")
                elif url.path == "/api/tasks":
                    self._json(server.tasks(query))
                elif url.path == "/api/task":
                    task = server.task(query.get("id", ""))
                    self._json(task) if task else self._json({"error": "no such task"}, 404)
                else:
                    self._json({"error": "not found"}, 404)

            def _json(self, value: Any, status: int = 200) -> None:
                self._send(status, json.dumps(value, ensure_ascii=False, default=str).encode(), "application/json")

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def tasks(self, query: dict[str, str]) -> dict[str, Any]:
        kind, accepted, text = query.get("kind", ""), query.get("accepted", ""), query.get("q", "").lower()
        offset = int(query.get("offset", "0") or 0)
        limit = min(int(query.get("limit", str(PAGE_LIMIT)) or PAGE_LIMIT), PAGE_LIMIT)
        found = [row for row in self.rows
                 if (not kind or row["kind"] == kind) and (not accepted or str(row["accepted"]).lower() == accepted)
                 and (not text or text in (row["task_id"] + json.dumps(row["prompt"]) + row["metadata"]).lower())]
        return {"total": len(found), "offset": offset, "tasks": found[offset:offset + limit]}

    def task(self, task_id: str) -> dict[str, Any] | None:
        row = self.by_id.get(task_id)
        if row is None:
            return None
        with self.open_store() as store:
            return with_trajectories(store, [dict(row)])[0]

    def serve_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
