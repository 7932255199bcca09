"""Scenarios: Python functions that set up a situation and spawn racing tasks.

    @scenario(profiles=["linux-7.1"], expect="safe")
    def punch_hole_vs_vcpu(s):
        ...                                   # set-up runs to completion first
        s.spawn("vcpu", guest_write, ...)     # then the explorer interleaves the tasks
        s.spawn("punch", host.fallocate, ...)

``expect`` is "safe" (no violation in any explored schedule) or "violation" (a known bug:
the checker must find it). ``bugs`` seeds named defects into the profile for the buggy
variant of a demo. ``designs`` lists coordination designs (DESIGN.md contract 3) to run under;
scenarios that do not care leave it empty. Nothing here assumes a subsystem.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..host.sim import SimHost
from ..kernel.profile import Profile
from ..sim.scheduler import Scheduler, Task

REGISTRY: dict[str, Scenario] = {}


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

    def variants(self) -> list[tuple[str, str | None]]:
        return [(p, d) for p in self.profiles for d in (self.designs or (None,))]


def scenario(
    profiles: list[str] | tuple[str, ...] = ("linux-7.1",),
    designs: list[str] | tuple[str, ...] = (),
    expect: str = "safe",
    bugs: list[str] | tuple[str, ...] = (),
    teardown: bool = True,
    name: str | None = None,
) -> Callable[[Callable[[Sandbox], Any]], Callable[[Sandbox], Any]]:
    if expect not in ("safe", "violation"):
        raise ValueError(f"expect must be 'safe' or 'violation', not {expect!r}")

    def deco(fn: Callable[[Sandbox], Any]) -> Callable[[Sandbox], Any]:
        sc = Scenario(
            name=name or fn.__name__,
            fn=fn,
            profiles=tuple(profiles),
            designs=tuple(designs),
            expect=expect,
            bugs=tuple(bugs),
            teardown=teardown,
            doc=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "",
            module=fn.__module__,
        )
        fn.__passthru_scenario__ = sc  # type: ignore[attr-defined]
        REGISTRY[sc.name] = sc
        return fn

    return deco


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

    def spawn(self, name: str, fn: Callable[..., Any], *args: Any) -> Task:
        return self.sched.spawn(name, fn, *args)

    def process(self, name: str) -> SimHost:
        h = self.host.process(name)
        self.hosts.append(h)
        return h

    def invariant(self, name: str, check: Callable[[], str | None]) -> None:
        """A cheap check after every step: return a message when it is broken."""

        def run() -> None:
            msg = check()
            if msg:
                self.sched.violation(name, msg)

        self.sched.step_checks.append(run)

    def final(self, name: str, check: Callable[[], str | None]) -> None:
        """A check when every task is done, before teardown."""
        self.finals.append((name, check))

    def point(self, resource: str, access: str = "w") -> None:
        self.sched.point(resource, access)
