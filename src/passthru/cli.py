"""The command line: ``passthru check | compare | list | run | replay | matrix``.

- ``check [PATHS]``: explore every scenario variant and print the verdict table;
- ``compare [PATHS]``: scenarios × profiles/designs, one verdict per cell;
- ``list [PATHS]``: the scenarios (built-in, or from PATHS);
- ``run NAME [PATHS]``: one run under one schedule: its event log, or an HTML trace;
- ``replay FILE [PATHS]``: a saved counterexample, byte for byte;
- ``matrix``: the dma-buf exporter × importer × profile table, each cell computed by a run.

Exit status: 0 when no verdict contradicts what the scenario expects, 1 when one does (an
unexpected violation, or a known bug the checker failed to find), 2 on usage errors. A
scenario expected safe whose exploration was cut short (budget, time limit, sampling) and
found nothing is reported as "unproven", not as a pass — but exits 0: nothing contradicted.

Every run is bounded (``--max-steps`` steps per schedule, ``--time`` checked at every
scheduling point); a set-up that loops in pure Python without ever reaching a scheduling point
cannot be interrupted. Errors in what the user gave (files, options, scenario files that fail
to import, output directories that cannot be written) are one line and exit 2, never a
traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .check import schedfile
from .check.discover import builtin, from_paths
from .check.explore import ReplayChooser
from .check.parallel import check_many, check_seeds_parallel
from .check.runner import RunResult, ScenarioError, Verdict, run_once
from .check.scenario import Scenario
from .kernel.profile import DESIGNS, PROFILES
from .report import write_report
from .report.html import render_run
from .report.json import UNEXPECTED, UNPROVEN, outcome, short_text, variant_name
from .sim.scheduler import DEFAULT_MAX_STEPS

console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)


def _load(paths: tuple[str, ...]) -> list[Scenario]:
    try:
        return from_paths(list(paths)) if paths else builtin()
    except (FileNotFoundError, ImportError, SyntaxError) as e:
        raise click.UsageError(str(e)) from e


def _check_profile(profile: str | None) -> None:
    if profile is not None and profile not in PROFILES:
        hint = ""
        if "," in profile:
            hint = " (to give several, repeat the flag: --profile A --profile B)"
        raise click.BadParameter(
            f"unknown profile {profile!r}; known: {', '.join(sorted(PROFILES))}{hint}",
            param_hint="--profile")


def _check_design(design: str | None) -> None:
    if design is not None and design not in DESIGNS:
        raise click.BadParameter(f"unknown design {design!r}; known: {', '.join(DESIGNS)}",
                                 param_hint="--design")


def _writable_dir(path: str, what: str) -> Path:
    """``path`` created as a directory, or a one-line usage error (exit 2)."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise click.UsageError(f"cannot write {what} to {path}: {e.strerror or e}") from e
    return out


def _write(path: Path, text: str, what: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise click.UsageError(f"cannot write {what} {path}: {e.strerror or e}") from e


MAX_STEPS = click.option(
    "--max-steps", type=click.IntRange(min=1), default=DEFAULT_MAX_STEPS, show_default=True,
    help="Steps per schedule; a run that reaches it ends with a 'step-bound' violation "
    "(a livelock, or a loop that needs more).")

STRATEGY_HELP = (
    "How to explore: dfs (bounded preemptions; proves safety within the bound), dpor "
    "(partial-order reduction; proves safety), full (no reduction; the cross-check), pct "
    "and random (sampling; prove nothing). One line each under Strategies in check -h.")

SAMPLING_BUDGET = 300  # the built-in library samples in a few seconds
SYSTEMATIC_BUDGET = 20000
BUDGET_HELP = (f"Most schedules per scenario variant [default: {SYSTEMATIC_BUDGET} for "
               f"dfs/dpor/full, {SAMPLING_BUDGET} for pct/random].")


def _budget(budget: int | None, strategy: str) -> int:
    if budget is not None:
        return budget
    return SAMPLING_BUDGET if strategy in ("pct", "random") else SYSTEMATIC_BUDGET


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="passthru")
def main() -> None:
    """passthru: an executable model of the Linux host stack for device passthrough."""


