"""The deterministic scheduler: tasks as greenlets, scheduling points, faults and violations.

Models the preemption points of a Linux kernel: wherever kernel code could be preempted or
block (lock acquire, waiting, a device or firmware access) it calls :meth:`Scheduler.point`
with the resource it is about to touch and how. Only one task runs at a time; at each point
the scheduler's *chooser* decides which runnable task goes next, so an explorer can enumerate
interleavings. With no chooser, the running task keeps the CPU until it blocks or ends and
tasks run in spawn order: a SimHost with no tasks is a plain library (points are no-ops).

A violation's kind must be registered (sim/kinds.py): :meth:`Scheduler.violation` refuses
any other, so a misspelt kind fails loudly instead of becoming a kind no test expects.

Every run is bounded: ``max_steps`` (steps per run) and ``deadline`` (a
``time.monotonic()`` value) stop a run whose tasks loop through scheduling points. At the
step bound the run ends with a ``step-bound`` violation; at the deadline it ends with
``stopped == "time"`` (no violation: the run was cut short, nothing was found). Either way the
unfinished tasks are unwound like a deadlock's. A set-up running in main is bounded too while
it goes through scheduling points, events or fault points (the model's, or ``s.point``):
:class:`SimStopped` is raised there. A set-up looping in pure Python, never reaching any of
them, cannot be interrupted.

Leaves out: priorities, real time (``now`` is model time, advanced only by timed waits), CPUs.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import greenlet

from . import kinds
from . import track as _trk
from .lockdep import LockDep
from .log import Event, EventLog, where_of, where_of_function

DEADLOCK = kinds.register("deadlock", "sim")  # a task (or main) would sleep forever
LOCK_HELD_AT_EXIT = kinds.register("lock-held-at-exit", "sim")  # a task ended holding a lock
STEP_BOUND = kinds.register("step-bound", "sim")  # a run took more steps than its bound

DEFAULT_MAX_STEPS = 100_000

RUNNABLE = "runnable"
BLOCKED = "blocked"
DONE = "done"


class SimDeadlock(Exception):
    """Raised in the blocking context when no task can ever wake it."""


class SimStopped(SimDeadlock):
    """Unwinds a run stopped by its step bound or deadline (in its tasks, or in a set-up
    running in main); ``why`` is "steps" or "time"."""

    def __init__(self, why: str, msg: str) -> None:
        super().__init__(msg)
        self.why = why


@dataclass
class Violation:
    """A broken rule: an invariant, physical truth, the lock order, a deadlock."""

    kind: str
    message: str
    step: int
    task: str

    def text(self) -> str:
        return f"[{self.kind}] step {self.step} ({self.task}): {self.message}"


@dataclass
class Task:
    tid: int
    name: str
    fn: Callable[..., Any] | None = None
    args: tuple[Any, ...] = ()
    glet: greenlet.greenlet | None = None
    state: str = RUNNABLE
    waiting_on: Any = None
    held: list[Any] = field(default_factory=list)
    next_access: tuple[str, str] | None = None
    result: Any = None
    error: BaseException | None = None
    deadline: int | None = None  # model-time wake-up for timed waits
    yielding: bool = False  # gave the CPU up (a retry loop): others go first
    expect_errors: tuple[Any, ...] = ()  # errnos or exception types the scenario expects

    def __repr__(self) -> str:
        return f"<Task {self.tid} {self.name} {self.state}>"


class Chooser(Protocol):
    def choose(self, sched: Scheduler, enabled: list[Task], current: Task | None) -> Task: ...


class Scheduler:
    def __init__(
        self,
        chooser: Chooser | None = None,
        fail_nth: frozenset[int] | set[int] = frozenset(),
        seed: int = 0,
        log: bool = True,
        track: bool = False,
        races: bool = True,
        max_steps: int | None = None,
        deadline: float | None = None,
    ) -> None:
        self.chooser = chooser
        self.max_steps = max_steps
        self.deadline = deadline  # time.monotonic() value
        self.stopped: str | None = None  # "steps" or "time" when the run was cut short
        self._main_points = 0
        # Set by the runner while a scenario's set-up runs in main: then main's scheduling
        # points, events and fault points count against the bounds too.
        self.bound_main = False
        self.fail_nth = frozenset(fail_nth)
        self.rng = random.Random(seed)
        self.log = EventLog(enabled=log)
        self.violations: list[Violation] = []
        self.tasks: list[Task] = []
        self.main = Task(0, "main")
        self.current: Task = self.main
        self.step = 0
        self.now = 0  # model time, ns
        self.faults_seen = 0
        self.faults_failed: list[tuple[int, str]] = []
        self.step_checks: list[Callable[[], None]] = []
        self._running = False
        self._sched_glet: greenlet.greenlet | None = None
        self._stamp = 0
        self._unwinding = False  # a deadlock is being unwound: nothing may block or switch
        # Footprint tracking and race detection (sim/track.py), when asked for: the checker.
        self.tracker: _trk.Tracker | None = _trk.Tracker(self, races) if track else None
        self.step_fps: list[_trk.Footprint] = []
        self.lockdep = LockDep(self)

    # ----- logging and violations -------------------------------------------------------
    def emit(self, subsystem: str, event: str, **args: Any) -> None:
        if self.bound_main and self.current is self.main:
            self._main_point()
        log = self.log
        if log.enabled:
            where = where_of(sys._getframe(1)) if log.where else ""
            log.add(Event(self.step, self.current.name, subsystem, event, tuple(args.items()),
                          where))

    def violation(self, kind: str, message: str) -> Violation:
        """Report a broken rule of ``kind``, which must be registered (sim/kinds.py)."""
        kinds.require(kind)
        v = Violation(kind, message, self.step, self.current.name)
        # Report each distinct violation once: the checker wants the first occurrence.
        if not any(o.kind == kind and o.message == message for o in self.violations):
            self.violations.append(v)
            where = where_of(sys._getframe(1)) if self.log.where else ""
            ev = Event(self.step, self.current.name, "VIOLATION", kind, (("msg", message),),
                       where)
            self.log.add(ev)
        return v

    def next_stamp(self) -> int:
        self._stamp += 1
        return self._stamp

    # ----- tasks ----------------------------------------------------------------------------
    def spawn(self, name: str, fn: Callable[..., Any], *args: Any,
              expect_errors: tuple[Any, ...] = ()) -> Task:
        t = Task(len(self.tasks) + 1, name, fn, args, expect_errors=expect_errors)
        t.next_access = (f"task:{name}", "start")
        self.tasks.append(t)
        if self.tracker is not None:
            self.tracker.spawn(t.tid)  # spawn happens-before the child's first step
        self.emit("sched", "spawn", task=name)
        return t

    @property
    def in_task(self) -> bool:
        return self.current is not self.main

    def point(self, resource: str, access: str = "w") -> None:
        """A place where the scheduler may switch tasks. ``resource`` and ``access`` label the
        event log only: which steps conflict is decided from footprints (sim/track.py)."""
        if self.current is self.main or self._sched_glet is None or self._unwinding:
            if self.bound_main and self.current is self.main:
                self._main_point()
            return
        self.current.next_access = (resource, access)
        self._sched_glet.switch()

    def _main_point(self) -> None:
        """A scheduling point, event or fault point in main while a set-up runs
        (``bound_main``): bounded like a task's steps."""
        self._main_points += 1
        if self.max_steps is not None and self._main_points > self.max_steps:
            self.stopped = "steps"
            raise SimStopped("steps", f"set-up passed {self.max_steps} scheduling points "
                             "or model events without finishing (step bound)")
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.stopped = "time"
            raise SimStopped("time", "set-up stopped by the time limit")

    def yield_(self, resource: str) -> None:
        """cond_resched() in a retry loop: let any other runnable task go first."""
        if self.current is self.main or self._sched_glet is None:
            return
        self.current.yielding = True
        self.point(resource, "retry")

    def block(self, on: Any) -> None:
        """Put the running task to sleep until :meth:`wake` is called for ``on``."""
        cur = self.current
        if cur is self.main or self._sched_glet is None or self._unwinding:
            msg = f"{cur.name} would sleep forever on {_name(on)} (nothing else can run)"
            if not self._unwinding:
                self.violation(DEADLOCK, msg)
            raise SimDeadlock(msg)
        if self.tracker is not None:
            _trk.sync_access(on)  # going to sleep on ``on`` conflicts with waking it
        cur.state = BLOCKED
        cur.waiting_on = on
        cur.next_access = (_name(on), "wait")
        self._sched_glet.switch()
        # Woken: whatever the waker did before wake() happens-before what this task does now.
        if self.tracker is not None:
            _trk.acquire(on)

    def wake(self, on: Any) -> None:
        if self.tracker is not None:
            _trk.sync_access(on)
            _trk.release(on)
        for t in self.tasks:
            if t.state == BLOCKED and t.waiting_on is on:
                t.state = RUNNABLE
                t.waiting_on = None
                t.deadline = None

    def fault(self, kind: str) -> bool:
        """A fault point: True when this one is to fail (the kernel's fail_nth)."""
        self.faults_seen += 1
        if self.bound_main and self.current is self.main:
            self._main_point()
        if self.faults_seen in self.fail_nth:
            self.faults_failed.append((self.faults_seen, kind))
            self.emit("fault", "inject", nth=self.faults_seen, kind=kind)
            return True
        return False

    # ----- the run loop -----------------------------------------------------------------
    def _body(self, t: Task) -> None:
        try:
            assert t.fn is not None
            t.result = t.fn(*t.args)
        except SimDeadlock as e:
            t.error = e
        except BaseException as e:  # noqa: BLE001 - a task's failure is data for the checker
            t.error = e
            self.emit("sched", "task-error", error=f"{type(e).__name__}: {e}")
        if t.held and not isinstance(t.error, SimDeadlock):
            names = ", ".join(_name(h) for h in t.held)
            self.violation(LOCK_HELD_AT_EXIT, f"task {t.name} ended holding {names}")
        t.state = DONE
        self.emit("sched", "exit")

    def run(self) -> None:
        """Run every spawned task to completion under the chooser."""
        if self._running:
            raise RuntimeError("Scheduler.run is not reentrant")
        self._running = True
        self._sched_glet = greenlet.getcurrent()
        prev: Task | None = None
        try:
            while True:
                enabled = [t for t in self.tasks if t.state == RUNNABLE]
                if len(enabled) > 1 and any(t.yielding for t in enabled):
                    enabled = [t for t in enabled if not t.yielding] or enabled
                if not enabled:
                    timed = [t for t in self.tasks if t.state == BLOCKED and t.deadline]
                    if timed:
                        self._advance_time(timed)
                        continue
                    blocked = [t for t in self.tasks if t.state == BLOCKED]
                    if blocked:
                        self._report_deadlock(blocked)
                    break
                if self.max_steps is not None and self.step >= self.max_steps:
                    self.violation(STEP_BOUND, f"step bound reached: {self.max_steps} steps "
                                   "and the tasks have not finished (a livelock, or a loop "
                                   "that needs a larger --max-steps)")
                    self.stopped = "steps"
                    self._unwind(enabled + [t for t in self.tasks if t.state == BLOCKED],
                                 SimStopped("steps", "step bound reached"))
                    break
                if self.deadline is not None and time.monotonic() > self.deadline:
                    self.stopped = "time"
                    self._unwind(enabled + [t for t in self.tasks if t.state == BLOCKED],
                                 SimStopped("time", "time limit"))
                    break
                if self.chooser is not None:
                    t = self.chooser.choose(self, enabled, prev)
                elif prev is not None and prev.state == RUNNABLE:
                    t = prev
                else:
                    t = enabled[0]
                self.step += 1
                self.current = t
                if self.log.enabled and t.next_access is not None:
                    res, acc = t.next_access
                    args = (("at", res), ("op", acc))
                    where = _task_where(t) if self.log.where else ""
                    self.log.add(Event(self.step, t.name, "sched", "run", args, where))
                tr = self.tracker
                if tr is not None:
                    tr.begin_step()
                if t.glet is None:
                    t.glet = greenlet.greenlet(self._body, parent=self._sched_glet)
                    t.glet.switch(t)
                else:
                    t.glet.switch()
                self.current = self.main
                if tr is not None:
                    self.step_fps.append(tr.end_step())
                for o in self.tasks:
                    if o is not t:
                        o.yielding = False
                prev = t
                if self.step_checks:
                    # Invariants look at the state from outside: they are not accesses.
                    if tr is not None:
                        tr.deactivate()
                    try:
                        for check in self.step_checks:
                            check()
                    finally:
                        if tr is not None:
                            tr.activate()
            if self.tracker is not None:
                self.tracker.join_all()  # the end of the run: main joins every task
        finally:
            self._running = False
            self._sched_glet = None
            self.current = self.main

    def _advance_time(self, timed: list[Task]) -> None:
        deadline = min(t.deadline for t in timed if t.deadline is not None)
        self.now = max(self.now, deadline)
        for t in timed:
            if t.deadline is not None and t.deadline <= self.now:
                t.state = RUNNABLE
                t.waiting_on = None
                t.deadline = None
        self.emit("sched", "time", now=self.now)

    def _report_deadlock(self, blocked: list[Task]) -> None:
        parts = []
        for t in blocked:
            held = ",".join(_name(h) for h in t.held) or "-"
            parts.append(f"{t.name} holds [{held}] waits {_name(t.waiting_on)}")
        self.violation(DEADLOCK, "; ".join(parts))
        self._unwind(blocked, SimDeadlock("deadlocked"))

    def _unwind(self, stuck: list[Task], exc: SimDeadlock) -> None:
        # Unwind the stuck greenlets so nothing dangles: they end with SimDeadlock. Each runs
        # as itself (its unlocks in finally blocks must find it the owner), and while
        # unwinding nothing may block or switch: a lock it still wants raises at once.
        self._unwinding = True
        try:
            for t in stuck:
                if t.glet is not None and not t.glet.dead:
                    self.current = t
                    t.state = RUNNABLE
                    t.waiting_on = None
                    t.glet.throw(exc)
                else:
                    t.error = t.error or exc
                t.state = DONE
        finally:
            self.current = self.main
            self._unwinding = False


def _task_where(t: Task) -> str:
    """Where ``t`` resumes: the model code around the scheduling point it is suspended in, or
    its function's first line when it has not started."""
    if t.glet is not None:
        return where_of(t.glet.gr_frame)
    return where_of_function(t.fn)


def _name(obj: Any) -> str:
    return getattr(obj, "name", None) or type(obj).__name__
