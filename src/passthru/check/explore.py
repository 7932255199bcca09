"""Stateless exploration of schedules (docs/design.md, "Concurrency and exploration").

The model is deterministic, so a schedule is the list of task choices at each decision and
exploring replays the scenario from scratch for each one. Every decision records the enabled
tasks, the task chosen and — once it has run — the chosen step's *footprint*: every tracked
location it read or wrote, as ranges (sim/track.py). Two steps are *dependent* when their
footprints conflict (a common location, overlapping ranges, one a write); that is all the
reductions below reason about. Scheduling points only say where a switch may happen.

- :class:`DfsExplorer` — depth-first over choices with a preemption bound (switching away from
  a task that could have continued costs one), optionally iterative deepening (bound 0, 1, ...)
  and, when unbounded, sleep sets: a task already explored at a node sleeps, with the
  footprint its step had there, in the sibling subtrees, until a step dependent on that
  footprint runs. The sleeping footprints of siblings are learnt as the siblings run (a
  registry per branching node).
  ``sleep_sets=False`` and ``bound=None`` give the plain enumeration that cross-checks both
  reductions (``--strategy full``).
- :class:`DporExplorer` — dynamic partial-order reduction (Flanagan & Godefroid, POPL 2005)
  over footprints, with sleep sets: after each run, for every step find the last earlier
  step of another task that is dependent and not ordered before it by happens-before (vector
  clocks over dependence) and add a backtrack point there.
- :class:`RandomChooser` (uniform, seeded) and :class:`PctChooser` (probabilistic concurrency
  testing: random task priorities and d-1 priority change points; Burckhardt et al., 2010).

What the reductions assume is in docs/fidelity.md ("The checker"): all state two tasks share
is tracked, a task's step is a deterministic function of the state it reads, and only the
running task's own step disables it (blocking).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..sim.scheduler import Scheduler, Task
from ..sim.track import Footprint, conflict

Sleep = dict[int, Footprint]


@dataclass
class Decision:
    enabled: tuple[int, ...]
    current: int | None  # the task that ran last, if it could continue
    chosen: int
    fp: Footprint | None = None  # the chosen step's footprint, once it ran
    sleep: Sleep = field(default_factory=dict)  # tasks asleep here, with their footprints


@dataclass
class ReplayChooser:
    """Follows ``prefix`` (task ids), then keeps the current task (no preemption).

    Past the prefix, tasks asleep are avoided while another is enabled. ``pending`` are the
    candidates for the sleep set at the first node past the prefix: the siblings explored at
    the prefix's last node, kept if the step taken there is independent of them."""

    prefix: list[int] = field(default_factory=list)
    trace: list[Decision] = field(default_factory=list)
    diverged: bool = False
    pending: Sleep = field(default_factory=dict)
    sched: Scheduler | None = None

    def _fp(self, i: int) -> Footprint | None:
        d = self.trace[i]
        if d.fp is None and self.sched is not None and i < len(self.sched.step_fps):
            d.fp = self.sched.step_fps[i]
        return d.fp

    def choose(self, sched: Scheduler, enabled: list[Task], current: Task | None) -> Task:
        self.sched = sched
        i = len(self.trace)
        ids = tuple(t.tid for t in enabled)
        cur = current.tid if current is not None and current in enabled else None
        pick: Task | None = None
        sleep: Sleep = {}
        if i < len(self.prefix):
            want = self.prefix[i]
            pick = next((t for t in enabled if t.tid == want), None)
            if pick is None:
                self.diverged = True
        if i >= len(self.prefix) and i > 0:
            prev = self.trace[i - 1]
            pfp = self._fp(i - 1)
            cands = self.pending if i == len(self.prefix) else prev.sleep
            sleep = {q: f for q, f in cands.items()
                     if q != prev.chosen and not conflict(f, pfp)}
        if pick is None:
            awake = [t for t in enabled if t.tid not in sleep] or enabled
            if current is not None and cur is not None and current in awake:
                pick = current
            else:
                pick = awake[0]
        self.trace.append(Decision(ids, cur, pick.tid, None, sleep))
        return pick

    def finish(self) -> None:
        """Fill in the footprints of the steps taken (after the run)."""
        for i in range(len(self.trace)):
            self._fp(i)

    @property
    def choices(self) -> list[int]:
        return [d.chosen for d in self.trace]


def preemptions(trace: list[Decision]) -> int:
    return sum(1 for d in trace if d.current is not None and d.chosen != d.current)


Run = Callable[[ReplayChooser], None]


