"""One run as a self-contained HTML page.

:func:`render_run` lays out, top to bottom: the title and subtitle; the violations (kind,
step, task, message); the run's size (steps, preemptions, scheduling choices, failed fault
points); the sequence diagram (:mod:`passthru.report.svg`, inline); the shrunk trace — the
event log's text, exactly as ``passthru run`` prints it — with the violation lines and the
rest of their steps highlighted; and the schedule JSON to feed ``passthru replay``.

The page is one file: inline CSS and SVG, no script, no fonts, images or links outside it
(the only link is the optional relative one back to the index). Leaves out: the scenario's
source, the model's state at each step (the log is all a run keeps), and interactivity beyond
the SVG's hover tooltips.
"""

from __future__ import annotations

import html
import json
from typing import Any

from ..check.runner import RunResult
from .svg import SVG_NS, sequence_svg

CSS = """
body{font:14px/1.4 sans-serif;color:#222;margin:16px 20px;background:#fff}
h1{font-size:20px;margin:0 0 4px}
h2{font-size:15px;margin:18px 0 6px}
.sub{color:#555;margin:0 0 8px}
nav{font-size:12px;margin-bottom:6px}
ul.violations{margin:4px 0;padding-left:20px}
ul.violations li{color:#a00000}
ul.violations code{color:#222}
.stats{color:#555;font-size:12px;margin:4px 0}
.ok{color:#2a7d2a}
.diagram{overflow-x:auto;border:1px solid #ddd;background:#fff}
.diagram svg{display:block}
pre{font:12px/1.45 monospace;background:#fafafa;border:1px solid #ddd;padding:8px;
overflow-x:auto;margin:0}
pre .line{display:block;white-space:pre;min-width:100%;width:max-content}
pre .vstep{background:#fdecec}
pre .viol{background:#f7b2b2;color:#800000;font-weight:bold}
code{font-family:monospace}
"""


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def inline_svg(svg: str) -> str:
    """``svg`` for an HTML page: HTML puts ``<svg>`` in the SVG namespace without a URI."""
    return svg.replace(f' xmlns="{SVG_NS}"', "", 1)


def trace_html(res: RunResult) -> str:
    """The event log as ``<span class="line">`` lines, the violating ones highlighted."""
    vsteps = {v.step for v in res.violations}
    vsteps |= {ev.step for ev in res.log.events if ev.subsystem == "VIOLATION"}
    out: list[str] = []
    for ev in res.log.events:
        cls = "line"
        if ev.subsystem == "VIOLATION":
            cls += " viol"
        elif ev.step in vsteps:
            cls += " vstep"
        out.append(f'<span class="{cls}" data-step="{ev.step}">{_e(ev.text())}</span>')
    return "".join(out)


def render_run(
    res: RunResult,
    title: str,
    subtitle: str = "",
    schedule: dict[str, Any] | None = None,
    *,
    index_href: str | None = None,
    schedule_file: str | None = None,
) -> str:
    """A self-contained HTML page for one run: diagram, violations, trace and schedule.

    ``schedule`` is the replayable schedule (``Verdict.schedule_json()``); without it the page
    shows the run's bare choices. ``index_href`` adds a link back to the report's index;
    ``schedule_file`` names the saved schedule in the replay hint.
    """
    o: list[str] = []
    w = o.append
    w("<!DOCTYPE html>")
    w('<html lang="en"><head><meta charset="utf-8">')
    w('<meta name="viewport" content="width=device-width, initial-scale=1">')
    w(f"<title>{_e(title)}</title><style>{CSS}</style></head><body>")
    if index_href:
        w(f'<nav><a href="{_e(index_href)}">\u2190 all verdicts</a></nav>')
    w(f"<h1>{_e(title)}</h1>")
    if subtitle:
        w(f'<p class="sub">{_e(subtitle)}</p>')
    if res.violations:
        w('<ul class="violations">')
        for v in res.violations:
            w(f"<li><b>{_e(v.kind)}</b> at step {v.step} in <code>{_e(v.task)}</code>: "
              f"{_e(v.message)}</li>")
        w("</ul>")
    else:
        w('<p class="ok">No violation in this run.</p>')
    fail = f" \u00b7 failed fault points {list(res.fail_nth)}" if res.fail_nth else ""
    w(f'<p class="stats">{res.steps} steps \u00b7 {res.preemptions} preemptions \u00b7 '
      f"{len(res.choices)} scheduling choices \u00b7 {len(res.log.events)} events{fail}</p>")
    w('<h2>Sequence diagram</h2><div class="diagram">')
    w(inline_svg(sequence_svg(res.log.events, res.violations, title)))
    w("</div>")
    w("<h2>Shrunk trace</h2>")
    w(f'<pre class="trace">{trace_html(res)}</pre>')
    w("<h2>Schedule</h2>")
    if schedule is not None:
        f = schedule_file or "SCHEDULE.json"
        w(f'<p class="stats">Replay with <code>passthru replay {_e(f)}</code>'
          + ("" if schedule_file else " after saving this JSON as that file") + ".</p>")
        w(f'<pre class="schedule">{_e(json.dumps(schedule, indent=1))}</pre>')
    else:
        bare = {"choices": res.choices, "fail_nth": list(res.fail_nth)}
        w(f'<pre class="schedule">{_e(json.dumps(bare, indent=1))}</pre>')
    w("</body></html>")
    return "\n".join(o) + "\n"
