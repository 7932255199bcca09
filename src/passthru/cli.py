"""The command line: ``passthru check | list | run | replay``.

Exit status: 0 when every verdict is what the scenario expects, 1 when one is not (an
unexpected violation, or a known bug the checker failed to find), 2 on usage errors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .check.discover import builtin, from_paths
from .check.explore import ReplayChooser
from .check.runner import SCHEDULE_VERSION, ScenarioError, Verdict, run_once
from .check.scenario import Scenario
from .kernel.profile import PROFILES

console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)


def _load(paths: tuple[str, ...]) -> list[Scenario]:
    try:
        return from_paths(list(paths)) if paths else builtin()
    except (FileNotFoundError, ImportError, SyntaxError) as e:
        raise click.UsageError(str(e)) from e


def _check_profile(profile: str | None) -> None:
    if profile is not None and profile not in PROFILES:
        raise click.BadParameter(
            f"unknown profile {profile!r}; known: {', '.join(sorted(PROFILES))}",
            param_hint="--profile")


@click.group()
@click.version_option(package_name="passthru")
def main() -> None:
    """passthru: an executable model of the Linux host stack for device passthrough."""


@main.command("list")
@click.argument("paths", nargs=-1)
def list_cmd(paths: tuple[str, ...]) -> None:
    """List scenarios (built-in, or from PATHS)."""
    t = Table("scenario", "expect", "profiles", "what")
    for sc in _load(paths):
        t.add_row(sc.name, sc.expect, ",".join(sc.profiles), sc.doc)
    console.print(t)


def _variants(scenarios: list[Scenario], profile: str | None,
              design: str | None) -> list[tuple[Scenario, str, str | None]]:
    out: list[tuple[Scenario, str, str | None]] = []
    for sc in scenarios:
        seen = set()
        for prof, des in sc.variants():
            prof = profile or prof
            if design is not None:
                if sc.designs and design not in sc.designs:
                    continue
                des = design if sc.designs else None
            if (prof, des) not in seen:
                seen.add((prof, des))
                out.append((sc, prof, des))
    return out


STRATEGIES = ["dfs", "dpor", "pct", "random"]


@main.command("check")
@click.argument("paths", nargs=-1)
@click.option("--profile", help="Run every scenario under this profile only.")
@click.option("--design", help="Run every scenario that has designs under this one only.")
@click.option("--scenario", "-k", "only", help="Only scenarios whose name contains this.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="dfs", show_default=True)
@click.option("--budget", type=click.IntRange(min=1), default=20000, show_default=True,
              help="Most schedules per scenario variant.")
@click.option("--time", "time_limit", type=click.FloatRange(min=0.0), default=None,
              help="Seconds per scenario variant (default: no limit).")
@click.option("--preemptions", type=click.IntRange(min=0), default=2, show_default=True,
              help="Preemption bound of the DFS.")
@click.option("--faults/--no-faults", default=False, show_default=True,
              help="Also fail the Nth fault point, for every N (the kernel's fail_nth).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (variants, or seed ranges of random/pct).")
@click.option("--save", type=click.Path(file_okay=False), help="Write counterexamples here.")
@click.option("--report", type=click.Path(file_okay=False),
              help="Write an HTML + JSON report here.")
def check_cmd(paths: tuple[str, ...], profile: str | None, design: str | None,
              only: str | None, strategy: str, budget: int, time_limit: float | None,
              preemptions: int, faults: bool, seed: int, jobs: int, save: str | None,
              report: str | None) -> None:
    """Explore every scenario's schedules and print a verdict table."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .check.parallel import check_many, check_seeds_parallel

    _check_profile(profile)
    scenarios = [sc for sc in _load(paths) if not only or only in sc.name]
    if not scenarios:
        raise click.UsageError("no scenarios found")
    tasks = _variants(scenarios, profile, design)
    if not tasks:
        raise click.UsageError(f"no scenario has design {design!r}")
    kw = dict(strategy=strategy, bound=preemptions, budget=budget, seed=seed,
              time_limit=time_limit, faults=faults)
    t = Table("scenario", "profile", "expect", "verdict", "schedules", "steps", "time", "")
    bad = 0
    findings: list[str] = []
    verdicts: list[Verdict] = []
    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                        console=console, transient=True, disable=not console.is_terminal)
    with progress:
        bar = progress.add_task("exploring", total=len(tasks))

        def tick() -> None:
            progress.advance(bar)

        if jobs > 1 and strategy in ("random", "pct") and len(tasks) == 1:
            sc0, p0, d0 = tasks[0]
            results: list[Verdict | ScenarioError] = [
                check_seeds_parallel(sc0, p0, d0, jobs, **kw)]
        else:
            results = list(check_many(tasks, jobs, on_done=tick, **kw))
    for (sc, prof, des), v in zip(tasks, results, strict=True):
        if isinstance(v, ScenarioError):
            console.print(f"[red]error[/red] {escape(str(v))}")
            bad += 1
            continue
        verdicts.append(v)
        verdict = "violation" if v.found else ("safe" if v.complete else "none found")
        mark = "[green]as expected[/green]" if v.ok else "[red]UNEXPECTED[/red]"
        bad += not v.ok
        label = sc.name + (f" [{des}]" if des else "")
        t.add_row(escape(label), prof, sc.expect, verdict, str(v.schedules), str(v.steps),
                  f"{v.elapsed:.2f}s", mark)
        if v.found:
            findings.append(f"{label} @ {prof}: {v.violations[0].text()}")
            if save:
                out = Path(save)
                out.mkdir(parents=True, exist_ok=True)
                f = out / f"{sc.name}-{prof}{'-' + des if des else ''}.json"
                f.write_text(json.dumps(v.schedule_json(), indent=1) + "\n")
    console.print(t)
    for line in findings:
        console.print("  " + escape(line))
    if report:
        from .report import write_report

        index = write_report(Path(report), verdicts)
        console.print(f"report: {index}")
    console.print(f"{bad} unexpected verdict(s)" if bad else "all verdicts as expected")
    sys.exit(1 if bad else 0)