class _Siblings:
    """The footprints learnt at one branching node: task -> its step's footprint there."""

    __slots__ = ("fps",)

    def __init__(self, fps: Sleep) -> None:
        self.fps = fps


class DfsExplorer:
    """Enumerate schedules with at most ``bound`` preemptions (``None``: unbounded).

    With ``deepening`` the frontier is ordered by preemptions, depth-first within a level:
    every schedule with 0 preemptions runs before any with 1, and so on — iterative deepening
    without re-running the shallower levels."""

    def __init__(self, bound: int | None = 2, sleep_sets: bool | None = None,
                 deepening: bool = True) -> None:
        self.bound = bound
        # Sleep sets are unsound under a preemption bound (Coons, Musuvathi and McKinley,
        # "Bounded partial-order reduction", OOPSLA 2013): the schedule they keep for an
        # equivalence class may need more preemptions than the one they prune, and fall
        # outside the bound. So by default they are used only when the search is unbounded.
        self.sleep_sets = (bound is None) if sleep_sets is None else sleep_sets
        self.deepening = deepening

    def schedules(self, run: Run, root: list[int] | None = None) -> Iterator[ReplayChooser]:
        """All schedules extending ``root`` (branching only past it: for --jobs)."""
        # frontier item: (preemptions, -counter, prefix, inherited sleep, siblings, before)
        Item = tuple[int, int, list[int], Sleep, "_Siblings | None", tuple[int, ...]]
        frontier: list[Item] = [(0, 0, list(root or []), {}, None, ())]
        floor = len(root or [])
        counter = 0
        bound = self.bound
        while frontier:
            if self.deepening:
                _, _, prefix, inherited, sib, before = heapq.heappop(frontier)
            else:
                _, _, prefix, inherited, sib, before = frontier.pop()
            pending: Sleep = {}
            if self.sleep_sets:
                pending = dict(inherited)
                if sib is not None:
                    for q in before:
                        f = sib.fps.get(q)
                        if f is not None:
                            pending[q] = f
            ch = ReplayChooser(prefix, pending=pending)
            run(ch)
            ch.finish()
            yield ch
            trace = ch.trace
            if sib is not None and len(prefix) <= len(trace):
                fp = trace[len(prefix) - 1].fp
                if fp is not None:
                    sib.fps[prefix[-1]] = fp
            pre = preemptions(trace[: len(prefix)])
            branches: list[Item] = []
            for i in range(max(len(prefix), floor), len(trace)):
                d = trace[i]
                sleeping = d.sleep if self.sleep_sets else {}
                explored = [d.chosen]
                node = _Siblings({d.chosen: d.fp or {}}) if self.sleep_sets else None
                for alt in d.enabled:
                    if alt in sleeping or alt == d.chosen:
                        continue
                    extra = 1 if d.current is not None and alt != d.current else 0
                    if bound is None or pre + extra <= bound:
                        counter += 1
                        branches.append((pre + extra, -counter,
                                         [x.chosen for x in trace[:i]] + [alt],
                                         dict(sleeping), node, tuple(explored)))
                        explored.append(alt)
                if d.current is not None and d.chosen != d.current:
                    pre += 1
            for item in reversed(branches):
                if self.deepening:
                    heapq.heappush(frontier, item)
                else:
                    frontier.append(item)


@dataclass
class _Node:
    enabled: tuple[int, ...]
    fp: Footprint
    chosen: int
    current: int | None
    backtrack: set[int]
    done: set[int]
    sleep: Sleep
    explored: Sleep  # the alternatives run here so far, with their steps' footprints


