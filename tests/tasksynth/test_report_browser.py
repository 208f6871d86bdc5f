"""The report as a person sees it: rendered from a real store, opened in Debian's headless Chromium (its
DevTools protocol), with each kind's funnel read back from the page and compared with the store."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from headless_browser import CHROMIUM, HeadlessChromium  # noqa: E402
from report_store import expected_funnels, fill  # noqa: E402

from tasksynth.report.server import ReportServer  # noqa: E402
from tasksynth.store import Store, open_store  # noqa: E402

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (`make test` installs it)")


@pytest.fixture
def filled(config):
    with open_store(config) as store:
        fill(store)
        expected = expected_funnels(store)
    return config, expected


def test_the_page_shows_the_store_with_no_network_and_no_errors(filled, tmp_path, tasksynth):
    config, expected = filled
    page = tmp_path / "report.html"
    result = tasksynth("report", "--html", str(page), cwd=tmp_path, check=True)
    assert str(page) in result.stdout
    text = page.read_text()
    assert "<script src=" not in text and "<link" not in text  # everything inlined
    with HeadlessChromium(tmp_path) as browser:
        browser.open(page.as_uri())
        for kind, counts in expected.items():
            shown = browser.evaluate(f"Array.from(document.getElementById('funnel-{kind}').data[0].x)")
            assert shown == counts, kind
        reasons = browser.evaluate("Array.from(document.querySelectorAll('#kind-code table')[0]"
                                   ".querySelectorAll('tbody tr')).map(r => r.cells[0].textContent)")
        assert "validate: pass_to_fail" in reasons or "validate: no_fail_to_pass" in reasons
        # the task browser: filter to kept general tasks, open one
        browser.evaluate("const k = document.getElementById('f-kind'); k.value = 'general'; "
                         "k.dispatchEvent(new Event('change'));")
        items = browser.evaluate("Array.from(document.querySelectorAll('#task-list li')).map(li => li.textContent)")
        assert items and all(item.startswith("general/") for item in items)
        browser.evaluate("document.querySelector('#task-list li').click()")
        assert "Book trip" in browser.evaluate("document.getElementById('task-detail').textContent")
        browser.evaluate("document.getElementById('f-kind').value = 'code'; "
                         "document.getElementById('f-kind').dispatchEvent(new Event('change')); "
                         "document.querySelector('#task-list li').click()")
        assert "Division by zero" in browser.evaluate("document.getElementById('task-detail').textContent")
        screenshot = browser.screenshot(Path(os.environ.get("REPORT_SCREENSHOT", tmp_path / "report.png")))
        assert browser.console_errors == []
        assert [url for url in browser.requests if not url.startswith(("file://", "data:"))] == []
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000


def test_serve_browses_every_task_on_loopback(filled, tmp_path):
    config, expected = filled
    server = ReportServer(lambda: open_store(config, read_only=True), None)
    server.serve_in_background()
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url + "api/tasks?kind=code&limit=500", timeout=10) as answer:
            listing = json.loads(answer.read())
        assert listing["total"] == expected["code"][2]
        task_id = listing["tasks"][0]["task_id"]
        with urllib.request.urlopen(server.url + f"api/task?id={task_id}", timeout=10) as answer:
            assert json.loads(answer.read())["trajectories"]
        with HeadlessChromium(tmp_path) as browser:
            browser.open(server.url)
            browser.evaluate("new Promise(done => setTimeout(done, 300))")
            shown = browser.evaluate("document.querySelectorAll('#task-list li').length")
            assert shown == min(500, len(server.rows))
            assert browser.console_errors == []
            assert all(url.startswith(server.url) for url in browser.requests)
    finally:
        server.close()


def test_a_missing_store_is_one_clear_line(home, tmp_path, tasksynth):
    result = tasksynth("report", cwd=tmp_path)
    assert result.returncode == 1 and "no store at" in result.stderr
