"""Scenarios: Python functions that set up a situation and spawn racing tasks.

    @scenario(profiles=["linux-7.1"], expect="safe")
    def punch_hole_vs_vcpu(s):
        ...                                   # set-up runs to completion first
        s.spawn("vcpu", guest_write, ...)     # then the explorer interleaves the tasks
        s.spawn("punch", host.fallocate, ...)

``expect`` is "safe" (no violation in any explored schedule) or "violation" (a known bug:
the checker must find it), or a mapping design -> one of those when the verdict differs by
coordination design (``designs`` then defaults to its keys and must name the same designs;
``Scenario.expect`` is the common verdict, or "mixed"; :meth:`Scenario.expected` answers per
design — a run with no design runs the profile's default, DEFAULT_DESIGN). ``bugs`` seeds
named defects into the profile for the buggy variant of a demo. ``designs`` lists
coordination designs (docs/design.md contract 3) to run under; scenarios that do not care
leave it empty. Nothing here assumes a subsystem.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..host.sim import SimHost
from ..kernel.profile import DEFAULT_DESIGN, DESIGNS, PROFILES, Profile
from ..sim import kinds
from ..sim.scheduler import Scheduler, Task
from ..sim.track import Cell

REGISTRY: dict[str, Scenario] = {}
MIXED = "mixed"  # Scenario.expect when the designs expect different verdicts


@dataclass(frozen=True)
class Scenario:
    name: str
    fn: Callable[[Sandbox], Any]
    profiles: tuple[str, ...] = ("linux-7.1",)
    designs: tuple[str, ...] = ()
    expect: str = "safe"
    bugs: tuple[str, ...] = ()
    teardown: bool = True
    doc: str = ""
    module: str = ""
    expect_by_design: tuple[tuple[str, str], ...] = ()

    def variants(self) -> list[tuple[str, str | None]]:
        return [(p, d) for p in self.profiles for d in (self.designs or (None,))]

    def expected(self, design: str | None) -> str:
        """The verdict expected under ``design`` (None: the profile's default design)."""
        if not self.expect_by_design:
            return self.expect
        by = dict(self.expect_by_design)
        return by[design if design is not None else DEFAULT_DESIGN]

    def expect_text(self) -> str:
        """``expect``, or each design's expectation when they differ."""
        if self.expect != MIXED:
            return self.expect
        return ", ".join(f"{d}: {e}" for d, e in self.expect_by_design)


def scenario(
    profiles: list[str] | tuple[str, ...] = ("linux-7.1",),
    designs: list[str] | tuple[str, ...] = (),
    expect: str | Mapping[str, str] = "safe",
    bugs: list[str] | tuple[str, ...] = (),
    teardown: bool = True,
    name: str | None = None,
) -> Callable[[Callable[[Sandbox], Any]], Callable[[Sandbox], Any]]:
    by_design: tuple[tuple[str, str], ...] = ()
    if isinstance(expect, Mapping):
        by_design = tuple(expect.items())
        designs = tuple(designs) or tuple(expect)
        if set(expect) != set(designs):
            raise ValueError(f"expect names designs {sorted(expect)}, designs= "
                             f"{sorted(designs)}: they must be the same")
        verdicts = {e for _, e in by_design}
        common = verdicts.pop() if len(verdicts) == 1 else MIXED
    else:
        common = expect
    for e in [common] if not by_design else [e for _, e in by_design]:
        if e not in ("safe", "violation"):
            raise ValueError(f"expect must be 'safe' or 'violation', not {e!r}")
    for p in profiles:
        if p not in PROFILES:
            raise ValueError(f"unknown profile {p!r} in profiles= (known: "
                             f"{', '.join(sorted(PROFILES))})")
    for d in designs:
        if d not in DESIGNS:
            raise ValueError(f"unknown design {d!r} in designs= (known: {', '.join(DESIGNS)})")

    def deco(fn: Callable[[Sandbox], Any]) -> Callable[[Sandbox], Any]:
        sc = Scenario(
            name=name or fn.__name__,
            fn=fn,
            profiles=tuple(profiles),
            designs=tuple(designs),
            expect=common,
            bugs=tuple(bugs),
            teardown=teardown,
            doc=first_sentence(fn.__doc__ or ""),
            module=fn.__module__,
            expect_by_design=by_design,
        )
        fn.__passthru_scenario__ = sc  # type: ignore[attr-defined]
        REGISTRY[sc.name] = sc
        return fn

    return deco


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring (its first paragraph when no sentence ends there),
    on one line: what ``list`` and the report show."""
    para = " ".join(doc.strip().split("\n\n", 1)[0].split())
    for i, ch in enumerate(para):
        if ch in ".!?" and (i + 1 == len(para) or para[i + 1] == " "):
            if not para[:i].endswith(("e.g", "i.e", "etc", "vs")):
                return para[: i + 1]
    return para


@dataclass
class Sandbox:
    """What a scenario function receives: a fresh SimHost on an explorer-driven scheduler."""

    profile: Profile
    design: str | None
    sched: Scheduler
    host: SimHost
    hosts: list[SimHost] = field(default_factory=list)
    finals: list[tuple[str, Callable[[], str | None]]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    cells: list[Cell[Any]] = field(default_factory=list)
    observers: list[tuple[str, Callable[[], Any]]] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)

    def spawn(self, name: str, fn: Callable[..., Any], *args: Any,
              expect_errors: tuple[Any, ...] = ()) -> Task:
        """A task running ``fn(*args)``. An exception escaping it is reported as a violation
        unless it is an OSError whose errno, or an exception of a type, in ``expect_errors``."""
        return self.sched.spawn(name, fn, *args, expect_errors=expect_errors)

    def shared(self, value: Any, name: str = "") -> Cell[Any]:
        """State the scenario's tasks share, in a tracked cell: ``.get()`` and ``.set(v)``
        are accesses the checker sees (footprints, data races); ``.peek()`` is not one."""
        c: Cell[Any] = Cell(value, label=name or f"shared{len(self.cells)}")
        self.cells.append(c)
        return c

    def observe(self, name: str, fn: Callable[[], Any]) -> None:
        """Add ``fn()`` (taken when every task is done) to the run's observable final state,
        which the cross-checks of the explorer compare across schedules."""
        self.observers.append((name, fn))

    def patch(self, target: Any, name: str, replacement: Any) -> Any:
        """Replace ``target.name`` (a kernel function in its module, or a method on its
        class) for this run only; returns the original so the patch can call it. Patch the
        name where callers look it up (see passthru.kapi.PATCHABLE)."""
        original = getattr(target, name)
        setattr(target, name, replacement)
        self.undo.append(lambda: setattr(target, name, original))
        return original

    def final_state(self) -> tuple[Any, ...]:
        """What a run leaves observable: each task's outcome, the shared cells, the
        observers' values and the kinds of violation seen."""
        tasks = tuple((t.name, _outcome(t)) for t in self.sched.tasks)
        cells = tuple(_plain(c.peek()) for c in self.cells)
        obs = tuple((n, _plain(_safe(fn))) for n, fn in self.observers)
        kinds = tuple(sorted({v.kind for v in self.sched.violations}))
        return (tasks, cells, obs, kinds)

    def process(self, name: str) -> SimHost:
        h = self.host.process(name)
        self.hosts.append(h)
        return h

    def invariant(self, name: str, check: Callable[[], str | None]) -> None:
        """A cheap check after every step: return a message when it is broken. ``name`` is
        the kind of the violation it reports, registered here (sim/kinds.py)."""
        kinds.register(name, "scenario")

        def run() -> None:
            msg = check()
            if msg:
                self.sched.violation(name, msg)

        self.sched.step_checks.append(run)

    def final(self, name: str, check: Callable[[], str | None]) -> None:
        """A check when every task is done, before teardown; ``name`` is the kind of the
        violation it reports, registered here (sim/kinds.py)."""
        kinds.register(name, "scenario")
        self.finals.append((name, check))

    def point(self, resource: str, access: str = "w") -> None:
        self.sched.point(resource, access)


def _plain(v: Any) -> Any:
    """A deterministic rendering of a value (no object addresses)."""
    if v is None or isinstance(v, (bool, int, str, bytes, float)):
        return v
    if isinstance(v, (list, tuple)):
        return tuple(_plain(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((repr(k), _plain(x)) for k, x in v.items()))
    return type(v).__name__


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - an observer failing is part of the state
        return f"{type(e).__name__}: {e}"


def _outcome(t: Task) -> Any:
    if t.error is not None:
        e = t.error
        return ("error", type(e).__name__, getattr(e, "errno", None))
    return ("ok", _plain(t.result))