@main.command("compare")
@click.argument("paths", nargs=-1)
@click.option("--profile", "profiles", multiple=True, help="Profiles (default: each "
              "scenario's own).")
@click.option("--scenario", "-k", "only", help="Only scenarios whose name contains this.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="dfs", show_default=True)
@click.option("--budget", type=click.IntRange(min=1), default=20000, show_default=True)
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True)
def compare_cmd(paths: tuple[str, ...], profiles: tuple[str, ...], only: str | None,
                strategy: str, budget: int, jobs: int) -> None:
    """Scenarios × profiles/designs: one verdict per cell."""
    from .check.parallel import check_many

    for p in profiles:
        _check_profile(p)
    scenarios = [sc for sc in _load(paths) if not only or only in sc.name]
    if not scenarios:
        raise click.UsageError("no scenarios found")
    tasks: list[tuple[Scenario, str, str | None]] = []
    for sc in scenarios:
        for prof, des in sc.variants():
            for p in (profiles or (prof,)):
                if (sc, p, des) not in tasks:
                    tasks.append((sc, p, des))
    cols = sorted({f"{p}{'/' + d if d else ''}" for _, p, d in tasks})
    cells: dict[tuple[str, str], str] = {}
    bad = 0
    for (sc, p, d), v in zip(tasks, check_many(tasks, jobs, strategy=strategy,
                                               budget=budget), strict=True):
        col = f"{p}{'/' + d if d else ''}"
        if isinstance(v, ScenarioError):
            cells[(sc.name, col)] = "[red]error[/red]"
            bad += 1
            continue
        word = "violation" if v.found else ("safe" if v.complete else "none found")
        bad += not v.ok
        cells[(sc.name, col)] = word if v.ok else f"[red]{word}![/red]"
    t = Table("scenario", "expect", *cols)
    for sc in scenarios:
        t.add_row(sc.name, sc.expect, *(cells.get((sc.name, c), "-") for c in cols))
    console.print(t)
    console.print("'!' marks a verdict the scenario does not expect" if bad else
                  "all verdicts as expected")
    sys.exit(1 if bad else 0)


