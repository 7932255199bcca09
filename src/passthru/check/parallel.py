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
from concurrent.futures import Future, ProcessPoolExecutor, wait
from typing import Any

from .runner import ScenarioError, Verdict, check
from .scenario import Scenario

Task = tuple[Scenario, str, "str | None"]
Outcome = "Verdict | ScenarioError"


#: Set in each worker process (fork): the shared count of schedules run, and the
#: scheduling counters of the parent's progress line. None in the parent and serial runs.
_SCHEDULES: Any = None
#: How often the parent polls the workers for progress, in seconds.
POLL = 0.2


def _init_worker(counter: Any) -> None:
    global _SCHEDULES
    _SCHEDULES = counter


def _count_run(_res: Any) -> None:
    # One schedule finished in this worker: add it to the shared count (a lock per update is
    # cheap next to a schedule).
    with _SCHEDULES.get_lock():
        _SCHEDULES.value += 1


def _with_counter(kw: dict[str, Any]) -> dict[str, Any]:
    if _SCHEDULES is None:
        return kw
    inner = kw.get("on_run")
    if inner is None:
        return {**kw, "on_run": _count_run}

    def both(res: Any) -> None:
        _count_run(res)
        inner(res)
    return {**kw, "on_run": both}


def _one(args: tuple[Scenario, str, str | None, dict[str, Any]]) -> Verdict | ScenarioError:
    sc, prof, design, kw = args
    try:
        return check(sc, prof, design, **_with_counter(kw))
    except ScenarioError as e:
        return e


def _seed_slice(args: tuple[Scenario, str, str | None, dict[str, Any], int, int]) -> Verdict:
    sc, prof, design, kw, seed, budget = args
    return check(sc, prof, design, **{**_with_counter(kw), "seed": seed, "budget": budget})


#: ``on_progress(schedules, running)``: schedules run so far over every worker, and the tasks
#: the workers are exploring now.
OnProgress = Callable[[int, list[Task]], None]


def _pool(jobs: int, counter: Any) -> ProcessPoolExecutor:
    ctx = multiprocessing.get_context("fork")
    return ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                               initargs=(counter,))


def _await(f: Future[Any], counter: Any, on_progress: OnProgress | None,
           running: Callable[[], list[Task]]) -> Any:
    """``f.result()``, calling ``on_progress`` every :data:`POLL` seconds meanwhile."""
    while on_progress is not None:
        done, _ = wait([f], timeout=POLL)
        on_progress(counter.value, running())
        if done:
            break
    return f.result()


def check_many(tasks: list[tuple[Scenario, str, str | None]], jobs: int = 1,
               on_done: Callable[[], None] | None = None,
               on_start: Callable[[tuple[Scenario, str, str | None]], None] | None = None,
               on_progress: OnProgress | None = None,
               **kw: Any) -> Iterator[Verdict | ScenarioError]:
    """Verdicts for ``tasks`` in order. ``on_start(task)`` is called as a task starts (with
    several jobs: as the one whose verdict comes next is awaited), ``on_done()`` as it
    ends; with several jobs ``on_progress`` is polled while waiting (schedules run in all,
    the tasks running)."""
    if jobs <= 1:
        for sc, prof, design in tasks:
            if on_start:
                on_start((sc, prof, design))
            yield _one((sc, prof, design, kw))
            if on_done:
                on_done()
        return
    counter = multiprocessing.get_context("fork").Value("q", 0)
    with _pool(jobs, counter) as pool:
        futures = [pool.submit(_one, (sc, prof, design, kw)) for sc, prof, design in tasks]

        def running() -> list[Task]:
            return [t for t, f in zip(tasks, futures, strict=True) if f.running()]

        for task, f in zip(tasks, futures, strict=True):
            if on_start:
                on_start(task)
            yield _await(f, counter, on_progress, running)
            if on_done:
                on_done()


def check_seeds_parallel(sc: Scenario, prof: str, design: str | None, jobs: int,
                         on_progress: OnProgress | None = None, **kw: Any) -> Verdict:
    """One random/PCT variant with its seed range split over ``jobs`` processes; the lowest
    seed that finds a violation wins, so the answer does not depend on timing."""
    budget = kw.pop("budget", 1000)
    seed = kw.pop("seed", 0)
    chunk = -(-budget // jobs)
    args = [(sc, prof, design, kw, seed + i * chunk, min(chunk, budget - i * chunk))
            for i in range(jobs) if budget - i * chunk > 0]
    counter = multiprocessing.get_context("fork").Value("q", 0)
    with _pool(jobs, counter) as pool:
        futures = [pool.submit(_seed_slice, a) for a in args]
        parts = [_await(f, counter, on_progress, lambda: [(sc, prof, design)])
                 for f in futures]
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
