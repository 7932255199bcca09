"""Footprints and happens-before: how the checker sees every shared access (docs/design.md,
"Footprints" and "Data races are violations").

Model state that two tasks can share lives in *tracked* structures — :class:`RangeMap`
(physical memory, page tables, page cache, pins: accessed as extents), :class:`TrackedDict`,
:class:`TrackedList` and :class:`Cell` (fd and object tables, attachment lists, scalars), and the
sleeping locks, completions, wait queues and fences of :mod:`passthru.sim.locks` — or calls
:func:`read` / :func:`write` where it touches a plain field. Each access is added to the
running step's *footprint*: a set of ``(location, [lo, hi), write?)`` where a location is one
tracked object and ``[lo, hi)`` an address range, a key's slot, or the whole object. Freeing
1 TiB is one entry, not 2^28.

Two steps are *dependent* when their footprints touch the same location over overlapping
ranges and one of them writes; sleep sets and DPOR (check/explore.py) decide commutation from
that alone. Scheduling points only say where a switch may happen.

The same accesses feed a race detector in the manner of KCSAN/FastTrack: every task carries a
vector clock; lock release → acquire, completion → wait, fence signal → wait, wake-up →
woken, SRCU unlock → synchronize, spawn → child and children → join carry clocks along; a
*plain* access that conflicts with an earlier plain access of another task not ordered
before it is a ``data-race`` violation — in any schedule, whether or not an invariant broke.
Accesses the kernel makes on purpose without a lock (READ_ONCE/WRITE_ONCE, a seqcount or RCU
read, the mmu_invalidate_seq read rechecked under mmu_lock) are *marked*: they count in
footprints but never as races. Structures the kernel guards with a spinlock the model does
not spell out (a step has no scheduling point inside, so it is atomic) are made with
``atomic=True``: each access acquires and releases the structure's own clock.

Locations are named by the task that created them and a per-task counter (``vcpu0#3``), so a
location has the same name in every schedule that creates it in the same task step: footprints
are comparable across runs, which sleep sets rely on. Tracking is off (a no-op) unless a
scheduler with ``track=True`` is active — a SimHost used as a plain library pays one global
test per access.

Leaves out: per-byte shadow memory (a location's history is a short list of ranges per task),
reporting more than one race per location, and races involving ``main`` before any task is
spawned (set-up is ordered before every task by spawn).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import kinds

if TYPE_CHECKING:
    from .scheduler import Scheduler

# Two tasks' conflicting plain accesses with no happens-before between them.
DATA_RACE = kinds.register("data-race", "sim.track")

LO = -(1 << 100)
HI = 1 << 100
WHOLE = (LO, HI)

# A footprint: location -> list of (lo, hi, write). Built per step, never changed afterwards.
Footprint = dict[str, list[tuple[int, int, bool]]]
VC = dict[int, int]

_ACTIVE: Tracker | None = None


def active() -> Tracker | None:
    return _ACTIVE


def conflict(a: Footprint | None, b: Footprint | None) -> bool:
    """Do two footprints touch a common location, overlapping, at least one writing?"""
    if not a or not b:
        return False
    if len(a) > len(b):
        a, b = b, a
    for loc, xs in a.items():
        ys = b.get(loc)
        if ys is None:
            continue
        for lo, hi, w in xs:
            for lo2, hi2, w2 in ys:
                if (w or w2) and lo < hi2 and lo2 < hi:
                    return True
    return False


def footprint_text(fp: Footprint) -> str:
    parts = []
    for loc in sorted(fp):
        for lo, hi, w in fp[loc]:
            rng = "" if (lo, hi) == WHOLE else f"[{lo:#x},{hi:#x})"
            parts.append(f"{'w' if w else 'r'}:{loc}{rng}")
    return " ".join(parts)


def key_range(key: Any) -> tuple[int, int]:
    """The slot a dict key occupies: ints are themselves, anything else a stable hash."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key, key + 1
    h = (1 << 64) + zlib.crc32(repr(key).encode())
    return h, h + 1