@main.command("list")
@click.argument("paths", nargs=-1)
def list_cmd(paths: tuple[str, ...]) -> None:
    """List scenarios (built-in, or from PATHS)."""
    t = Table("scenario", "expect", "profiles", "what")
    t.columns[0].overflow = "fold"
    t.columns[2].overflow = "fold"
    for sc in _load(paths):
        t.add_row(escape(sc.name), sc.expect_text(), ", ".join(sc.profiles), escape(sc.doc))
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


STRATEGIES = ["dfs", "dpor", "full", "pct", "random"]

OUTCOME_MARK = {UNEXPECTED: "[red]UNEXPECTED[/red]", UNPROVEN: "[yellow]unproven[/yellow]"}


@main.command("check")
@click.argument("paths", nargs=-1)
@click.option("--profile", help="Run every scenario under this profile only.")
@click.option("--design", help="Run every scenario that has designs under this one only "
              f"({', '.join(DESIGNS)}).")
@click.option("--scenario", "-k", "only", help="Only scenarios whose name contains this.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="dfs", show_default=True,
              help=STRATEGY_HELP)
@click.option("--budget", type=click.IntRange(min=1), default=None, help=BUDGET_HELP)
@click.option("--time", "time_limit", type=click.FloatRange(min=0.0), default=None,
              help="Seconds per scenario variant, checked at every scheduling point, also "
              "inside a schedule (default: no limit).")
@MAX_STEPS
@click.option("--preemptions", type=click.IntRange(min=0), default=2, show_default=True,
              help="Preemption bound of the DFS.")
@click.option("--faults/--no-faults", default=False, show_default=True,
              help="Also fail the Nth fault point, for every N (the kernel's fail_nth).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="First random seed of pct/random (schedule i uses seed+i); dfs, dpor and "
              "full do not use it.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (variants, or seed ranges of random/pct).")
@click.option("--save", type=click.Path(file_okay=False),
              help="Write each counterexample here as a schedule file for `passthru replay`.")
@click.option("--report", type=click.Path(file_okay=False),
              help="Write an HTML + JSON report here.")
