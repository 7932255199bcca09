"""The checker's own speed (issue: "Benchmarks" of the checker).

    python benchmarks/bench_checker.py [--jobs 2]

Prints four tables:
1. throughput on a reference scenario (gmem_punch_hole_vs_vcpu, full DFS), one core:
   steps/s and schedules/s;
2. schedules (and seconds) to the first counterexample, per strategy, for every built-in
   buggy scenario;
3. schedules for a full exploration of every safe scenario: the enumeration without any
   reduction, DFS with sleep sets (unbounded) and DPOR — and the full/DPOR ratio; the same
   with preemption bound 2 (bounded DFS uses no sleep sets: they are unsound under a bound);
4. `passthru check` of the whole built-in library with --jobs 1 and --jobs N: the speed-up;
5. how close DPOR is to optimal: for every scenario variant whose whole space enumerates
   within the cap, the number of Mazurkiewicz traces (schedules grouped by their
   happens-before relation over footprints) and DPOR's schedules per trace (1.0x is optimal);
6. cross-validation on every scenario variant: DPOR and the enumeration without reduction
   (unbounded where it completes, else both at preemption bound 2 — DPOR's states must then
   include the bounded enumeration's) reach the same verdict and the same final states.
Goals: >= 20k steps/s/core; every built-in bug found in under 1 s.
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from passthru.check.crosscheck import explore_all
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


CAP = 30000  # schedules; a count at the cap is printed as ">CAP"


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
        makers = (lambda: DfsExplorer(None, sleep_sets=False, deepening=False),
                  lambda: DfsExplorer(None, deepening=False), DporExplorer,
                  lambda: DfsExplorer(2, sleep_sets=False), lambda: DporExplorer(bound=2))
        c = [_count(sc, prof, m) for m in makers]

        def ratio(a: str, b: str) -> str:
            if b.startswith(">"):
                return "?"  # the reduced count hit the cap too
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


TRACE_CAP = 5000


def dpor_optimality() -> None:
    t = Table("scenario", "profile", "schedules (no reduction)", "traces", "DPOR schedules",
              "DPOR / trace", "DPOR traces",
              title=f"5. DPOR against the Mazurkiewicz traces (spaces under {TRACE_CAP} "
                    "schedules)")
    for sc in builtin():
        for prof, des in sc.variants():
            full = explore_all(sc, prof, des, "full", None, cap=TRACE_CAP)
            if not full.complete:
                t.add_row(sc.name, prof, f">{TRACE_CAP}", "-", "-", "-", "-")
                continue
            dp = explore_all(sc, prof, des, "dpor", None, cap=TRACE_CAP)
            t.add_row(sc.name, prof, str(full.schedules), str(len(full.traces)),
                      str(dp.schedules), f"{dp.schedules / len(full.traces):.2f}x",
                      str(len(dp.traces)))
    console.print(t)


def cross_validation() -> None:
    t = Table("scenario", "profile", "space", "full verdict", "DPOR verdict", "final states",
              "agree", title="6. DPOR against the enumeration without reduction")
    for sc in builtin():
        for prof, des in sc.variants():
            full = explore_all(sc, prof, des, "full", None, cap=TRACE_CAP)
            dp = explore_all(sc, prof, des, "dpor", None, cap=4 * TRACE_CAP)
            if full.complete:
                same = full.kinds == dp.kinds and full.finals == dp.finals
                space = "all"
            else:
                full = explore_all(sc, prof, des, "full", 2, cap=4 * TRACE_CAP)
                same = full.kinds <= dp.kinds and full.finals <= dp.finals
                space = "≤2 preemptions ⊆ DPOR"
            t.add_row(sc.name, prof, space, full.verdict, dp.verdict,
                      f"{len(full.finals)} / {len(dp.finals)}", "yes" if same else "NO")
    console.print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", help="comma-separated table numbers to print (default: all)")
    args = ap.parse_args()
    only = set((args.only or "1,2,3,4,5,6").split(","))
    if "1" in only:
        throughput()
    if "2" in only:
        to_first_bug()
    if "3" in only:
        full_exploration()
    if "4" in only:
        jobs_speedup(args.jobs)
    if "5" in only:
        dpor_optimality()
    if "6" in only:
        cross_validation()


if __name__ == "__main__":
    main()
