"""passthru in a VMM's own test suite: check a scenario and fail the test with the shrunk
trace when a rule breaks.

    from passthru.testing import assert_scenario_holds

    def test_my_teardown_order():
        assert_scenario_holds(my_scenario)          # a @scenario function

The same is available as the pytest fixture ``passthru_check`` (the ``passthru`` pytest plugin
is registered by the package's entry point). A scenario that *expects* a violation passes
when the checker finds one, as in ``passthru check``.
"""

from __future__ import annotations

import operator
import re
import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .check import schedfile
from .check.runner import Verdict, check
from .check.scenario import Scenario
from .sim.log import Event, EventLog


class ScenarioViolation(AssertionError):
    """A scenario broke a rule (or a known bug was not found); the message has the trace.

    ``verdict`` is the checker's :class:`~passthru.check.runner.Verdict`; ``schedule_file`` the
    saved counterexample (None when there is none), replayable with ``replay_command``."""

    def __init__(self, message: str, verdict: Verdict, schedule_file: Path | None = None,
                 replay_command: str | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict
        self.schedule_file = schedule_file
        self.replay_command = replay_command


# pytest hides a frame whose locals hold a true __tracebackhide__ (or a callable of the
# ExceptionInfo answering true): a ScenarioViolation is reported at the test's call, not
# inside passthru; any other error keeps every frame, since it may be passthru's own bug.
_HIDE = operator.methodcaller("errisinstance", ScenarioViolation)


def _scenario_of(obj: Any) -> Scenario:
    sc = obj if isinstance(obj, Scenario) else getattr(obj, "__passthru_scenario__", None)
    if not isinstance(sc, Scenario):
        raise TypeError(f"{obj!r} is not a @scenario function")
    return sc


def trace_events(log: EventLog) -> tuple[list[Event], int]:
    """The events worth reading in a failing test: from the first event of a spawned task on
    (set-up, done by ``main`` before any task ran, is left out; a violation never is). Also
    returns how many set-up events were left out."""
    events = log.events
    first = next((i for i, e in enumerate(events) if e.task != "main"), len(events))
    kept = [e for e in events[:first] if e.subsystem == "VIOLATION"] + events[first:]
    return kept, len(events) - len(kept)


def save_counterexample(v: Verdict, directory: str | Path | None = None) -> tuple[Path, str]:
    """Write ``v``'s counterexample as a schedule file (what ``passthru check --save``
    writes) into ``directory`` (default: ``<tmp>/passthru``) and return its path and the
    command that replays it (naming the scenario's source file unless it is built-in)."""
    out = Path(directory) if directory is not None else Path(tempfile.gettempdir()) / "passthru"
    out.mkdir(parents=True, exist_ok=True)
    name = f"{v.scenario.name}-{v.profile}" + (f"-{v.design}" if v.design else "")
    data = v.schedule_json()
    path = (out / (re.sub(r"[^A-Za-z0-9._+-]", "_", name) + ".json")).resolve()
    path.write_text(schedfile.dumps(data), encoding="utf-8")
    cmd = ["passthru", "replay", str(path)]
    src = data.get("source")
    if src and not _is_builtin(v.scenario):
        cmd.append(str(src))
    return path, shlex.join(cmd)


def _is_builtin(sc: Scenario) -> bool:
    return sc.fn.__module__.startswith("passthru.scenarios")


def assert_scenario_holds(obj: Callable[..., Any] | Scenario, profiles: list[str] | None = None,
                          *, save_dir: str | Path | None = None, **kw: Any) -> list[Verdict]:
    """Check every (profile, design) variant; raise ScenarioViolation with the shrunk,
    replayable trace on the first verdict the scenario does not expect.

    The counterexample is saved as a schedule file in ``save_dir`` (the ``passthru_check``
    fixture passes the test's ``tmp_path``; default ``<tmp>/passthru``) and the message ends
    with the ``passthru replay`` command that replays it. Other keywords go to
    :func:`passthru.check.runner.check` (``strategy``, ``bound``, ``budget``, ...)."""
    __tracebackhide__ = _HIDE
    sc = _scenario_of(obj)
    verdicts = []
    for prof, design in sc.variants():
        for p in profiles or [prof]:
            v = check(sc, p, design, **kw)
            verdicts.append(v)
            if v.ok:
                continue
            where = f"{sc.name} @ {p}" + (f" [{design}]" if design else "")
            if v.counterexample is None:
                raise ScenarioViolation(f"{where}: expected a violation, none found in "
                                        f"{v.schedules} schedules", v)
            cx = v.counterexample
            path, cmd = save_counterexample(v, save_dir)
            events, hidden = trace_events(cx.log)
            lines = [f"{where}: {len(v.violations)} violation(s) after {v.schedules} "
                     f"schedule(s); shrunk to {cx.preemptions} preemption(s)"]
            lines += ["  " + x.text() for x in v.violations]
            lines += ["", f"trace ({hidden} set-up events not shown; the replay shows all):"]
            lines += [e.text() for e in events]
            lines += ["", f"counterexample saved to {path}", f"replay with: {cmd}"]
            raise ScenarioViolation("\n".join(lines), v, path, cmd)
    return verdicts