class _Hist:
    """Race-detection history of one location: recent plain accesses per task."""

    __slots__ = ("entries", "reported")

    def __init__(self) -> None:
        # (lo, hi, write, tid, clock, step, task name)
        self.entries: list[tuple[int, int, bool, int, int, int, str]] = []
        self.reported = False


class Tracker:
    """Footprints of the running step and vector clocks for one scheduler's run."""

    def __init__(self, sched: Scheduler, races: bool = True) -> None:
        self.sched = sched
        self.races = races
        self.fp: Footprint = {}
        self.clocks: dict[int, VC] = {0: {0: 1}}  # task id -> vector clock (0 is main)
        self.sync: dict[str, VC] = {}  # sync location -> clock released into it
        self.hist: dict[str, _Hist] = {}
        self.counters: dict[int, int] = {}
        self.labels: dict[str, str] = {}

    # ----- naming ----------------------------------------------------------------------
    def new_uid(self, label: str = "") -> str:
        t = self.sched.current
        n = self.counters.get(t.tid, 0) + 1
        self.counters[t.tid] = n
        uid = f"{t.name}#{n}"
        if label:
            self.labels[uid] = label
        return uid

    def label(self, uid: str) -> str:
        lab = self.labels.get(uid)
        return f"{lab} ({uid})" if lab else uid

    # ----- steps -----------------------------------------------------------------------
    def begin_step(self) -> None:
        self.fp = {}

    def end_step(self) -> Footprint:
        fp, self.fp = self.fp, {}
        return fp

    # ----- accesses --------------------------------------------------------------------
    def access(self, uid: str, lo: int, hi: int, write: bool, marked: bool) -> None:
        if not self.sched._running:
            # Set-up before the tasks start, and what main does after joining them, can race
            # with nothing (spawn and join order it) and is in no step's footprint.
            return
        lst = self.fp.get(uid)
        if lst is None:
            self.fp[uid] = [(lo, hi, write)]
        else:
            last = lst[-1]
            if last[0] <= lo and hi <= last[1] and (last[2] or not write):
                pass  # already covered by the last entry
            elif (lo, hi, write) not in lst:
                lst.append((lo, hi, write))
        if marked or not self.races:
            return
        sched = self.sched
        cur = sched.current
        tid = cur.tid
        vc = self.clocks.get(tid)
        if vc is None:
            vc = self.clocks[tid] = {tid: 1}
        h = self.hist.get(uid)
        if h is None:
            h = self.hist[uid] = _Hist()
        entries = h.entries
        if not h.reported:
            for e in entries:
                if e[3] != tid and (write or e[2]) and lo < e[1] and e[0] < hi \
                        and e[4] > vc.get(e[3], 0):
                    h.reported = True
                    self._report(uid, e, lo, hi, write, cur.name)
                    break
        # Keep the history short: an earlier access of this task inside the new one's range
        # and no stronger is subsumed (any later race with it is also one with this).
        clk = vc[tid]
        entries[:] = [e for e in entries if not (e[3] == tid and lo <= e[0] and e[1] <= hi
                                                 and (write or not e[2]))]
        entries.append((lo, hi, write, tid, clk, sched.step, cur.name))

    def _report(self, uid: str, e: tuple[int, int, bool, int, int, int, str], lo: int,
                hi: int, write: bool, task: str) -> None:
        elo, ehi = max(lo, e[0]), min(hi, e[1])
        rng = "" if (elo, ehi) == WHOLE else f" [{elo:#x}, {ehi:#x})"
        what = "write" if write else "read"
        prev = "write" if e[2] else "read"
        self.sched.violation(
            DATA_RACE,
            f"{self.label(uid)}{rng}: {what} by {task} at step {self.sched.step} races with "
            f"{prev} by {e[6]} at step {e[5]} (no happens-before between them)")

    # ----- happens-before --------------------------------------------------------------
    def release(self, uid: str) -> None:
        """The current task publishes what it did so far into ``uid`` (unlock, signal...)."""
        if not self.sched._running:
            return  # main before spawning or after joining: spawn/join already order it
        tid = self.sched.current.tid
        vc = self.clocks.setdefault(tid, {tid: 1})
        s = self.sync.get(uid)
        if s is None:
            self.sync[uid] = dict(vc)
        else:
            for k, v in vc.items():
                if s.get(k, 0) < v:
                    s[k] = v
        vc[tid] = vc.get(tid, 0) + 1

    def acquire(self, uid: str) -> None:
        """The current task sees everything released into ``uid`` (lock, wait...)."""
        if not self.sched._running:
            return
        s = self.sync.get(uid)
        if s is None:
            return
        tid = self.sched.current.tid
        vc = self.clocks.setdefault(tid, {tid: 1})
        for k, v in s.items():
            if vc.get(k, 0) < v:
                vc[k] = v

    def spawn(self, child_tid: int) -> None:
        tid = self.sched.current.tid
        vc = self.clocks.setdefault(tid, {tid: 1})
        c = dict(vc)
        c[child_tid] = 1
        self.clocks[child_tid] = c
        vc[tid] = vc.get(tid, 0) + 1

    def join_all(self) -> None:
        """main waits for every task (the end of a run): it sees all they did."""
        vc = self.clocks.setdefault(0, {0: 1})
        for tid, c in list(self.clocks.items()):
            if tid == 0:
                continue
            for k, v in c.items():
                if vc.get(k, 0) < v:
                    vc[k] = v

    def activate(self) -> None:
        global _ACTIVE
        _ACTIVE = self

    def deactivate(self) -> None:
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None


