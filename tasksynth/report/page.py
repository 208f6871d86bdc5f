"""One self-contained HTML page from the store: every script, style and datum inlined, nothing fetched.

Charts are Plotly figures with plotly.js inlined once; the task browser is a few lines of plain JavaScript
over the embedded sample (or, with `tasksynth report --serve`, over `/api/tasks` on 127.0.0.1, which pages
through every task). Counts are exact (SQL counts); only the browsable tasks are a sample.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from tasksynth.report.sections import SECTIONS, KindSection, costs
from tasksynth.report.tasks import stratified_sample, task_rows, with_trajectories

DEFAULT_SAMPLE = 500


def report_data(store, kinds: list[str] | None = None, *, sample: int = DEFAULT_SAMPLE,
                with_tasks: bool = True) -> dict[str, Any]:
    """Everything the page shows, as JSON-able data (the tests read the same)."""
    sections: list[KindSection] = []
    for kind, make in SECTIONS.items():
        if kinds and kind not in kinds:
            continue
        section = make(store)
        if section is not None:
            sections.append(section)
    data: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "store": str(store.path),
        "kinds": [{**s.as_dict(), "costs": costs(store, s)} for s in sections],
    }
    if with_tasks:
        rows = task_rows(store, [s.kind for s in sections])
        data["task_total"] = len(rows)
        data["tasks"] = with_trajectories(store, stratified_sample(rows, sample))
    return data


def render_page(data: dict[str, Any], *, api: bool = False) -> str:
    """The whole page. `api`: the browser pages through /api/tasks instead of the embedded sample."""
    blocks = [_kind_block(kind) for kind in data["kinds"]]
    tasks_json = json.dumps({"tasks": data.get("tasks", []), "total": data.get("task_total", 0), "api": api},
                            ensure_ascii=False).replace("</", "<\\/")
    summary = " · ".join(f"{k['title']}: {k['kept']} kept" for k in data["kinds"]) or "the store holds no tasks yet"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'">
<title>tasksynth report</title>
<style>{STYLE}</style>
<script>{get_plotlyjs()}</script>
</head><body>
<header><h1>tasksynth report</h1>
<p>{html.escape(summary)}</p>
<p class="muted">store {html.escape(data['store'])} · made {html.escape(data['generated_at'])} · counts are exact;
the task browser shows {len(data.get('tasks', []))} of {data.get('task_total', 0)} tasks{' (all, through the local server)' if api else ' (a stratified sample)'}</p>
</header>
{''.join(blocks)}
<section id="browser"><h2>Tasks</h2>
<div class="controls"><select id="f-kind"><option value="">every kind</option>{''.join(
        f'<option value="{k["kind"]}">{html.escape(k["title"])}</option>' for k in data["kinds"])}</select>
<select id="f-accepted"><option value="">kept and discarded</option><option value="true">kept</option>
<option value="false">not kept</option></select>
<input id="f-text" type="search" placeholder="search prompts, ids, metadata"></div>
<div class="browser"><ol id="task-list"></ol><article id="task-detail"><p class="muted">Pick a task.</p></article></div>
</section>
<script type="application/json" id="report-tasks">{tasks_json}</script>
<script>{BROWSER_JS}</script>
</body></html>
"""


def _kind_block(kind: dict[str, Any]) -> str:
    stages = [s for s, _ in kind["funnel"]]
    counts = [c for _, c in kind["funnel"]]
    funnel = go.Figure(go.Funnel(y=stages, x=counts, textinfo="value"))
    funnel.update_layout(height=80 + 48 * len(stages), margin={"l": 10, "r": 10, "t": 10, "b": 10})
    parts = [f'<section class="kind" id="kind-{kind["kind"]}"><h2>{html.escape(kind["title"])}</h2>',
             "<h3>Funnel</h3>", _figure(funnel, f"funnel-{kind['kind']}", counts=counts),
             "<h3>Every discard reason</h3>", _table(["stage: reason", "count"], list(kind["discards"].items()))]
    charts = []
    for name, buckets in kind["distributions"].items():
        if not buckets:
            continue
        bars = go.Figure(go.Bar(x=list(buckets), y=list(buckets.values())))
        bars.update_layout(height=260, width=430, margin={"l": 10, "r": 10, "t": 30, "b": 10}, title={"text": name})
        bars.update_xaxes(type="category")
        figure_id = f"dist-{kind['kind']}-{len(charts)}"
        charts.append(f'<div class="chart">{_figure(bars, figure_id)}</div>')
    if charts:
        parts += ["<h3>Distributions</h3>", f'<div class="row">{"".join(charts)}</div>']
    cost_rows = [(c["role"], c["model"], c["calls"], c["tokens"], c["seconds"], round(c["cost_usd"], 4),
                  c["tokens_per_kept"], c["seconds_per_kept"], c["cost_usd_per_kept"]) for c in kind["costs"]]
    parts += ['<div class="row"><div class="cell"><h3>Tokens, seconds and cost by role and model</h3>',
              _table(["role", "model", "calls", "tokens", "seconds", "cost $", "tokens / kept", "seconds / kept",
                      "$ / kept"], cost_rows), "</div>", '<div class="cell"><h3>Time per step</h3>',
              _table(["step", "seconds"], list(kind["seconds_by_step"].items())), "</div></div></section>"]
    return "\n".join(parts)


