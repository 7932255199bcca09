"""The checker's own speed (issue: "Benchmarks" of the checker).

    python benchmarks/bench_checker.py [--jobs 2]

Prints four tables:
1. throughput on a reference scenario (gmem_punch_hole_vs_vcpu, full DFS), one core:
   steps/s and schedules/s;
2. schedules (and seconds) to the first counterexample, per strategy, for every built-in
   buggy scenario;
3. schedules for a full exploration of every safe scenario: plain DFS (preemption bound 2, no
   sleep sets), DFS with sleep sets, and DPOR — and the DFS/DPOR ratio;
4. `passthru check` of the whole built-in library with --jobs 1 and --jobs N: the speed-up.
Goals: >= 20k steps/s/core; DPOR >= 10x fewer schedules than DFS on the safe scenarios;
every built-in bug found in under 1 s.
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from passthru.check.discover import builtin
from passthru.check.explore import DfsExplorer, DporExplorer
from passthru.check.parallel import check_many
from passthru.check.runner import RunResult, check, run_once

console = Console(width=160)


def throughput() -> None:
    sc = next(s for s in builtin() if s.name == "gmem_punch_hole_vs_vcpu")
    best = None
    for _ in range(5):
        t0 = time.perf_counter()
        v = check(sc, "linux-7.1", strategy="dfs")
        dt = time.perf_counter() - t0
        if best is None or dt < best[0]:
            best = (dt, v.schedules, v.steps)
    assert best is not None
    dt, n, steps = best
    t = Table("reference scenario", "schedules", "steps", "seconds", "steps/s", "schedules/s",
              title="1. throughput (one core, best of 5)")
    t.add_row(sc.name, str(n), str(steps), f"{dt:.3f}", f"{steps / dt:,.0f}", f"{n / dt:,.0f}")
    console.print(t)


def to_first_bug() -> None:
    t = Table("buggy scenario", "profile", *[f"{s}" for s in ("dfs", "dpor", "pct", "random")],
              title="2. schedules (seconds) to the first counterexample")
    for sc in builtin():
        if sc.expect != "violation":
            continue
        prof = sc.profiles[-1]
        cells = []
        for strat in ("dfs", "dpor", "pct", "random"):
            t0 = time.perf_counter()
            v = check(sc, prof, strategy=strat, budget=5000, shrink_cx=False)
            dt = time.perf_counter() - t0
            cells.append(f"{v.schedules} ({dt:.3f}s)" if v.found else f"not found ({dt:.1f}s)")
        t.add_row(sc.name, prof, *cells)
    console.print(t)


CAP = 20000  # schedules; a count at the cap is printed as ">CAP"


def _count(sc: object, prof: str, make: object) -> str:
    results: list[RunResult] = []
    n = 0
    for _ in make().schedules(  # type: ignore[attr-defined]
            lambda ch: results.append(run_once(sc, prof, None, ch, log=False))):  # type: ignore[arg-type]
        results.clear()
        n += 1
        if n >= CAP:
            return f">{CAP}"
    return str(n)


def full_exploration() -> None:
    t = Table("safe scenario", "DFS", "DFS+sleep", "DPOR", "DFS/DPOR", "DFS b2", "DPOR b2",
              "b2 ratio",
              title="3. schedules for a full exploration: unbounded, and with preemption "
                    "bound 2")
    for sc in builtin():
        if sc.expect != "safe":
            continue
        prof = sc.profiles[-1]
        makers = (lambda: DfsExplorer(10**6, sleep_sets=False, deepening=False),
                  lambda: DfsExplorer(10**6, deepening=False), DporExplorer,
                  lambda: DfsExplorer(2, sleep_sets=False), lambda: DporExplorer(bound=2))
        c = [_count(sc, prof, m) for m in makers]

        def ratio(a: str, b: str) -> str:
            return (">" if a.startswith(">") else "") + f"{int(a.lstrip('>')) / int(b):.1f}x"

        t.add_row(sc.name, c[0], c[1], c[2], ratio(c[0], c[2]), c[3], c[4], ratio(c[3], c[4]))
    console.print(t)


def jobs_speedup(jobs: int) -> None:
    # Enough work per variant for processes to pay off: 300 random schedules each.
    tasks = [(sc, p, d) for sc in builtin() for p, d in sc.variants()]
    times = {}
    for j in (1, jobs):
        t0 = time.perf_counter()
        list(check_many(tasks, j, strategy="random", budget=300, shrink_cx=False))
        times[j] = time.perf_counter() - t0
    t = Table("variants", "--jobs 1", f"--jobs {jobs}", "speed-up",
              title="4. the built-in library, random x300 per variant, more workers")
    t.add_row(str(len(tasks)), f"{times[1]:.2f}s", f"{times[jobs]:.2f}s",
              f"{times[1] / times[jobs]:.2f}x")
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    throughput()
    to_first_bug()
    full_exploration()
    jobs_speedup(args.jobs)


if __name__ == "__main__":
    main()