def check_cmd(paths: tuple[str, ...], profile: str | None, design: str | None,
              only: str | None, strategy: str, budget: int | None, time_limit: float | None,
              max_steps: int, preemptions: int, faults: bool, seed: int, jobs: int,
              save: str | None, report: str | None) -> None:
    """Explore every scenario's schedules and print a verdict table.

    \b
    Strategies (--strategy):
      dfs     every schedule with at most --preemptions preemptions (sleep sets prune
              equivalent ones): proves safety within that bound
      dpor    dynamic partial-order reduction: every schedule up to reordering of
              independent steps, no preemption bound: proves safety
      full    every schedule, no reduction, no bound: the slow cross-check of dfs and dpor
      pct     random schedules with a few priority change points: finds shallow bugs,
              proves nothing
      random  a uniformly random choice at every step: proves nothing
    """
    _check_profile(profile)
    _check_design(design)
    budget = _budget(budget, strategy)
    save_dir = _writable_dir(save, "counterexamples") if save else None
    report_dir = _writable_dir(report, "the report") if report else None
    scenarios = [sc for sc in _load(paths) if not only or only in sc.name]
    if not scenarios:
        raise click.UsageError("no scenarios found")
    tasks = _variants(scenarios, profile, design)
    if not tasks:
        raise click.UsageError(f"no scenario has design {design!r}")
    kw = dict(strategy=strategy, bound=preemptions, budget=budget, seed=seed,
              time_limit=time_limit, faults=faults, max_steps=max_steps)
    t = VerdictTable(console.width, [p for _, p, _ in tasks])
    bad = unproven = 0
    findings: list[str] = []
    saved: list[Path] = []
    verdicts: list[Verdict] = []
    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                        console=console, transient=True, disable=not console.is_terminal)
    with progress:
        bar = progress.add_task("exploring", total=len(tasks))

        def tick() -> None:
            progress.advance(bar)

        current = tasks[0]
        runs = 0

        def start(task: tuple[Scenario, str, str | None]) -> None:
            nonlocal current, runs
            current, runs = task, 0
            progress.update(bar, description=_exploring(task, strategy, budget))

        def one_run(_res: RunResult) -> None:
            # In this process only (one job): how many schedules of this variant so far.
            nonlocal runs
            runs += 1
            if runs % 25 == 0:
                progress.update(bar, description=_exploring(current, strategy, budget, runs))

        def polled(schedules: int, running: list[tuple[Scenario, str, str | None]]) -> None:
            # Several jobs: the schedules every worker has run, and what they explore now.
            progress.update(bar, description=_exploring_many(running, strategy, schedules))

        if jobs == 1 and console.is_terminal:
            kw["on_run"] = one_run
        watch = polled if jobs > 1 and console.is_terminal else None

        if jobs > 1 and strategy in ("random", "pct") and len(tasks) == 1:
            sc0, p0, d0 = tasks[0]
            results: list[Verdict | ScenarioError] = [
                check_seeds_parallel(sc0, p0, d0, jobs, on_progress=watch, **kw)]
        else:
            results = list(check_many(tasks, jobs, on_done=tick, on_start=start,
                                      on_progress=watch, **kw))
    for (sc, prof, des), v in zip(tasks, results, strict=True):
        if isinstance(v, ScenarioError):
            t.row(escape(sc.name + (f" [{des}]" if des else "")), prof, sc.expected(des),
                  f"[red]error[/red]: {escape(str(v))}", "-", "-", "-", "[red]ERROR[/red]")
            bad += 1
            continue
        verdicts.append(v)
        out_come = outcome(v)
        mark = OUTCOME_MARK.get(out_come, "[green]as expected[/green]")
        bad += out_come == UNEXPECTED
        unproven += out_come == UNPROVEN
        label = sc.name + (f" [{des}]" if des else "")
        t.row(escape(label), prof, sc.expected(des), escape(v.bound_text()), str(v.schedules),
              str(v.steps), f"{v.elapsed:.2f}s", mark)
        if v.found:
            findings.append(f"{label} @ {prof}: {v.violations[0].text()}")
            if save_dir is not None:
                path = save_dir / f"{variant_name(v)}.json"
                _write(path, schedfile.dumps(v.schedule_json()), "the counterexample")
                saved.append(path)
    console.print(t.table)
    console.print(CHECK_LEGEND)
    for line in findings:
        console.print("  " + escape(line))
    for path in saved:
        console.print(f"saved {escape(str(path))}; replay it with: passthru replay "
                      f"{escape(str(path))}" + "".join(f" {escape(p)}" for p in paths))
    if report_dir is not None:
        options = {"paths": list(paths), "profile": profile, "design": design,
                   "scenario": only, "strategy": strategy, "budget": budget,
                   "time": time_limit, "max_steps": max_steps, "preemptions": preemptions,
                   "faults": faults,
                   "seed": seed, "jobs": jobs}
        try:
            index = write_report(report_dir, verdicts, options)
        except OSError as e:
            raise click.UsageError(f"cannot write the report to {report}: "
                                   f"{e.strerror or e}") from e
        console.print(f"report: {index}")
    parts = [f"{bad} unexpected verdict(s)"] if bad else []
    if unproven:
        parts.append(f"[yellow]{unproven} unproven[/yellow] (expected safe and none found, "
                     "but the exploration was cut short by its budget or time limit, or only "
                     "sampled: not a proof)")
    console.print(", ".join(parts) if parts else "all verdicts as expected")
    sys.exit(1 if bad else 0)


CHECK_LEGEND = (
    "schedules: interleavings run; steps: scheduling steps over all of them; outcome: "
    "whether the verdict matches the expect column (unproven: nothing found but the "
    "exploration was cut short; UNEXPECTED: it contradicts it; ERROR: the set-up failed)")