def _figure(figure: go.Figure, element_id: str, counts: list[int] | None = None) -> str:
    body = pio.to_html(figure, include_plotlyjs=False, full_html=False, div_id=element_id,
                       config={"displayModeBar": False, "responsive": True})
    attribute = f' data-counts="{html.escape(json.dumps(counts))}"' if counts is not None else ""
    return f'<div class="figure"{attribute}>{body}</div>'


def _table(columns: list[str], rows: list[tuple]) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0 auto;max-width:1400px;padding:0 16px;color:#1d2330}
h1{margin:18px 0 4px} h2{border-bottom:1px solid #d9dde5;padding-bottom:4px;margin-top:28px} h3{font-size:15px;margin:12px 0 6px}
.muted{color:#667085;font-size:13px} .figure{width:100%;overflow:hidden} .chart{flex:0 0 440px} .row{display:flex;flex-wrap:wrap;gap:16px} .cell{flex:1 1 420px;min-width:320px}
table{border-collapse:collapse;font-size:13px;width:100%} th,td{border-bottom:1px solid #eceef2;padding:4px 6px;text-align:left}
th{background:#f5f6f8} .controls{display:flex;gap:8px;margin-bottom:8px} .controls input{flex:1;padding:4px}
.browser{display:flex;gap:12px;align-items:flex-start} #task-list{flex:0 0 360px;max-height:640px;overflow:auto;margin:0;
padding-left:22px;font-size:13px} #task-list li{cursor:pointer;padding:3px 0} #task-list li.on{font-weight:600}
#task-detail{flex:1;min-width:0;font-size:13px} pre{white-space:pre-wrap;word-break:break-word;background:#f7f8fa;
padding:8px;border-radius:4px;max-height:420px;overflow:auto} .kept{color:#1a7f37} .dropped{color:#b42318}
"""

BROWSER_JS = r"""
(function () {
  const state = JSON.parse(document.getElementById('report-tasks').textContent);
  const list = document.getElementById('task-list'), detail = document.getElementById('task-detail');
  const kindBox = document.getElementById('f-kind'), keptBox = document.getElementById('f-accepted');
  const textBox = document.getElementById('f-text');
  let shown = [];
  function pretty(text) { try { return JSON.stringify(JSON.parse(text), null, 2); } catch (e) { return String(text); } }
  function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls; return e; }
  function matches(t) {
    if (kindBox.value && t.kind !== kindBox.value) return false;
    if (keptBox.value && String(t.accepted) !== keptBox.value) return false;
    const q = textBox.value.trim().toLowerCase();
    if (!q) return true;
    return (t.task_id + ' ' + JSON.stringify(t.prompt) + ' ' + t.metadata).toLowerCase().includes(q);
  }
  async function show(t, item) {
    if (state.api && !t.trajectories) { t = await (await fetch('/api/task?id=' + encodeURIComponent(t.task_id))).json(); }
    for (const li of list.children) li.classList.remove('on');
    if (item) item.classList.add('on');
    detail.replaceChildren(el('h3', t.task_id), el('p', t.accepted ? 'kept' : 'not kept', t.accepted ? 'kept' : 'dropped'));
    detail.append(el('h3', 'Prompt'));
    for (const m of t.prompt) detail.append(el('pre', m.role + ': ' + m.content));
    for (const key of ['environment', 'verifier', 'metadata']) { detail.append(el('h3', key[0].toUpperCase() + key.slice(1)));
      detail.append(el('pre', pretty(t[key]))); }
    const trajectories = t.trajectories || [];
    detail.append(el('h3', 'Trajectories (' + trajectories.length + ')'));
    for (const tr of trajectories) {
      detail.append(el('p', tr.role + ' · stopped: ' + tr.stop_reason + (tr.cut ? ' · cut for the page' : ''), 'muted'));
      detail.append(el('pre', tr.messages.map(m => m.role + ': ' + (m.content || '') +
        (m.tool_calls ? '\n  tool calls: ' + JSON.stringify(m.tool_calls) : '')).join('\n\n')));
    }
  }
  function render(tasks) {
    shown = tasks; list.replaceChildren();
    for (const t of tasks) { const li = el('li', t.task_id, t.accepted ? 'kept' : 'dropped');
      li.addEventListener('click', () => show(t, li)); list.append(li); }
    if (!tasks.length) list.append(el('li', 'no task matches'));
  }
  async function refresh() {
    if (state.api) {
      const query = new URLSearchParams({kind: kindBox.value, accepted: keptBox.value, q: textBox.value, limit: '500'});
      const answer = await fetch('/api/tasks?' + query); render((await answer.json()).tasks);
    } else { render(state.tasks.filter(matches)); }
  }
  for (const box of [kindBox, keptBox]) box.addEventListener('change', refresh);
  textBox.addEventListener('input', refresh);
  refresh();
})();
"""