# ----- the instrumentation API --------------------------------------------------------


def uid_of(obj: Any, label: str = "") -> str | None:
    """The location name of ``obj`` (assigned on first use when it was made untracked)."""
    tr = _ACTIVE
    if tr is None:
        return None
    uid = getattr(obj, "_uid", None)
    if uid is None:
        uid = tr.new_uid(label or getattr(obj, "name", "") or type(obj).__name__)
        try:
            obj._uid = uid
        except AttributeError:
            # An object that cannot carry a name (a bare object() used as a wait channel):
            # every such object of a type is one location. Over-approximate, deterministic.
            return f"{type(obj).__name__}@untrackable"
    return uid


def read(obj: Any, lo: int = LO, hi: int = HI, marked: bool = False) -> None:
    """Record a read of ``obj`` (of ``[lo, hi)`` when the state is ranged)."""
    tr = _ACTIVE
    if tr is not None:
        uid = obj._uid if getattr(obj, "_uid", None) else uid_of(obj)
        if uid is not None:
            _touch(tr, obj, uid, lo, hi, False, marked)


def write(obj: Any, lo: int = LO, hi: int = HI, marked: bool = False) -> None:
    """Record a write of ``obj`` (of ``[lo, hi)`` when the state is ranged)."""
    tr = _ACTIVE
    if tr is not None:
        uid = obj._uid if getattr(obj, "_uid", None) else uid_of(obj)
        if uid is not None:
            _touch(tr, obj, uid, lo, hi, True, marked)


def read_once(obj: Any, lo: int = LO, hi: int = HI) -> None:
    """READ_ONCE: a read the kernel makes without a lock on purpose (footprint, no race)."""
    read(obj, lo, hi, marked=True)


def write_once(obj: Any, lo: int = LO, hi: int = HI) -> None:
    """WRITE_ONCE: a marked write (footprint, no race)."""
    write(obj, lo, hi, marked=True)


def _touch(tr: Tracker, obj: Any, uid: str, lo: int, hi: int, w: bool, marked: bool) -> None:
    if not tr.sched._running:
        return  # set-up or after the join: no step, no race (see Tracker.access)
    if getattr(obj, "_atomic", False):
        tr.acquire(uid + "@lock")
        tr.access(uid, lo, hi, w, True)
        tr.release(uid + "@lock")
    else:
        tr.access(uid, lo, hi, w, marked)


def sync_access(obj: Any) -> None:
    """A synchronisation object's state changes (lock taken, fence signalled): a write in the
    footprint (so DPOR orders it) that is never a data race."""
    tr = _ACTIVE
    if tr is not None:
        uid = getattr(obj, "_uid", None) or uid_of(obj)
        if uid is not None:
            tr.access(uid, LO, HI, True, True)


