"""The event log: structured records (step, task, subsystem, event, arguments).

The text form is stable — integers print in hex above 9, keyword arguments keep the order the
caller gave, nothing depends on hash order or the wall clock — so the same scenario, profile
and schedule give a byte-identical log (docs/design.md contract 4).
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v) if -10 < v < 10 else hex(v)
    if isinstance(v, str):
        return v if v and " " not in v and "=" not in v else repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


class Event(NamedTuple):
    # A NamedTuple, not a dataclass: events are made on hot paths and this is 4x cheaper.
    step: int
    task: str
    subsystem: str
    event: str
    args: tuple[tuple[str, Any], ...] = ()

    def text(self) -> str:
        body = " ".join(f"{k}={_fmt(v)}" for k, v in self.args)
        head = f"{self.step:5d} {self.task:<10} {self.subsystem}.{self.event}"
        return f"{head} {body}" if body else head

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "task": self.task,
            "subsystem": self.subsystem,
            "event": self.event,
            "args": {k: _fmt(v) for k, v in self.args},
        }


class EventLog:
    """An append-only list of events; ``enabled=False`` keeps only violations (for speed).

    The checker's runs use this one: a counterexample's log is every event of the run."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.events: list[Event] = []

    def add(self, ev: Event) -> None:
        """Append one event (the scheduler calls this; violations are added even when
        disabled)."""
        self.events.append(ev)

    def text(self) -> str:
        """The log as text, one event a line (stable: see the module docstring)."""
        return "".join(e.text() + "\n" for e in self.events)

    def __len__(self) -> int:
        return len(self.events)


class RingEventLog(EventLog):
    """The last ``limit`` events only, so that a long-lived host's memory stays bounded.

    What a plain ``SimHost()`` keeps (host/sim.py): a library user who runs millions of calls
    must not pay for a log nobody reads. ``dropped`` counts the events that fell off the front;
    ``text()`` starts with a line saying how many when there were any. ``events`` is a copy."""

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise ValueError(f"a ring log's limit must be a positive int, not {limit!r}")
        self.limit = limit
        self._ring: deque[Event] = deque(maxlen=limit)
        super().__init__(enabled=True)
        self.added = 0

    @property  # type: ignore[override]
    def events(self) -> list[Event]:
        """The events still held, oldest first (a copy)."""
        return list(self._ring)

    @events.setter
    def events(self, value: list[Event]) -> None:
        self._ring = deque(value, maxlen=self.limit)

    @property
    def dropped(self) -> int:
        """How many events were added and no longer held."""
        return self.added - len(self._ring)

    def add(self, ev: Event) -> None:
        """Append one event, dropping the oldest when ``limit`` are held."""
        self.added += 1
        self._ring.append(ev)

    def text(self) -> str:
        """The held events as text, after a line naming how many earlier ones were dropped."""
        head = f"... {self.dropped} earlier events not kept (last {self.limit} only)\n"
        body = "".join(e.text() + "\n" for e in self._ring)
        return head + body if self.dropped else body

    def __len__(self) -> int:
        return len(self._ring)
