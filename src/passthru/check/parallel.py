"""Run many checks, in worker processes when asked (``--jobs N``).

Each task is one scenario variant (scenario, profile, design); with more than one job the
variants are spread over forked processes (each exploration is independent and
deterministic, so the verdicts are the same as a serial run's, only their order of completion
differs — results are returned in task order). Random and PCT runs also split their seed range
across the workers for a single variant.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from .runner import ScenarioError, Verdict, check
from .scenario import Scenario

Task = tuple[Scenario, str, "str | None"]
Outcome = "Verdict | ScenarioError"


def _one(args: tuple[Scenario, str, str | None, dict[str, Any]]) -> Verdict | ScenarioError:
    sc, prof, design, kw = args
    try:
        return check(sc, prof, design, **kw)
    except ScenarioError as e:
        return e


def _seed_slice(args: tuple[Scenario, str, str | None, dict[str, Any], int, int]) -> Verdict:
    sc, prof, design, kw, seed, budget = args
    return check(sc, prof, design, **{**kw, "seed": seed, "budget": budget})


def check_many(tasks: list[tuple[Scenario, str, str | None]], jobs: int = 1,
               on_done: Callable[[], None] | None = None,
               on_start: Callable[[tuple[Scenario, str, str | None]], None] | None = None,
               **kw: Any) -> Iterator[Verdict | ScenarioError]:
    """Verdicts for ``tasks`` in order. ``on_start(task)`` is called as a task starts (with
    several jobs: as the one whose verdict comes next is awaited), ``on_done()`` as it
    ends."""
    if jobs <= 1:
        for sc, prof, design in tasks:
            if on_start:
                on_start((sc, prof, design))
            yield _one((sc, prof, design, kw))
            if on_done:
                on_done()
        return
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [pool.submit(_one, (sc, prof, design, kw)) for sc, prof, design in tasks]
        for task, f in zip(tasks, futures, strict=True):
            if on_start:
                on_start(task)
            yield f.result()
            if on_done:
                on_done()


def check_seeds_parallel(sc: Scenario, prof: str, design: str | None, jobs: int,
                         **kw: Any) -> Verdict:
    """One random/PCT variant with its seed range split over ``jobs`` processes; the lowest
    seed that finds a violation wins, so the answer does not depend on timing."""
    budget = kw.pop("budget", 1000)
    seed = kw.pop("seed", 0)
    chunk = -(-budget // jobs)
    args = [(sc, prof, design, kw, seed + i * chunk, min(chunk, budget - i * chunk))
            for i in range(jobs) if budget - i * chunk > 0]
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        parts = list(pool.map(_seed_slice, args))
    total = parts[0]
    for p in parts[1:]:
        total.schedules += p.schedules
        total.steps += p.steps
        total.elapsed = max(total.elapsed, p.elapsed)
    found = next((p for p in parts if p.found), None)
    if found is not None:
        total.counterexample = found.counterexample
        total.violations = found.violations
    return total