def release(obj: Any) -> None:
    tr = _ACTIVE
    if tr is not None:
        uid = getattr(obj, "_uid", None) or uid_of(obj)
        if uid is not None:
            tr.release(uid)


def acquire(obj: Any) -> None:
    tr = _ACTIVE
    if tr is not None:
        uid = getattr(obj, "_uid", None) or uid_of(obj)
        if uid is not None:
            tr.acquire(uid)


class _Marked:
    """The context manager behind :func:`marked` (a class with slots: it sits on hot paths)."""

    __slots__ = ("tr",)

    def __init__(self) -> None:
        self.tr: Tracker | None = None

    def __enter__(self) -> None:
        tr = _ACTIVE
        if tr is not None and tr.races:
            tr.races = False
            self.tr = tr
        else:
            self.tr = None

    def __exit__(self, *exc: object) -> None:
        if self.tr is not None:
            self.tr.races = True
            self.tr = None


def marked() -> _Marked:
    """Accesses inside are marked (READ_ONCE, rcu_dereference, hardware): in the footprint,
    never a data race. An ``atomic=True`` structure still synchronises on its implicit lock
    inside; use :func:`observe` where that would add a happens-before the kernel does not
    have. Nothing inside may reach a scheduling point; nesting is fine."""
    return _Marked()


def observe(obj: Any, lo: int = LO, hi: int = HI, write: bool = False) -> None:
    """One footprint-only access to ``obj`` over ``[lo, hi)``: no race check and no
    happens-before, whatever the structure's own locking (an oracle looking at state)."""
    tr = _ACTIVE
    if tr is None:
        return
    uid = getattr(obj, "_uid", None) or uid_of(obj, getattr(obj, "label", ""))
    if uid is not None:
        tr.access(uid, lo, hi, write, True)


class _Untracked:
    __slots__ = ("tr",)

    def __enter__(self) -> None:
        self.tr = _ACTIVE
        if self.tr is not None:
            self.tr.deactivate()

    def __exit__(self, *exc: object) -> None:
        if self.tr is not None:
            self.tr.activate()


def untracked() -> _Untracked:
    """Run code whose accesses the caller recorded itself (with :func:`observe`), or that
    looks at state from outside (invariants)."""
    return _Untracked()


class Tracked:
    """Base for model objects whose fields are shared: gives them a location at creation.

    ``label`` names the object in race reports; ``atomic`` says the kernel guards it with a
    spinlock the model leaves implicit (every access is its own critical section)."""

    _uid: str | None = None
    _atomic: bool = False

    def track_init(self, label: str = "", atomic: bool = False) -> None:
        tr = _ACTIVE
        self._uid = tr.new_uid(label) if tr is not None else None
        if atomic:
            self._atomic = True