class VerdictTable:
    """The verdict table. Wide terminals get a column per field; below
    :data:`COMPACT_BELOW` columns (80 included) a compact form keeps it readable: the
    scenario's name (folded, never cut with '…') over its profile, which never wraps, and
    the verdict over its schedules, steps and time."""

    COMPACT_BELOW = 110

    def __init__(self, width: int, profiles: list[str]) -> None:
        self.compact = width < self.COMPACT_BELOW
        pw = max((len(p) for p in profiles), default=10)
        if self.compact:
            t = Table("scenario\nprofile", "expect", "verdict\nschedules, steps, time",
                      "outcome")
            t.columns[0].overflow = "fold"
            t.columns[0].min_width = max(pw, 16)
            t.columns[2].overflow = "fold"
            t.columns[3].no_wrap = True
        else:
            t = Table("scenario", "profile", "expect", "verdict", "schedules", "steps",
                      "time", "outcome")
            t.columns[0].overflow = "fold"
            t.columns[1].no_wrap = True
            t.columns[1].min_width = pw
            t.columns[3].overflow = "fold"
            for c in t.columns[4:7]:
                c.justify = "right"
        t.columns[1 if self.compact else 2].no_wrap = True
        self.table = t

    def row(self, name: str, profile: str, expect: str, verdict: str, schedules: str,
            steps: str, elapsed: str, mark: str) -> None:
        if self.compact:
            stats = "" if schedules == "-" else (
                f"\n{schedules} schedule(s), {steps} steps, {elapsed}")
            self.table.add_row(f"{name}\n[dim]@[/dim] {profile}", expect, verdict + stats,
                               mark)
        else:
            self.table.add_row(name, profile, expect, verdict, schedules, steps, elapsed,
                               mark)


def _exploring(task: tuple[Scenario, str, str | None], strategy: str, budget: int,
               runs: int = 0) -> str:
    """The progress line: the variant being explored, how, and how far."""
    sc, prof, des = task
    return escape(f"{sc.name} @ {prof}" + (f" [{des}]" if des else "")
                  + f" ({strategy}): {runs}/≤{budget} schedules")


def _exploring_many(running: list[tuple[Scenario, str, str | None]], strategy: str,
                    schedules: int) -> str:
    """The progress line with several jobs: schedules run by every worker so far, and the
    variants being explored now (the first two named)."""
    names = [f"{sc.name} @ {prof}" + (f" [{des}]" if des else "") for sc, prof, des in running]
    shown = ", ".join(names[:2]) + (f" +{len(names) - 2} more" if len(names) > 2 else "")
    return escape(f"{schedules} schedules ({strategy})" + (f"; exploring {shown}" if shown
                                                           else ""))


@main.command("compare")
@click.argument("paths", nargs=-1)
@click.option("--profile", "profiles", multiple=True, help="A profile to compare; repeat "
              "the flag for several (default: each scenario's own).")
@click.option("--scenario", "-k", "only", help="Only scenarios whose name contains this.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="dfs", show_default=True,
              help=STRATEGY_HELP)
@click.option("--budget", type=click.IntRange(min=1), default=None, help=BUDGET_HELP)
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes, one cell (scenario variant) each.")
@MAX_STEPS
def compare_cmd(paths: tuple[str, ...], profiles: tuple[str, ...], only: str | None,
                strategy: str, budget: int | None, jobs: int, max_steps: int) -> None:
    """Scenarios × profiles/designs: one verdict per cell (strategies: see check -h)."""
    for p in profiles:
        _check_profile(p)
    budget = _budget(budget, strategy)
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
    bad = unproven = 0
    for (sc, p, d), v in zip(tasks, check_many(tasks, jobs, strategy=strategy, budget=budget,
                                               max_steps=max_steps), strict=True):
        col = f"{p}{'/' + d if d else ''}"
        if isinstance(v, ScenarioError):
            cells[(sc.name, col)] = "[red]error[/red]"
            bad += 1
            continue
        word = escape(short_text(v))
        out_come = outcome(v)
        bad += out_come == UNEXPECTED
        unproven += out_come == UNPROVEN
        cells[(sc.name, col)] = {UNEXPECTED: f"[red]{word}![/red]",
                                 UNPROVEN: f"[yellow]{word}?[/yellow]"}.get(out_come, word)
    t = Table("scenario", "expect", *cols)
    for sc in scenarios:
        t.add_row(sc.name, sc.expect_text(), *(cells.get((sc.name, c), "-") for c in cols))
    console.print(t)
    console.print(escape(_compare_legend(strategy)))
    notes = ["'!' marks a verdict the scenario does not expect"] if bad else []
    if unproven:
        notes.append("'?' marks an unproven one (expected safe, none found, exploration cut "
                     "short)")
    console.print("; ".join(notes) if notes else "all verdicts as expected")
    sys.exit(1 if bad else 0)