class DporExplorer:
    """Stateless DPOR over footprints, with sleep sets."""

    def __init__(self, bound: int | None = None, sleep_sets: bool = True) -> None:
        self.bound = bound  # optional preemption bound on backtrack points
        self.sleep_sets = sleep_sets

    def schedules(self, run: Run) -> Iterator[ReplayChooser]:
        nodes: list[_Node] = []
        prefix: list[int] = []
        pending: Sleep = {}
        while True:
            ch = ReplayChooser(prefix, pending=pending if self.sleep_sets else {})
            run(ch)
            ch.finish()
            yield ch
            trace = ch.trace
            if prefix and len(prefix) <= len(trace):
                n = nodes[len(prefix) - 1]
                n.fp = trace[len(prefix) - 1].fp or {}
                n.explored[n.chosen] = n.fp
            for i in range(len(prefix), len(trace)):
                d = trace[i]
                fp = d.fp or {}
                nodes.append(_Node(d.enabled, fp, d.chosen, d.current, {d.chosen},
                                   {d.chosen} | set(d.sleep), d.sleep, {d.chosen: fp}))
            del nodes[len(trace):]
            self._add_backtracks(nodes)
            nxt = self._next(nodes)
            if nxt is None:
                return
            i, p, pending = nxt
            del nodes[i + 1:]
            prefix = [n.chosen for n in nodes[:i]] + [p]
            nodes[i].chosen = p
            nodes[i].done.add(p)

    def _add_backtracks(self, nodes: list[_Node]) -> None:
        clocks: list[dict[int, int]] = []
        task_clock: dict[int, dict[int, int]] = {}
        for j, n in enumerate(nodes):
            p = n.chosen
            fj = n.fp
            before = task_clock.get(p, {})
            # j's vector clock: p's previous step and every earlier dependent step
            vc = dict(before)
            for i in range(j):
                m = nodes[i]
                if m.chosen != p and conflict(m.fp, fj):
                    for k, v in clocks[i].items():
                        if vc.get(k, 0) < v:
                            vc[k] = v
            vc[p] = j + 1
            # the last earlier step of another task, dependent and not ordered before p
            for i in range(j - 1, -1, -1):
                m = nodes[i]
                q = m.chosen
                if q == p or not conflict(m.fp, fj):
                    continue
                if before.get(q, 0) >= clocks[i].get(q, 0):
                    continue  # already happens-before p's step
                if p in m.enabled:
                    m.backtrack.add(p)
                else:
                    # Flanagan & Godefroid: a task enabled at i whose later step happens
                    # before j (it leads to p's step); only without one, every enabled task.
                    lead = next((nodes[k].chosen for k in range(i + 1, j)
                                 if nodes[k].chosen in m.enabled
                                 and vc.get(nodes[k].chosen, 0) >= k + 1), None)
                    if lead is not None:
                        m.backtrack.add(lead)
                    else:
                        m.backtrack.update(m.enabled)
                break
            clocks.append(vc)
            task_clock[p] = vc

    def _next(self, nodes: list[_Node]) -> tuple[int, int, Sleep] | None:
        for i in range(len(nodes) - 1, -1, -1):
            n = nodes[i]
            for p in sorted(n.backtrack - n.done):
                if p not in n.enabled:
                    n.done.add(p)
                    continue
                if self.bound is not None:
                    pre = sum(1 for m in nodes[:i] if m.current is not None
                              and m.chosen != m.current)
                    if pre + (1 if n.current is not None and p != n.current else 0) > self.bound:
                        n.done.add(p)
                        continue
                # Sleep set for the new branch: what slept here plus the siblings already
                # explored here (the chosen one's footprint is known from the last run).
                sleep: Sleep = {**n.sleep, **n.explored}
                return i, p, {q: f for q, f in sleep.items() if q != p}
        return None


class RandomChooser:
    """Uniform choice at every decision from a seeded RNG (records a replayable trace)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.inner = ReplayChooser([])

    def choose(self, sched: Scheduler, enabled: list[Task], current: Task | None) -> Task:
        pick = enabled[self.rng.randrange(len(enabled))]
        self.inner.prefix.append(pick.tid)
        return self.inner.choose(sched, enabled, current)

    def finish(self) -> None:
        self.inner.finish()

    @property
    def trace(self) -> list[Decision]:
        return self.inner.trace

    @property
    def choices(self) -> list[int]:
        return self.inner.choices


class PctChooser(RandomChooser):
    """PCT: each task gets a random priority (higher runs); at ``depth - 1`` random steps
    among the first ``horizon`` the running task drops below every initial priority."""

    def __init__(self, seed: int, depth: int = 3, horizon: int = 64) -> None:
        super().__init__(seed)
        self.prio: dict[int, int] = {}
        # change point i (at step change[i]) lowers the running task to priority i; the
        # steps are drawn at random and *not* sorted, as in PCT, so labels and order vary.
        self.change = self.rng.sample(range(1, max(horizon, depth) + 1), depth - 1)
        self.step = 0

    def choose(self, sched: Scheduler, enabled: list[Task], current: Task | None) -> Task:
        self.step += 1
        for t in enabled:
            if t.tid not in self.prio:
                self.prio[t.tid] = len(self.change) + 1 + self.rng.randrange(1 << 20)
        if current is not None and self.step in self.change:
            self.prio[current.tid] = self.change.index(self.step)
        pick = max(enabled, key=lambda t: (self.prio[t.tid], -t.tid))
        self.inner.prefix.append(pick.tid)
        return self.inner.choose(sched, enabled, current)
