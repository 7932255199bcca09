"""SVG sequence diagrams of one run's event log.

:func:`sequence_svg` draws the events of a run (:class:`passthru.sim.log.Event`) as a sequence
diagram that needs nothing but an SVG renderer:

- **Lanes**, left to right: one per task, in order of first appearance ("main" only when it
  has events), then one per subsystem that appears (kvm, gmem, dma_buf, fs, ...). A task's
  lifeline is solid from its first event to its exit, dashed elsewhere.
- **Rows**: time flows down, one row per event, in log order; the left gutter gives the step,
  alternate steps are shaded, and a run of steps with no event is compressed to a thin gap
  marked with how many steps it skips. The right-hand column repeats the event's text, so the
  trace reads beside the diagram.
- **Marks** in the task's lane: a scheduling point (``sched.run``) is a hollow dot labelled
  with the resource and the access; ``sched.spawn`` is a dashed arrow to the new task's lane;
  ``sched.exit`` ends the lifeline; a fault injection is an orange diamond; a physical
  range's change of owner or state (``phys.*``) is a grey dot. A subsystem event is an arrow
  from the task to the subsystem's lane, labelled with the event's name. Events that carry
  explaining values (a fetched pfn, an invalidate sequence, a range's owner before and
  after) are drawn like the others: their values are in the right-hand column.
- **Lock holds**: a bar in the holding task's lane from ``lock.acquire`` to ``lock.release``,
  one colour per lock, labelled with the lock's name where it is taken; nested holds sit side
  by side; a lock still held at the end of the log runs to the bottom, labelled "(held)".
- **Violations**: each ``VIOLATION.*`` event, and each given :class:`Violation` that no event
  matches (placed after its step's last event), is a red band across the whole diagram with
  the violation's kind and message; every row of a violating step is tinted. The k-th band
  has ``id="violation-k"`` (the page's jump link).
- **The decisive preemption** (given): its step's rows outlined in dashed purple, with a
  purple bar in the gutter (``class="preemption"``).

Leaves out: event arguments on the arrows (they are in the right-hand column, and in each
mark's tooltip), which task waits on which (blocking is not logged), model time, and whatever
a run did not log. The output is a pure function of its input: same events and violations,
same bytes. Elements carry classes and ``data-*`` attributes (``lane``, ``lock-bar``,
``violation``) for tools and tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from ..sim.log import Event
from ..sim.scheduler import Violation

SVG_NS = "http://www.w3.org/2000/svg"

# Events drawn as marks in the task's own lane, not as a call into a subsystem lane. ``phys``
# (hw/physmem.py: a range's owner or state changing) is physical truth recording what the
# task's kernel code did, not a subsystem it calls: a mark, and no lane in every diagram for
# the CMA carve-out reserved at boot.
TASK_LOCAL = frozenset({"sched", "lock", "VIOLATION", "fault", "ww", "phys"})

ROW = 20  # height of one event row
GAP = 12  # height of a compressed run of steps with no events
GUTTER = 52  # step-number column
LANE_MIN = 124
CHAR = 6.7  # advance of one character of 11px monospace
DETAIL_MAX = 96  # characters of event text shown in the right-hand column
TOP = 92  # title, legend and lane headers
BAR_W = 7
BAR_STEP = 9

LOCK_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
                "#ff9da7")
SUBSYS_COLOURS = ("#6b8fd6", "#d08c3c", "#5aa469", "#a66fb5", "#4fa3a8", "#b8a03a",
                  "#8d6e63", "#d67a8a")

STYLE = """
.title{font:bold 14px sans-serif;fill:#222}
.legend{font:11px sans-serif;fill:#555}
.lanehead{font:bold 12px sans-serif;fill:#222}
.lanehead-bottom{font:11px sans-serif;fill:#777}
.group{font:10px sans-serif;fill:#888;letter-spacing:1px}
.step{font:11px monospace;fill:#666}
.detail{font:11px monospace;fill:#222}
.detail .who{fill:#888}
.lbl{font:10px sans-serif;fill:#333;paint-order:stroke;stroke:#fff;stroke-width:3px;
stroke-linejoin:round}
.sched-lbl{font:9px sans-serif;fill:#777;paint-order:stroke;stroke:#fff;stroke-width:3px;
stroke-linejoin:round}
.lock-lbl{font:bold 10px sans-serif;paint-order:stroke;stroke:#fff;stroke-width:3px;
stroke-linejoin:round}
.vtext{font:bold 11px monospace;fill:#a00000}
.gap{font:italic 9px sans-serif;fill:#999}
"""


def _attr(v: object) -> str:
    return quoteattr(str(v))


def _text(x: float, y: float, s: str, cls: str, anchor: str = "start", extra: str = "") -> str:
    a = f' text-anchor="{anchor}"' if anchor != "start" else ""
    return f'<text x="{_n(x)}" y="{_n(y)}" class="{cls}"{a}{extra}>{escape(s)}</text>'


def _n(v: float) -> str:
    """A coordinate: integers print bare, others with one decimal (stable across runs)."""
    r = round(v, 1)
    return str(int(r)) if r == int(r) else f"{r:.1f}"


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def _wrap(s: str, n: int) -> list[str]:
    """Break ``s`` into lines of at most ``n`` characters, at spaces where possible."""
    out: list[str] = []
    line = ""
    for word in s.split(" "):
        while len(word) > n:
            if line:
                out.append(line)
                line = ""
            out.append(word[:n])
            word = word[n:]
        if not line:
            line = word
        elif len(line) + 1 + len(word) <= n:
            line += " " + word
        else:
            out.append(line)
            line = word
    if line or not out:
        out.append(line)
    return out


def _body(ev: Event) -> str:
    """The event's text without its step and task: ``subsystem.event key=value ...``."""
    return ev.text()[len(f"{ev.step:5d} {ev.task:<10} "):]


def _arg(ev: Event, key: str) -> str | None:
    for k, v in ev.args:
        if k == key:
            return str(v)
    return None


@dataclass
class _Row:
    y: int
    h: int
    step: int
    ev: Event | None = None  # None: a violation no event records
    viol: Violation | None = None  # the violation this row reports, if any
    gap: int = 0  # >0: a compressed run of this many steps with no events
    vlines: list[str] = field(default_factory=list)

    @property
    def mid(self) -> int:
        return self.y + min(self.h, ROW) // 2


@dataclass
class _Lane:
    name: str
    kind: str  # "task" or "subsystem"
    x: int  # centre
    w: int
    colour: str = "#888"


def _same(v: Violation, ev: Event) -> bool:
    return (ev.subsystem == "VIOLATION" and ev.event == v.kind and ev.step == v.step
            and ev.task == v.task)


def _rows(events: list[Event], violations: list[Violation], vchars: int) -> list[_Row]:
    """Lay rows out top to bottom: one per event, a band per violation, gaps compressed."""
    # Pair each violation with the first unclaimed VIOLATION event recording it.
    claimed: dict[int, Violation] = {}
    orphans: list[Violation] = []
    for v in violations:
        for i, ev in enumerate(events):
            if i not in claimed and _same(v, ev):
                claimed[i] = v
                break
        else:
            orphans.append(v)
    items: list[tuple[int, Event | None, Violation | None]] = []
    for i, ev in enumerate(events):
        got = claimed.get(i)
        if got is None and ev.subsystem == "VIOLATION":
            got = Violation(ev.event, str(_arg(ev, "msg") or ""), ev.step, ev.task)
        items.append((ev.step, ev, got))
    for v in orphans:  # after the last event of its step (or of an earlier one)
        at = len(items)
        while at > 0 and items[at - 1][0] > v.step:
            at -= 1
        items.insert(at, (v.step, None, v))

    rows: list[_Row] = []
    y = TOP
    prev: int | None = None
    for step, item, viol in items:
        if prev is not None and step > prev + 1:
            rows.append(_Row(y, GAP, prev + 1, gap=step - prev - 1))
            y += GAP
        prev = step if prev is None else max(prev, step)
        if viol is not None:
            lines = _wrap(f"\u2716 {viol.kind}: {viol.message}", vchars)
            h = ROW + (len(lines) - 1) * 14 + 4
            rows.append(_Row(y, h, step, item, viol, vlines=lines))
        else:
            h = ROW
            rows.append(_Row(y, h, step, item))
        y += h
    return rows


def _lanes(events: list[Event], violations: list[Violation]) -> list[_Lane]:
    tasks: list[str] = []
    subs: list[str] = []
    for ev in events:
        if ev.task not in tasks:
            tasks.append(ev.task)
        if ev.subsystem not in TASK_LOCAL and ev.subsystem not in subs:
            subs.append(ev.subsystem)
    for v in violations:
        if v.task not in tasks:
            tasks.append(v.task)
    lanes: list[_Lane] = []
    x = GUTTER
    for name in tasks:
        w = max(LANE_MIN, int(len(name) * 7.5) + 28)
        lanes.append(_Lane(name, "task", x + w // 2, w))
        x += w
    for i, name in enumerate(subs):
        w = max(LANE_MIN, int(len(name) * 7.5) + 28)
        lanes.append(_Lane(name, "subsystem", x + w // 2, w, SUBSYS_COLOURS[i % 8]))
        x += w
    return lanes


@dataclass
class _Bar:
    task: str
    lock: str
    slot: int
    start: int  # row index
    end: int | None = None


def _lock_bars(rows: list[_Row]) -> list[_Bar]:
    bars: list[_Bar] = []
    open_: dict[str, list[_Bar]] = {}
    for i, r in enumerate(rows):
        ev = r.ev
        if ev is None or ev.subsystem != "lock":
            continue
        name = _arg(ev, "lock") or "?"
        held = open_.setdefault(ev.task, [])
        if ev.event == "acquire":
            used = {b.slot for b in held}
            slot = next(s for s in range(len(held) + 1) if s not in used)
            b = _Bar(ev.task, name, slot, i)
            held.append(b)
            bars.append(b)
        elif ev.event == "release":
            for b in reversed(held):
                if b.lock == name:
                    b.end = i
                    held.remove(b)
                    break
    return bars


def sequence_svg(events: list[Event], violations: list[Violation], title: str = "",
                 preemption: tuple[int, str, str] | None = None) -> str:
    """A standalone SVG sequence diagram of ``events``, with ``violations`` highlighted.

    ``preemption``: (step, the task preempted, the task chosen instead), outlined in purple
    (``class="preemption"``) as the decisive preemption."""
    lanes = _lanes(events, violations)
    by_name = {ln.name: ln for ln in lanes}
    task_lanes = [ln for ln in lanes if ln.kind == "task"]
    sub_lanes = [ln for ln in lanes if ln.kind == "subsystem"]
    lanes_end = (lanes[-1].x + lanes[-1].w // 2) if lanes else GUTTER + LANE_MIN
    # Room for the labels of the last task lane when no subsystem lane follows it.
    detail_x = lanes_end + (20 if sub_lanes or not lanes else 70)
    bodies = [_body(ev) for ev in events]
    longest = max((len(ev.task) + 1 + len(b) for ev, b in zip(events, bodies, strict=True)),
                  default=40)
    dchars = max(48, min(DETAIL_MAX, longest))
    rows = _rows(events, violations, dchars)
    bottom = rows[-1].y + rows[-1].h if rows else TOP + ROW
    width = int(detail_x + dchars * CHAR + 16)
    height = bottom + 34
    bars = _lock_bars(rows)
    lock_colour: dict[str, str] = {}
    for b in bars:
        lock_colour.setdefault(b.lock, LOCK_COLOURS[len(lock_colour) % len(LOCK_COLOURS)])
    # How many bar slots each task's lane uses at each row: labels go right of them.
    reach: dict[tuple[int, str], int] = {}
    for b in bars:
        for i in range(b.start, (len(rows) - 1 if b.end is None else b.end) + 1):
            reach[i, b.task] = max(reach.get((i, b.task), 0), b.slot + 1)
    bar_at = {b.start: b for b in bars} | {b.end: b for b in bars if b.end is not None}
    vsteps = sorted({r.step for r in rows if r.viol is not None})

    o: list[str] = []
    w = o.append
    w(f'<svg xmlns="{SVG_NS}" class="passthru-seq" width="{width}" height="{height}" '
      f'viewBox="0 0 {width} {height}" font-family="sans-serif" '
      f'data-lanes={_attr(" ".join(ln.name for ln in lanes))} '
      f'data-violation-steps="{" ".join(map(str, vsteps))}">')
    w(f"<title>{escape(title or 'sequence diagram')}</title>")
    w(f"<style>{STYLE}</style>")
    w('<defs><marker id="pt-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
      'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
      'fill="#444"/></marker></defs>')
    w(f'<rect class="background" x="0" y="0" width="{width}" height="{height}" fill="#fff"/>')
    if title:
        w(_text(GUTTER, 18, title, "title"))
    w(_text(GUTTER, 38, "\u25cb scheduling point   \u2192 call into a subsystem   "
            "\u2503 lock held   \u25c6 fault injected   red band: violation"
            + ("   purple outline: decisive preemption" if preemption is not None else ""),
            "legend"))

    # Step shading: alternate steps, tint the violating ones.
    w('<g class="steps">')
    shade = False
    last_step: int | None = None
    for r in rows:
        if r.gap:
            w(f'<rect x="0" y="{r.y}" width="{width}" height="{r.h}" fill="#f4f4f4"/>')
            w(_text(GUTTER + 4, r.y + 9, f"\u22ee {r.gap} step{'s' if r.gap > 1 else ''} "
                    "without events", "gap"))
            continue
        if r.step != last_step:
            shade = not shade
            last_step = r.step
        fill = "#fdecec" if r.step in vsteps else ("#f6f7fb" if shade else "")
        if fill:
            w(f'<rect x="0" y="{r.y}" width="{width}" height="{r.h}" fill="{fill}"/>')
    w("</g>")

    # Violation bands (the k-th has id="violation-k").
    nviol = 0
    for r in rows:
        if r.viol is None:
            continue
        v = r.viol
        nviol += 1
        w(f'<rect class="violation" id="violation-{nviol}" data-step="{v.step}" '
          f'data-kind={_attr(v.kind)} '
          f'data-task={_attr(v.task)} x="0" y="{r.y}" width="{width}" height="{r.h}" '
          f'fill="#f7b2b2" fill-opacity="0.75" stroke="#d00" stroke-width="1">'
          f"<title>{escape(v.text())}</title></rect>")

    # The decisive preemption: its step's rows outlined, a bar in the gutter.
    prows = [r for r in rows if preemption is not None and not r.gap and r.ev is not None
             and r.step == preemption[0]]
    if preemption is not None and prows:
        step, was, now = preemption
        y1, y2 = prows[0].y, prows[-1].y + prows[-1].h
        tip = escape(f"decisive preemption at step {step}: {now} runs instead of {was}")
        w(f'<g class="preemption" data-step="{step}" data-preempted={_attr(was)} '
          f'data-chosen={_attr(now)}><title>{tip}</title>'
          f'<rect x="1" y="{y1}" width="{width - 2}" height="{y2 - y1}" fill="none" '
          f'stroke="#7b2fbf" stroke-width="2" stroke-dasharray="6 3"/>'
          f'<rect x="0" y="{y1}" width="6" height="{y2 - y1}" fill="#7b2fbf"/></g>')

    # Lifelines.
    w('<g class="lifelines">')
    for ln in sub_lanes:
        w(f'<line x1="{ln.x}" y1="{TOP}" x2="{ln.x}" y2="{bottom}" stroke="{ln.colour}" '
          'stroke-width="1" stroke-dasharray="4 3"/>')
    for ln in task_lanes:
        w(f'<line x1="{ln.x}" y1="{TOP}" x2="{ln.x}" y2="{bottom}" stroke="#bbb" '
          'stroke-width="1" stroke-dasharray="2 3"/>')
        mine = [r for r in rows if r.ev is not None and r.ev.task == ln.name]
        if mine:
            first = mine[0].mid
            exits = [r for r in mine if r.ev is not None and r.ev.subsystem == "sched"
                    and r.ev.event == "exit"]
            last = exits[0].mid if exits else mine[-1].mid
            w(f'<line x1="{ln.x}" y1="{first}" x2="{ln.x}" y2="{last}" stroke="#333" '
              'stroke-width="2"/>')
    if sub_lanes and task_lanes:
        sx = sub_lanes[0].x - sub_lanes[0].w // 2
        w(f'<line x1="{sx}" y1="{TOP - 36}" x2="{sx}" y2="{bottom + 30}" stroke="#ccc"/>')
    w("</g>")

    # Lock bars.
    w('<g class="locks">')
    for b in bars:
        ln = by_name[b.task]
        x = ln.x + 5 + b.slot * BAR_STEP
        y1 = rows[b.start].mid
        y2 = rows[b.end].mid if b.end is not None else bottom
        h = max(y2 - y1, 6)
        col = lock_colour[b.lock]
        held = ' stroke-dasharray="3 2"' if b.end is None else ""
        w(f'<rect class="lock-bar" data-lock={_attr(b.lock)} data-task={_attr(b.task)} '
          f'x="{x}" y="{y1}" width="{BAR_W}" height="{h}" rx="2" fill="{col}" '
          f'fill-opacity="0.85" stroke="{col}"{held}><title>'
          f"{escape(f'{b.task} holds {b.lock}')}</title></rect>")
        if b.end is None:
            w(_text(x + BAR_W + 3, bottom - 4, f"{b.lock} (held)", "lock-lbl",
                    extra=f' fill="{col}"'))
    w("</g>")

    # Marks, arrows and their labels.
    w('<g class="events">')
    for i, r in enumerate(rows):
        ev = r.ev
        if ev is None:
            if r.viol is not None and r.viol.task in by_name:
                _cross(w, by_name[r.viol.task].x, r.mid)
            continue
        ln = by_name[ev.task]
        tip = f"<title>{escape(ev.text())}</title>"
        y = r.mid
        depth = reach.get((i, ev.task), 0)
        lx = ln.x + 8 + depth * BAR_STEP  # right of the lock bars
        room = max(6, int((detail_x - 6 - lx) / 5.4))  # characters before the text column
        if ev.subsystem == "VIOLATION":
            _cross(w, ln.x, y)
        elif ev.subsystem == "sched" and ev.event == "run":
            at, op = _arg(ev, "at") or "", _arg(ev, "op") or ""
            if op == "start":
                w(f'<path class="mark start" d="M{ln.x - 5},{y - 5} L{ln.x + 5},{y} '
                  f'L{ln.x - 5},{y + 5} z" fill="#2a7d2a">{tip}</path>')
                w(_text(lx, y + 3, "start", "sched-lbl"))
            else:
                w(f'<circle class="mark point" cx="{ln.x}" cy="{y}" r="3.5" fill="#fff" '
                  f'stroke="#555" stroke-width="1.5">{tip}</circle>')
                w(_text(lx, y + 3, _clip(f"{at} ({op})", min(room, 30)), "sched-lbl"))
        elif ev.subsystem == "sched" and ev.event == "spawn":
            child = _arg(ev, "task") or "?"
            w(f'<circle class="mark" cx="{ln.x}" cy="{y}" r="3" fill="#333">{tip}</circle>')
            if child in by_name and child != ev.task:
                cx = by_name[child].x
                d = -6 if cx > ln.x else 6
                w(f'<line class="spawn" x1="{ln.x}" y1="{y}" x2="{cx + d}" y2="{y}" '
                  'stroke="#444" stroke-dasharray="4 2" marker-end="url(#pt-arrow)"/>')
                w(_text((ln.x + cx) / 2, y - 3, f"spawn {child}", "lbl", "middle"))
            else:
                w(_text(lx, y + 3, f"spawn {child}", "lbl"))
        elif ev.subsystem == "sched" and ev.event == "exit":
            w(f'<rect class="mark exit" x="{ln.x - 7}" y="{y - 2}" width="14" height="4" '
              f'fill="#333">{tip}</rect>')
            w(_text(lx, y + 3, "exit", "sched-lbl"))
        elif ev.subsystem == "lock":
            name = _arg(ev, "lock") or "?"
            col = lock_colour.get(name, "#555")
            hold = bar_at.get(i)
            bx = ln.x + 5 + (hold.slot if hold else 0) * BAR_STEP
            cap = (f'<line x1="{bx - 3}" y1="{y}" x2="{bx + BAR_W + 3}" y2="{y}" '
                   f'stroke="{col}" stroke-width="2">{tip}</line>')
            w(cap)
            if ev.event == "acquire":
                w(_text(lx + 2, y + 4, _clip(name, room * 5 // 6), "lock-lbl",
                        extra=f' fill="{col}"'))
        elif ev.subsystem == "fault":
            w(f'<path class="mark fault" d="M{ln.x},{y - 6} L{ln.x + 6},{y} L{ln.x},{y + 6} '
              f'L{ln.x - 6},{y} z" fill="#e67e22">{tip}</path>')
            w(_text(lx, y + 3, f"fault {_arg(ev, 'kind') or ''}".strip(), "lbl"))
        elif ev.subsystem in TASK_LOCAL:  # other scheduler or lock events
            w(f'<circle class="mark" cx="{ln.x}" cy="{y}" r="3" fill="#777">{tip}</circle>')
            w(_text(lx, y + 3, f"{ev.subsystem}.{ev.event}", "sched-lbl"))
        else:
            sub = by_name[ev.subsystem]
            x2 = sub.x - 6 if sub.x > ln.x else sub.x + 6
            w(f'<circle class="mark" cx="{ln.x}" cy="{y}" r="3" fill="#333"/>')
            w(f'<line class="call" data-subsystem={_attr(ev.subsystem)} x1="{ln.x}" y1="{y}" '
              f'x2="{x2}" y2="{y}" stroke="#444" stroke-width="1.2" '
              f'marker-end="url(#pt-arrow)">{tip}</line>')
            w(f'<rect x="{sub.x - 4}" y="{y - 6}" width="8" height="12" rx="1" '
              f'fill="{sub.colour}">{tip}</rect>')
            w(_text((ln.x + sub.x) / 2, y - 3, ev.event, "lbl", "middle"))
    w("</g>")

    # Step numbers, the event text column, violation texts.
    w('<g class="text">')
    last_step = None
    for r in rows:
        if r.gap:
            continue
        if r.step != last_step:
            w(_text(GUTTER - 8, r.mid + 4, str(r.step), "step", "end"))
            last_step = r.step
        if r.viol is not None:
            for k, line in enumerate(r.vlines):
                w(_text(detail_x, r.y + 14 + 14 * k, line, "vtext"))
            continue
        if r.ev is not None:
            body = _clip(_body(r.ev), dchars - len(r.ev.task) - 1)
            w(f'<text x="{detail_x}" y="{r.mid + 4}" class="detail">'
              f'<tspan class="who">{escape(r.ev.task)}</tspan> {escape(body)}</text>')
    w("</g>")

    # Lane headers, top and bottom.
    w('<g class="lanes">')
    if task_lanes:
        w(_text(task_lanes[0].x - task_lanes[0].w // 2 + 4, TOP - 36, "TASKS", "group"))
    if sub_lanes:
        w(_text(sub_lanes[0].x - sub_lanes[0].w // 2 + 4, TOP - 36, "SUBSYSTEMS", "group"))
    w(_text(GUTTER - 8, TOP - 10, "step", "step", "end"))
    w(_text(detail_x, TOP - 10, "event", "step"))
    for ln in lanes:
        fill, stroke = (("#fff4d6", "#c9a227") if ln.kind == "task" else ("#e8effc", ln.colour))
        bw = ln.w - 14
        w(f'<g class="lane {ln.kind}" data-lane={_attr(ln.name)}>'
          f'<rect x="{ln.x - bw // 2}" y="{TOP - 28}" width="{bw}" height="22" rx="4" '
          f'fill="{fill}" stroke="{stroke}"/>'
          + _text(ln.x, TOP - 13, ln.name, "lanehead", "middle")
          + _text(ln.x, bottom + 20, ln.name, "lanehead-bottom", "middle") + "</g>")
    w("</g>")
    w("</svg>")
    return "\n".join(o) + "\n"


def _cross(w: Callable[[str], None], x: int, y: int) -> None:
    w(f'<path class="mark violation-mark" d="M{x - 5},{y - 5} L{x + 5},{y + 5} M{x + 5},{y - 5} '
      f'L{x - 5},{y + 5}" stroke="#c00" stroke-width="2.5"/>')