def _compare_legend(strategy: str) -> str:
    dash = "; -: the scenario does not run under that profile/design"
    if strategy == "dfs":
        return "safe \u2264N: no violation in any schedule with at most N preemptions; " \
            "none found: exploration cut short (budget, time) or sampled, not a proof" + dash
    return f"safe ({strategy}): every schedule explored; none found: exploration cut " \
        "short (budget, time) or sampled, not a proof" + dash


@main.command("matrix")
@click.option("--profile", "profiles", multiple=True,
              help="Profiles to compare (default: linux-6.19 and linux-7.1).")
def matrix_cmd(profiles: tuple[str, ...]) -> None:
    """Print the dma-buf exporter × importer × profile compatibility matrix."""
    # Lazy on purpose, not for a cycle: only `matrix` needs the dma-buf exporters and
    # importers, ~25 ms on top of the CLI's ~190 ms start-up.
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


def _print_run(res: RunResult) -> None:
    sys.stdout.write(res.log.text())
    for v in res.violations:
        console.print(f"[red]{escape(v.text())}[/red]")
    console.print(f"schedule: {json.dumps(res.choices)}")


def _warn(msg: str) -> None:
    click.echo(msg, err=True)


def _read_schedule(path: str) -> schedfile.Schedule:
    try:
        sched = schedfile.load(path)
    except schedfile.ScheduleError as e:
        raise click.UsageError(str(e)) from e
    if sched.profile not in PROFILES:
        raise click.UsageError(f"{path}: the schedule file names unknown profile "
                               f"{sched.profile!r}; known: {', '.join(sorted(PROFILES))}")
    return sched


def _scenario_of(file: str, sched: schedfile.Schedule, paths: tuple[str, ...]) -> Scenario:
    """The scenario ``file`` was saved for: from PATHS when given, else the built-in one of
    that name, else the one its recorded source file defines."""
    if paths:
        return _find(sched.scenario, paths)
    sc = next((b for b in _load(()) if b.name == sched.scenario), None)
    if sc is not None:
        return sc  # (a user scenario shadowing a built-in one: pass PATHS)
    src = sched.source
    if src is None:
        raise click.UsageError(
            f"{file}: scenario {sched.scenario!r} is not built-in and the file names no "
            f"source file; pass it: passthru replay {file} SCENARIO_FILE.py")
    if not Path(src).is_file():
        raise click.UsageError(
            f"{file}: scenario {sched.scenario!r} is not built-in and its source file {src} "
            f"is gone; pass it: passthru replay {file} SCENARIO_FILE.py")
    found = [x for x in _load((src,)) if x.name == sched.scenario]
    if not found:
        raise click.UsageError(f"{file}: {src} no longer defines a scenario named "
                               f"{sched.scenario!r}")
    return found[0]