K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class TrackedDict(dict[K, V]):
    """A dict whose every lookup, insertion, deletion and iteration is in the footprint
    (a key is its own slot; iterating or sizing reads the whole table)."""

    __slots__ = ("_uid", "_atomic", "label")

    def __init__(self, *args: Any, label: str = "", atomic: bool = False, **kw: Any) -> None:
        super().__init__(*args, **kw)
        tr = _ACTIVE
        self.label = label
        self._atomic = atomic
        self._uid: str | None = tr.new_uid(label) if tr is not None else None

    def _r(self, key: Any = None, whole: bool = False) -> None:
        tr = _ACTIVE
        if tr is not None:
            uid = self._uid or uid_of(self, self.label)
            if uid is not None:
                lo, hi = WHOLE if whole else key_range(key)
                _touch(tr, self, uid, lo, hi, False, False)

    def _w(self, key: Any = None, whole: bool = False) -> None:
        tr = _ACTIVE
        if tr is not None:
            uid = self._uid or uid_of(self, self.label)
            if uid is not None:
                lo, hi = WHOLE if whole else key_range(key)
                _touch(tr, self, uid, lo, hi, True, False)

    def __getitem__(self, key: K) -> V:
        self._r(key)
        return super().__getitem__(key)

    def get(self, key: K, default: Any = None) -> Any:  # type: ignore[override]
        self._r(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._r(key)
        return super().__contains__(key)

    def __setitem__(self, key: K, value: V) -> None:
        self._w(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: K) -> None:
        self._w(key)
        super().__delitem__(key)

    def pop(self, key: K, *default: Any) -> Any:  # type: ignore[override]
        self._w(key)
        return super().pop(key, *default)

    def setdefault(self, key: K, default: Any = None) -> Any:  # type: ignore[override]
        self._w(key)
        return super().setdefault(key, default)

    def clear(self) -> None:
        self._w(whole=True)
        super().clear()

    def update(self, *args: Any, **kw: Any) -> None:  # type: ignore[override]
        self._w(whole=True)
        super().update(*args, **kw)

    def __iter__(self) -> Iterator[K]:
        self._r(whole=True)
        return super().__iter__()

    def __len__(self) -> int:
        self._r(whole=True)
        return super().__len__()

    def keys(self) -> Any:
        self._r(whole=True)
        return super().keys()

    def values(self) -> Any:
        self._r(whole=True)
        return super().values()

    def items(self) -> Any:
        self._r(whole=True)
        return super().items()


class TrackedList(list[T]):
    """A list read and written as a whole (attachment lists, queues)."""

    __slots__ = ("_uid", "_atomic", "label")

    def __init__(self, items: Iterable[T] = (), label: str = "", atomic: bool = False) -> None:
        super().__init__(items)
        tr = _ACTIVE
        self.label = label
        self._atomic = atomic
        self._uid: str | None = tr.new_uid(label) if tr is not None else None

    def _r(self) -> None:
        if _ACTIVE is not None:
            read(self)

    def _w(self) -> None:
        if _ACTIVE is not None:
            write(self)

    def __getitem__(self, i: Any) -> Any:
        self._r()
        return super().__getitem__(i)

    def __iter__(self) -> Iterator[T]:
        self._r()
        return super().__iter__()

    def __len__(self) -> int:
        self._r()
        return super().__len__()

    def __contains__(self, x: object) -> bool:
        self._r()
        return super().__contains__(x)

    def index(self, *a: Any) -> int:
        self._r()
        return super().index(*a)

    def append(self, x: T) -> None:
        self._w()
        super().append(x)

    def extend(self, xs: Iterable[T]) -> None:
        self._w()
        super().extend(xs)

    def insert(self, i: Any, x: T) -> None:
        self._w()
        super().insert(i, x)

    def remove(self, x: T) -> None:
        self._w()
        super().remove(x)

    def pop(self, i: Any = -1) -> T:
        self._w()
        return super().pop(i)

    def clear(self) -> None:
        self._w()
        super().clear()

    def __setitem__(self, i: Any, x: Any) -> None:
        self._w()
        super().__setitem__(i, x)

    def __delitem__(self, i: Any) -> None:
        self._w()
        super().__delitem__(i)


class Cell(Generic[T]):
    """One shared value (loom's ``Cell``): ``get`` reads, ``set`` writes.

    Scenarios keep the state their tasks share in cells (``s.shared(...)``) so the checker
    sees those accesses too."""

    __slots__ = ("_v", "_uid", "_atomic", "label")

    def __init__(self, value: T, label: str = "", atomic: bool = False) -> None:
        self._v = value
        self.label = label
        self._atomic = atomic
        tr = _ACTIVE
        self._uid: str | None = tr.new_uid(label) if tr is not None else None

    def get(self) -> T:
        if _ACTIVE is not None:
            read(self)
        return self._v

    def set(self, value: T) -> None:
        if _ACTIVE is not None:
            write(self)
        self._v = value

    def get_once(self) -> T:
        """READ_ONCE: a marked read."""
        if _ACTIVE is not None:
            read(self, marked=True)
        return self._v

    def set_once(self, value: T) -> None:
        if _ACTIVE is not None:
            write(self, marked=True)
        self._v = value

    def peek(self) -> T:
        """The value without recording an access (for invariants and final checks)."""
        return self._v

    def __repr__(self) -> str:
        return f"Cell({self._v!r})"
