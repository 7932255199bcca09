"""The report directory: an index of verdicts, a page per counterexample, schedules, JSON.

:func:`write_report` writes into ``out_dir``:

- ``index.html``: the run's metadata (passthru version, profiles, options, date), then one
  table row per verdict — scenario (with its doc), profile, design, expect, the verdict with
  its bound (``Verdict.bound_text()``), schedules, steps, time, ok/unproven/UNEXPECTED, and a
  link to the counterexample's page with its first violation;
- ``<scenario>-<profile>[-<design>].html`` per counterexample (:func:`~.html.render_run`),
  with how it was produced (:func:`page_meta`: version, profile, design, strategy, bound,
  budget, seed, time limit, faults, date) under its title;
- ``<scenario>-<profile>[-<design>].json``: its schedule, exactly ``Verdict.schedule_json()``
  as ``passthru check --save`` writes it, for ``passthru replay``;
- ``report.json``: :func:`~.json.verdicts_json`.

The date is the only wall-clock value (besides elapsed times); it appears in ``index.html``,
``report.json`` and the counterexample pages, which are otherwise deterministic, as are the
schedules.

Every file is self-contained (no network); links between them are relative, so the directory
can be moved or archived whole. Leaves out: verdicts that found nothing get a row but no page.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..check import schedfile
from ..check.runner import Verdict
from ..check.schedfile import passthru_version
from . import json as report_json
from .html import render_run

INDEX_CSS = """
body{font:14px/1.4 sans-serif;color:#222;margin:16px 20px;background:#fff}
h1{font-size:20px;margin:0 0 6px}
p.summary{margin:0 0 10px;color:#555}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td .doc{color:#666;font-size:12px}
td{white-space:nowrap}
td.wrap{white-space:normal;min-width:16em}
tr.unexpected td{background:#fdecec}
tr.unproven td{background:#fff8dc}
p.meta{margin:0 0 10px;color:#555;font-size:12px}
.ok{color:#2a7d2a}
.unproven{color:#8a6d00;font-weight:bold}
.bad{color:#c00000;font-weight:bold}
.finding{color:#a00000;font-size:12px}
"""


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _subtitle(v: Verdict) -> str:
    how = "explored completely" if v.complete else "explored"
    bound = f" (\u2264 {v.bound} preemptions)" if v.strategy == "dfs" and v.bound is not None \
        else ""
    parts = [
        f"profile {v.profile}",
        f"design {v.design}" if v.design else "",
        f"expect {v.scenario.expected(v.design)}",
        f"{v.schedules} schedule{'s' if v.schedules != 1 else ''} {how} in {v.elapsed:.2f}s",
        f"strategy {v.strategy}{bound}" + (f", seed {v.seed}" if v.strategy in ("random", "pct")
                                           else ""),
    ]
    meta = " \u00b7 ".join(p for p in parts if p)
    return f"{v.scenario.doc} \u2014 {meta}" if v.scenario.doc else meta


def page_meta(v: Verdict, date: str | None = None) -> dict[str, Any]:
    """How a counterexample was produced, for its page (None values are left out)."""
    return {
        "passthru": passthru_version(),
        "profile": v.profile,
        "design": v.design,
        "strategy": v.strategy,
        "bound": v.bound,
        "budget": v.budget,
        "seed": v.seed if v.strategy in ("random", "pct") else None,
        "time limit": f"{v.time_limit}s" if v.time_limit else None,
        "faults": "on" if v.faults else None,
        "date": date,
    }


def summary_text(verdicts: list[Verdict]) -> str:
    """"all verdicts as expected", or the unexpected and unproven counts."""
    outcomes = [report_json.outcome(v) for v in verdicts]
    bad = outcomes.count(report_json.UNEXPECTED)
    unproven = outcomes.count(report_json.UNPROVEN)
    parts = [f"{bad} unexpected verdict(s)"] if bad else []
    if unproven:
        parts.append(f"{unproven} unproven (expected safe, nothing found, but the exploration "
                     "was cut short by its budget or time limit, or only sampled)")
    return ", ".join(parts) if parts else "all verdicts as expected"


def _meta_html(meta: dict[str, Any]) -> str:
    opts = ", ".join(f"{k}={v}" for k, v in meta.get("options", {}).items()
                     if v is not None and v is not False and v != [] and v != ())
    parts = [f"passthru {meta['passthru']}",
             "profiles " + ", ".join(meta["profiles"]) if meta["profiles"] else "",
             "designs " + ", ".join(meta["designs"]) if meta["designs"] else "",
             "strategy " + ", ".join(meta["strategies"]) if meta["strategies"] else "",
             f"options {opts}" if opts else "",
             f"run {meta['date']}" if meta.get("date") else ""]
    return " \u00b7 ".join(_e(p) for p in parts if p)


def index_html(verdicts: list[Verdict], stems: list[str | None],
               meta: dict[str, Any] | None = None) -> str:
    """The report's index page; ``meta`` is :func:`~.json.meta_json` (built when not given)."""
    meta = meta if meta is not None else report_json.meta_json(verdicts)
    o: list[str] = []
    w = o.append
    w("<!DOCTYPE html>")
    w('<html lang="en"><head><meta charset="utf-8"><title>passthru check report</title>')
    w(f"<style>{INDEX_CSS}</style></head><body>")
    w("<h1>passthru check report</h1>")
    w(f'<p class="summary">{len(verdicts)} verdict(s): {_e(summary_text(verdicts))}. '
      'Machine-readable: <a href="report.json">report.json</a>.</p>')
    w(f'<p class="meta">{_meta_html(meta)}</p>')
    w("<table><thead><tr><th>scenario</th><th>profile</th><th>design</th><th>expect</th>"
      "<th>verdict</th><th>schedules</th><th>steps</th><th>time</th><th></th>"
      "<th>counterexample</th></tr></thead><tbody>")
    for v, stem in zip(verdicts, stems, strict=True):
        doc = f'<div class="doc">{_e(v.scenario.doc)}</div>' if v.scenario.doc else ""
        outcome = report_json.outcome(v)
        mark = {report_json.AS_EXPECTED: '<span class="ok">ok</span>',
                report_json.UNPROVEN: '<span class="unproven">unproven</span>',
                report_json.UNEXPECTED: '<span class="bad">UNEXPECTED</span>'}[outcome]
        row = {report_json.AS_EXPECTED: "expected", report_json.UNPROVEN: "unproven",
               report_json.UNEXPECTED: "unexpected"}[outcome]
        link = ""
        if stem is not None:
            first = _e(v.violations[0].text()) if v.violations else ""
            link = (f'<a href="{_e(stem)}.html">{_e(stem)}</a> '
                    f'(<a href="{_e(stem)}.json">schedule</a>)'
                    f'<div class="finding">{first}</div>')
        w(f'<tr class="{row}">'
          f'<td class="wrap">{_e(v.scenario.name)}{doc}</td><td>{_e(v.profile)}</td>'
          f"<td>{_e(v.design or '')}</td><td>{_e(v.scenario.expected(v.design))}</td>"
          f'<td class="wrap">{_e(v.bound_text())}</td><td class="num">{v.schedules}</td>'
          f'<td class="num">{v.steps}</td><td class="num">{v.elapsed:.2f}s</td>'
          f'<td>{mark}</td><td class="wrap">{link}</td></tr>')
    w("</tbody></table></body></html>")
    return "\n".join(o) + "\n"


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def write_report(out_dir: Path, verdicts: list[Verdict], options: dict[str, Any] | None = None,
                 date: str | None = None) -> Path:
    """Write the report for ``verdicts`` into ``out_dir`` (created); return index.html's path.

    ``options``: the command's options, recorded in report.json and the index; ``date``
    (default: now, UTC) goes only there."""
    date = date or utc_now()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stems = report_json.file_names(verdicts)
    for v, stem in zip(verdicts, stems, strict=True):
        cx = v.counterexample
        if stem is None or cx is None:
            continue
        sched = v.schedule_json()
        title = f"{v.scenario.name} @ {v.profile}" + (f" [{v.design}]" if v.design else "")
        page = render_run(cx, title, _subtitle(v), sched, index_href="index.html",
                          schedule_file=f"{stem}.json", meta=page_meta(v, date))
        (out / f"{stem}.html").write_text(page, encoding="utf-8")
        (out / f"{stem}.json").write_text(schedfile.dumps(sched), encoding="utf-8")
    data = report_json.verdicts_json(verdicts, options, date)
    (out / "report.json").write_text(schedfile.dumps(data), encoding="utf-8")
    index = out / "index.html"
    index.write_text(index_html(verdicts, stems, data["run"]), encoding="utf-8")
    return index