def _run_and_show(sc: Scenario, prof: str, design: str | None, choices: list[int],
                  fail: frozenset[int], trace: str, out: str | None,
                  max_steps: int = DEFAULT_MAX_STEPS, source: str | None = None) -> None:
    """Run ``sc`` under ``choices``; print its log or draw it; exit 1 on a violation, or
    when the run does not follow ``choices`` (``source``: the schedule file they came
    from)."""
    if design is not None and sc.designs and design not in sc.designs:
        raise click.UsageError(f"scenario {sc.name!r} has no design {design!r} (its designs: "
                               f"{', '.join(sc.designs)})")
    chooser = ReplayChooser(choices)
    try:
        res = run_once(sc, prof, design, chooser, fail_nth=fail, max_steps=max_steps,
                       where=trace == "html")
    except ScenarioError as e:
        console.print(f"[red]error[/red] {escape(str(e))}")
        sys.exit(1)
    diverged = chooser.diverged or len(chooser.trace) < len(choices)
    if trace == "html":
        path = Path(out or f"{sc.name}.html")
        sched = schedfile.schedule_json(sc, prof, design, res.choices, res.fail_nth)
        where = " \u00b7 ".join(x for x in (prof, design, sc.doc) if x)
        # How the page was produced (no date: the same schedule draws the same bytes).
        meta = {"passthru": sched.get("passthru"), "profile": prof, "design": design,
                "strategy": "replay of a schedule" if choices else "default schedule"}
        _write(path, render_run(res, sc.name, where, schedule=sched, meta=meta), "the trace")
        console.print(f"wrote {path}")
    else:
        _print_run(res)
    if diverged:
        at = next((i for i, d in enumerate(chooser.trace)
                   if i < len(choices) and d.chosen != choices[i]), len(chooser.trace))
        console.print(f"[red]error[/red]: the run diverged from the schedule"
                      f"{' in ' + escape(source) if source else ''} at decision {at}: "
                      + (f"task {choices[at]} was not runnable there"
                         if at < len(choices) and at < len(chooser.trace)
                         else f"the run ended after {len(chooser.trace)} of "
                         f"{len(choices)} decisions")
                      + " (the scenario or the model changed, or the file was edited); "
                      "what ran above is not the saved schedule")
        sys.exit(1)
    sys.exit(1 if res.violated else 0)


TRACE = click.option("--trace", type=click.Choice(["text", "html"]), default="text",
                     show_default=True, help="Print the event log, or write an HTML page "
                     "with the sequence diagram.")
OUT = click.option("--out", type=click.Path(dir_okay=False), default=None,
                   help="Where --trace html writes (default: NAME.html).")


@main.command("run")
@click.argument("name")
@click.argument("paths", nargs=-1)
@click.option("--profile", help="Profile (default: the schedule file's, else the scenario's "
              "first).")
@click.option("--design", help="Coordination design (default: the schedule file's).")
@click.option("--schedule", "schedule", type=click.Path(exists=True, dir_okay=False),
              help="A schedule JSON file (from check --save) saved for this scenario.")
@TRACE
@OUT
@MAX_STEPS
def run_cmd(name: str, paths: tuple[str, ...], profile: str | None, design: str | None,
            schedule: str | None, trace: str, out: str | None, max_steps: int) -> None:
    """Run one scenario under one schedule and print its event log (or draw it)."""
    _check_profile(profile)
    _check_design(design)
    choices: list[int] = []
    fail: frozenset[int] = frozenset()
    sched = _read_schedule(schedule) if schedule else None
    if schedule and sched is not None:
        if sched.scenario != name:
            raise click.UsageError(
                f"{schedule} was saved for scenario {sched.scenario!r}, not {name!r} "
                f"(replay it with `passthru replay {schedule}`)")
        choices, fail = list(sched.choices), sched.fail_nth
    sc = _find(name, paths)
    if sched is not None:
        if profile is not None and profile != sched.profile:
            _warn(f"note: {schedule} was saved under {sched.profile}; running under {profile}")
        profile = profile or sched.profile
        design = design if design is not None else sched.design
        msg = schedfile.source_warning(sched, sc)
        if msg:
            _warn(msg)
    _run_and_show(sc, profile or sc.profiles[0], design, choices, fail, trace, out,
                  max_steps, schedule)


@main.command("replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("paths", nargs=-1)
@TRACE
@OUT
@MAX_STEPS
def replay_cmd(file: str, paths: tuple[str, ...], trace: str, out: str | None,
               max_steps: int) -> None:
    """Replay a saved counterexample and print its event log (or draw it).

    The scenario is found in PATHS when given, else among the built-in ones, else in the
    source file the counterexample names; a warning says when that file changed since."""
    sched = _read_schedule(file)
    sc = _scenario_of(file, sched, paths)
    msg = schedfile.source_warning(sched, sc)
    if msg:
        _warn(msg)
    _run_and_show(sc, sched.profile, sched.design, list(sched.choices), sched.fail_nth,
                  trace, out, max_steps, file)


if __name__ == "__main__":
    main()
