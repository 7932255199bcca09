"""One run as a self-contained HTML page.

:func:`render_run` lays out, top to bottom: the title and subtitle; how the run was produced
(``meta``: version, profile, strategy, bound, budget, seed, date, when given); a jump link to
the violation (its band in the diagram, its line in the trace); the violations (kind, step,
task, message); the run's size (steps, preemptions, scheduling choices, failed fault points);
the decisive preemption (:func:`decisive_preemption`: the last one before the violation); the
sequence diagram (:mod:`passthru.report.svg`, inline, the decisive preemption outlined); the
shrunk trace — the event log's text, exactly as ``passthru run`` prints it — with the
violation lines and the rest of their steps highlighted, the decisive preemption's marked,
and the set-up and runs of lock events folded (``<details>``, closed); and the schedule JSON
(compact: one line per key) to feed ``passthru replay``.

Each trace line shows, right-aligned in grey, where in the model its event comes from
(``Event.where``: file and line in the package, the Python function and the kernel function
it models; the checker's counterexample runs and ``--trace html`` record it). Lines carrying
the values that explain a run — the pfn a vCPU fetched and the ``mmu_invalidate_seq`` it
snapshotted, the sequence and in-progress count an invalidation leaves, the retry check's
view of them, a physical range's owner and state before and after (:data:`VALUE_KEYS`) — are
set off in colour (class ``value``).

The page is one file: inline CSS, SVG and a few lines of script (step through the trace's
events, filter it by task), no fonts, images or links outside it (the only link is the
optional relative one back to the index). The same run gives the same bytes. Leaves out: the
scenario's source and the model's state at steps whose events do not carry it (the log is
all a run keeps).
"""

from __future__ import annotations

import html
import json
from typing import Any

