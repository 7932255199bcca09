"""The event log: structured records (step, task, subsystem, event, arguments).

The text form is stable — integers print in hex above 9, keyword arguments keep the order the
caller gave, nothing depends on hash order or the wall clock — so the same scenario, profile
and schedule give a byte-identical log (docs/design.md contract 4).
"""

from __future__ import annotations

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
    """An append-only list of events; ``enabled=False`` keeps only violations (for speed)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.events: list[Event] = []

    def add(self, ev: Event) -> None:
        self.events.append(ev)

    def text(self) -> str:
        return "".join(e.text() + "\n" for e in self.events)

    def __len__(self) -> int:
        return len(self.events)