@main.command("matrix")
@click.option("--profile", "profiles", multiple=True,
              help="Profiles to compare (default: linux-6.19 and linux-7.1).")
def matrix_cmd(profiles: tuple[str, ...]) -> None:
    """Print the dma-buf exporter × importer × profile compatibility matrix."""
    from .check.dma_buf_matrix import EXPORTERS, IMPORTERS, cell

    profs = list(profiles) or ["linux-6.19", "linux-7.1"]
    for p in profs:
        _check_profile(p)
    t = Table("exporter", "importer", *profs)
    for e in EXPORTERS:
        for i in IMPORTERS:
            t.add_row(e, i, *(cell(e, i, p).result for p in profs))
    console.print(t)


def _find(name: str, paths: tuple[str, ...]) -> Scenario:
    for sc in _load(paths):
        if sc.name == name:
            return sc
    raise click.UsageError(f"no scenario named {name!r} (see `passthru list`)")


def _print_run(res: Any) -> None:
    sys.stdout.write(res.log.text())
    for v in res.violations:
        console.print(f"[red]{escape(v.text())}[/red]")
    console.print(f"schedule: {json.dumps(res.choices)}")


@main.command("run")
@click.argument("name")
@click.argument("paths", nargs=-1)
@click.option("--profile", help="Profile (default: the scenario's first).")
@click.option("--design", help="Coordination design.")
@click.option("--schedule", "schedule", type=click.Path(exists=True, dir_okay=False),
              help="A schedule JSON file (from check --save).")
@click.option("--trace", type=click.Choice(["text", "html"]), default="text", show_default=True,
              help="Print the event log, or write an HTML page with the sequence diagram.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where --trace html writes (default: NAME.html).")
def run_cmd(name: str, paths: tuple[str, ...], profile: str | None, design: str | None,
            schedule: str | None, trace: str, out: str | None) -> None:
    """Run one scenario under one schedule and print its event log (or draw it)."""
    _check_profile(profile)
    sc = _find(name, paths)
    choices: list[int] = []
    fail: frozenset[int] = frozenset()
    if schedule:
        data = _read_schedule(schedule)
        choices = data["choices"]
        fail = frozenset(data.get("fail_nth", []))
    prof = profile or sc.profiles[0]
    res = run_once(sc, prof, design, ReplayChooser(choices), fail_nth=fail)
    if trace == "html":
        from .report.html import render_run

        path = Path(out or f"{sc.name}.html")
        sched = {"version": SCHEDULE_VERSION, "scenario": sc.name, "profile": prof,
                 "design": design, "choices": res.choices, "fail_nth": list(res.fail_nth)}
        path.write_text(render_run(res, sc.name, f"{prof} · {sc.doc}", schedule=sched))
        console.print(f"wrote {path}")
    else:
        _print_run(res)
    sys.exit(1 if res.violated else 0)


def _read_schedule(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise click.UsageError(f"{path}: not a schedule file: {e}") from e
    if not isinstance(data, dict) or data.get("version") != SCHEDULE_VERSION or not isinstance(
            data.get("choices"), list) or "scenario" not in data or "profile" not in data:
        raise click.UsageError(f"{path}: malformed schedule (want version {SCHEDULE_VERSION} "
                               "with scenario, profile and choices)")
    return data


@main.command("replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("paths", nargs=-1)
def replay_cmd(file: str, paths: tuple[str, ...]) -> None:
    """Replay a saved counterexample and print its event log."""
    data = _read_schedule(file)
    _check_profile(data["profile"])
    sc = _find(data["scenario"], paths)
    res = run_once(sc, data["profile"], data.get("design"), ReplayChooser(data["choices"]),
                   fail_nth=frozenset(data.get("fail_nth", [])))
    _print_run(res)
    sys.exit(1 if res.violated else 0)


if __name__ == "__main__":
    main()