from ..check.runner import RunResult
from ..sim.log import Event
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
pre,.trace{font:12px/1.45 monospace;background:#fafafa;border:1px solid #ddd;padding:8px;
overflow-x:auto;margin:0}
.trace .line{display:block;white-space:pre;min-width:100%;width:max-content}
.trace .vstep{background:#fdecec}
.trace .viol{background:#f7b2b2;color:#800000;font-weight:bold}
.trace .preempt{box-shadow:inset 4px 0 #7b2fbf}
.trace .cur{outline:2px solid #1a5fd0;background:#e3edff}
.trace .off{display:none}
.trace .value{color:#0b4f9c}
.trace .where{float:right;margin-left:3em;color:#8a8a8a;font-size:11px;font-weight:normal}
.trace details{color:#666}
.trace summary{cursor:pointer;font:italic 11px sans-serif;color:#777}
p.meta{color:#555;font-size:12px;margin:0 0 6px}
nav.jump{font-size:13px;margin:4px 0}
p.decisive{color:#5a1f8f;font-size:13px;margin:4px 0}
.controls{font-size:12px;margin:0 0 4px}
code{font-family:monospace}
"""

# Step through the trace (buttons, or j/k) and filter it by task; "#task=T&event=N" in the
# address preselects both. No script, no harm: the page reads the same without it.
SCRIPT = """(function(){
var rows=[].slice.call(document.querySelectorAll('#trace .line')),cur=-1,
sel=document.getElementById('task'),pos=document.getElementById('pos');
function vis(r){return !sel.value||r.getAttribute('data-task')===sel.value}
function go(d){var i=cur;do{i+=d}while(i>=0&&i<rows.length&&!vis(rows[i]));
if(i<0||i>=rows.length)return;if(cur>=0)rows[cur].classList.remove('cur');cur=i;
var r=rows[i],p=r.closest('details');r.classList.add('cur');if(p)p.open=true;
if(r.scrollIntoView)r.scrollIntoView({block:'nearest'});
pos.textContent='event '+(i+1)+' of '+rows.length+', step '+r.getAttribute('data-step');}
function filter(){rows.forEach(function(r){r.classList.toggle('off',!vis(r))});
[].forEach.call(document.querySelectorAll('#trace details'),function(d){
d.classList.toggle('off',!d.querySelector('.line:not(.off)'))})}
document.getElementById('next').onclick=function(){go(1)};
document.getElementById('prev').onclick=function(){go(-1)};
sel.onchange=filter;
document.addEventListener('keydown',function(e){if(e.key==='j')go(1);if(e.key==='k')go(-1)});
var h=new URLSearchParams(location.hash.slice(1));
if(h.get('task')){sel.value=h.get('task');filter()}
for(var n=+h.get('event')||0;n>0;n--)go(1);
})();"""


# An event carries values that explain the run when it has one of these arguments
# (kvm.faultin-pfn, kvm.retry-check, kvm.invalidate-begin/-end, kvm.map, phys.*).
VALUE_KEYS = frozenset({"pfn", "mmu_seq", "seq", "in_progress", "before", "after"})


def is_value(ev: Event) -> bool:
    """Does ``ev`` carry a value that explains the run (a pfn, a sequence, a state)?"""
    return any(k in VALUE_KEYS for k, _ in ev.args)


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def inline_svg(svg: str) -> str:
    """``svg`` for an HTML page: HTML puts ``<svg>`` in the SVG namespace without a URI."""
    return svg.replace(f' xmlns="{SVG_NS}"', "", 1)


def decisive_preemption(res: RunResult) -> tuple[int, str, str] | None:
    """The last preemption at or before the first violation's step: (step, the task that
    could have continued, the task chosen instead); None without one.

    ``res.decisions[i]`` chose the task that ran step ``i + 1``; a decision preempts when its
    ``current`` (the task that ran last and could continue) is not the one ``chosen``."""
    if not res.decisions:
        return None
    step_task: dict[int, str] = {}
    for ev in res.log.events:
        if ev.step > 0 and ev.task != "main":
            step_task.setdefault(ev.step, ev.task)
    names: dict[int, str] = {}
    for i, d in enumerate(res.decisions):
        if i + 1 in step_task:
            names.setdefault(d.chosen, step_task[i + 1])
    last = res.first_violation_step if res.violations else res.steps
    best: tuple[int, str, str] | None = None
    for i, d in enumerate(res.decisions):
        if i + 1 > last:
            break
        if d.current is not None and d.chosen != d.current:
            best = (i + 1, names.get(d.current, f"task {d.current}"),
                    names.get(d.chosen, f"task {d.chosen}"))
    return best


def _setup_len(res: RunResult, vsteps: set[int]) -> int:
    """How many leading events are set-up: main's, before the first task's first step (0
    when a violation is among them, or there is no task)."""
    events = res.log.events
    n = next((i for i, ev in enumerate(events) if ev.task != "main" and ev.step > 0), 0)
    if any(ev.subsystem == "VIOLATION" or ev.step in vsteps for ev in events[:n]):
        return 0
    return n


def trace_html(res: RunResult, preemption: tuple[int, str, str] | None = None) -> str:
    """The event log as ``<span class="line">`` lines (``data-step``, ``data-task``), the
    violating ones highlighted, the decisive preemption's marked ``preempt``; the set-up and
    each run of two or more ``lock.*`` events (off violating and preempting steps) folded in
    a ``<details>``, closed; value-carrying events (:func:`is_value`) have class ``value``;
    an event's source location, when recorded, follows its text as ``<span class="where">``.
    The first violation line has ``id="trace-violation"``, the preemption's first line
    ``id="preemption"``."""
    vsteps = {v.step for v in res.violations}
    vsteps |= {ev.step for ev in res.log.events if ev.subsystem == "VIOLATION"}
    pstep = preemption[0] if preemption else None
    events = res.log.events
    ids: dict[int, str] = {}
    first_v = next((i for i, ev in enumerate(events) if ev.subsystem == "VIOLATION"),
                   next((i for i, ev in enumerate(events) if ev.step in vsteps), None))
    if first_v is not None:
        ids[first_v] = "trace-violation"
    first_p = next((i for i, ev in enumerate(events) if ev.step == pstep), None)
    if first_p is not None and first_p not in ids:
        ids[first_p] = "preemption"

    def line(i: int) -> str:
        ev = events[i]
        cls = "line"
        if ev.subsystem == "VIOLATION":
            cls += " viol"
        elif ev.step in vsteps:
            cls += " vstep"
        if ev.step == pstep:
            cls += " preempt"
        if is_value(ev):
            cls += " value"
        at = f' id="{ids[i]}"' if i in ids else ""
        where = f'<span class="where">{_e(ev.where)}</span>' if ev.where else ""
        return (f'<span class="{cls}"{at} data-step="{ev.step}" data-task="{_e(ev.task)}">'
                f"{_e(ev.text())}{where}</span>")

    def churn(ev: Event) -> bool:
        return ev.subsystem == "lock" and ev.step not in vsteps and ev.step != pstep

    out: list[str] = []
    n = _setup_len(res, vsteps)
    if n:
        out.append(f'<details class="setup"><summary>set-up: {n} event{"s" if n > 1 else ""} '
                   "of main before the first task's first step</summary>")
        out.extend(line(i) for i in range(n))
        out.append("</details>")
    i = n
    while i < len(events):
        j = i
        while j < len(events) and churn(events[j]):
            j += 1
        if j - i >= 2:
            locks = sorted({str(dict(ev.args).get("lock", "?")) for ev in events[i:j]})
            steps = f"step {events[i].step}" if events[i].step == events[j - 1].step \
                else f"steps {events[i].step}\u2013{events[j - 1].step}"
            who = ", ".join(dict.fromkeys(ev.task for ev in events[i:j]))
            out.append(f'<details class="churn"><summary>{j - i} lock events, {steps}, '
                       f"{_e(who)}: {_e(', '.join(locks))}</summary>")
            out.extend(line(k) for k in range(i, j))
            out.append("</details>")
            i = j
        else:
            out.append(line(i))
            i += 1
    return "".join(out)


def compact_json(data: dict[str, Any]) -> str:
    """A flat JSON object, one key a line, each value (the choices too) on its line."""
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in data.items())
    return "{\n" + body + "\n}" if data else "{}"


def _meta_line(meta: dict[str, Any]) -> str:
    return " \u00b7 ".join(f"{_e(k)} <b>{_e(v)}</b>" for k, v in meta.items()
                           if v is not None and v != "")


def render_run(
    res: RunResult,
    title: str,
    subtitle: str = "",
    schedule: dict[str, Any] | None = None,
    *,
    index_href: str | None = None,
    schedule_file: str | None = None,
    meta: dict[str, Any] | None = None,
) -> str:
    """A self-contained HTML page for one run: diagram, violations, trace and schedule.

    ``schedule`` is the replayable schedule (``Verdict.schedule_json()``); without it the page
    shows the run's bare choices. ``index_href`` adds a link back to the report's index;
    ``schedule_file`` names the saved schedule in the replay hint; ``meta`` (name: value, the
    None ones left out) says how the run was produced, in a line under the title.
    """
    pre = decisive_preemption(res)
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
    if meta:
        w(f'<p class="meta">Produced by: {_meta_line(meta)}</p>')
    if res.violations:
        v0 = res.violations[0]
        vsteps = {v.step for v in res.violations}
        in_trace = any(ev.subsystem == "VIOLATION" or ev.step in vsteps
                       for ev in res.log.events)
        w(f'<nav class="jump">Jump to the violation (step {v0.step}): '
          '<a href="#violation-1">in the diagram</a>'
          + (' \u00b7 <a href="#trace-violation">in the trace</a>' if in_trace else "")
          + "</nav>")
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
    if pre is not None:
        w(f'<p class="decisive">Decisive preemption: at step {pre[0]} <code>{_e(pre[2])}</code> '
          f"runs instead of <code>{_e(pre[1])}</code> (the last preemption before the "
          'violation; <a href="#preemption">in the trace</a>).</p>')
    w('<h2>Sequence diagram</h2><div class="diagram">')
    w(inline_svg(sequence_svg(res.log.events, res.violations, title, pre)))
    w("</div>")
    w("<h2>Shrunk trace</h2>")
    tasks = sorted({ev.task for ev in res.log.events})
    opts = "".join(f'<option value="{_e(t)}">{_e(t)}</option>' for t in tasks)
    w('<div class="controls"><button type="button" id="prev">\u25b2 previous</button> '
      '<button type="button" id="next">\u25bc next event</button> '
      f'<label>task <select id="task"><option value="">all</option>{opts}</select></label> '
      '<span id="pos"></span></div>')
    w(f'<div class="trace" id="trace">{trace_html(res, pre)}</div>')
    w("<h2>Schedule</h2>")
    if schedule is not None:
        f = schedule_file or "SCHEDULE.json"
        w(f'<p class="stats">Replay with <code>passthru replay {_e(f)}</code>'
          + ("" if schedule_file else " after saving this JSON as that file") + ".</p>")
        w(f'<pre class="schedule">{_e(compact_json(schedule))}</pre>')
    else:
        bare = {"choices": res.choices, "fail_nth": list(res.fail_nth)}
        w(f'<pre class="schedule">{_e(compact_json(bare))}</pre>')
    w(f"<script>{SCRIPT}</script>")
    w("</body></html>")
    return "\n".join(o) + "\n"
