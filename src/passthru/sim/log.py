"""The event log: structured records (step, task, subsystem, event, arguments).

The text form is stable — integers print in hex above 9, keyword arguments keep the order the
caller gave, nothing depends on hash order or the wall clock — so the same scenario, profile
and schedule give a byte-identical log (docs/design.md contract 4).

An event may carry ``where``: the place in the model that caused it, as
``"kernel/kvm/mmu.py:162 retry (mmu_invalidate_retry_gfn)"`` — the file relative to the
passthru package (a file outside it: its base name), the line, the Python function and, in
brackets, the kernel function it models when the function's docstring starts with one. It is
computed only for a log made with ``where=True`` (:func:`where_of`, called by the scheduler:
walking the stack is too slow for the explorer's runs), is not part of ``text()`` (the text
log stays as it was) and is in ``to_json()`` only when set. It is as deterministic as the
rest: no absolute path, no id.
"""

from __future__ import annotations

import os
import re
from collections import deque
from types import CodeType, FrameType
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
    where: str = ""  # the model's source location (see the module docstring); not in text()

    def text(self) -> str:
        body = " ".join(f"{k}={_fmt(v)}" for k, v in self.args)
        head = f"{self.step:5d} {self.task:<10} {self.subsystem}.{self.event}"
        return f"{head} {body}" if body else head

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "step": self.step,
            "task": self.task,
            "subsystem": self.subsystem,
            "event": self.event,
            "args": {k: _fmt(v) for k, v in self.args},
        }
        if self.where:
            out["where"] = self.where
        return out


# ----- source locations ------------------------------------------------------------------
# The passthru package's directory, with a trailing separator.
_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# Files whose frames are machinery, not the model code that caused an event: the scheduler,
# locks, lockdep and tracking (sim/), the extent maps, and physical truth (hw/physmem.py: its
# events and violations are caused by the kernel code that calls it).
_SKIP_DIRS = ("sim" + os.sep,)
_SKIP_FILES = ("extents.py", os.path.join("hw", "physmem.py"))
_files: dict[str, str | None] = {}  # co_filename -> shown path, None for a skipped file
_funcs: dict[CodeType, str] = {}  # code -> "name" or "name (kernel_name)"
# A kernel function's name: lower case, with at least one underscore (kvm_gmem_get_pfn).
_KFUNC = re.compile(r"_*[a-z][a-z0-9]*(?:_[a-z0-9]+)+")
# The leading words of a docstring that may name kernel functions: identifiers joined by "+"
# or "/" ("KVM_MMU_LOCK + kvm_mmu_invalidate_begin + kvm_unmap_gfn_range.").
_LEAD = re.compile(r"\s*((?:[A-Za-z_][A-Za-z0-9_]*(?:\(\))?\s*[+/]\s*)*"
                   r"[A-Za-z_][A-Za-z0-9_]*)")


def _shown_file(filename: str) -> str | None:
    shown = _files.get(filename, "")
    if shown != "":
        return shown
    path = os.path.abspath(filename)
    if path.startswith(_PKG):
        rel = path[len(_PKG):]
        skip = rel.startswith(_SKIP_DIRS) or rel in _SKIP_FILES
        shown = None if skip else rel.replace(os.sep, "/")
    else:
        shown = os.path.basename(path)  # a user's scenario file: no absolute path
    _files[filename] = shown
    return shown


def kernel_name(doc: str | None) -> str | None:
    """The kernel function a model function's docstring starts with ("kvm_tdp_mmu_map: ...",
    "KVM_MMU_LOCK + kvm_mmu_invalidate_begin + ..."), or None."""
    if not doc:
        return None
    m = _LEAD.match(doc)
    if m is None:
        return None
    for word in re.split(r"\s*[+/]\s*", m.group(1)):
        word = word.removesuffix("()")
        if _KFUNC.fullmatch(word):
            return word
    return None


def _func_text(frame: FrameType) -> str:
    code = frame.f_code
    text = _funcs.get(code)
    if text is not None:
        return text
    obj: Any = frame.f_globals
    for part in code.co_qualname.split("."):
        if part == "<locals>" or obj is None:
            obj = None
            break
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part, None)
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        obj = obj.fget
    kname = None
    if obj is not None and getattr(obj, "__code__", None) is code:
        kname = kernel_name(getattr(obj, "__doc__", None))
    text = code.co_name if kname is None or kname == code.co_name \
        else f"{code.co_name} ({kname})"
    _funcs[code] = text
    return text


def where_of(frame: FrameType | None) -> str:
    """The first frame from ``frame`` outward that is model code (not the scheduler, locks,
    tracking, extent maps or physical truth), as ``"path:line function (kernel_function)"``;
    "" when there is none."""
    while frame is not None:
        shown = _shown_file(frame.f_code.co_filename)
        if shown is not None:
            return f"{shown}:{frame.f_lineno} {_func_text(frame)}"
        frame = frame.f_back
    return ""


def where_of_function(fn: Any) -> str:
    """Where ``fn`` starts (its ``def`` line), named like :func:`where_of`; "" for what is
    not a Python function of model code (a partial, a builtin, the scheduler's own)."""
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if not isinstance(code, CodeType):
        return ""
    shown = _shown_file(code.co_filename)
    if shown is None:
        return ""
    kname = kernel_name(getattr(fn, "__doc__", None))
    name = code.co_name if kname is None or kname == code.co_name \
        else f"{code.co_name} ({kname})"
    return f"{shown}:{code.co_firstlineno} {name}"


class EventLog:
    """An append-only list of events; ``enabled=False`` keeps only violations (for speed).

    The checker's runs use this one: a counterexample's log is every event of the run.
    ``where=True`` (the counterexample's re-run, ``passthru run``/``replay``) has each event
    carry its source location in the model (``Event.where``); off by default: it walks the
    stack at every event."""

    def __init__(self, enabled: bool = True, where: bool = False) -> None:
        self.enabled = enabled
        self.where = where
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
