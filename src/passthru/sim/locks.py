"""Sleeping locks built on scheduling points: mutex, rw_semaphore, ww_mutex, SRCU,
completions and wait queues (kernel/locking/mutex.c, rwsem.c, ww_mutex.h, kernel/rcu/srcutree.c,
kernel/sched/completion.c, wait.h).

Every acquire is a scheduling point naming the lock, so the explorer interleaves there, and
goes through lockdep. Leaves out: optimistic spinning, handoff, reader/writer fairness beyond
"writers exclude readers", and the difference between wound-wait and wait-die beyond what
dma_resv (wound-wait) needs.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import kinds, track
from .scheduler import Scheduler, SimDeadlock, Task

DEADLOCK = kinds.register("deadlock", "sim.locks")  # recursive locking: would wait forever
LOCK = kinds.register("lock", "sim.locks")  # unlocking a lock the task does not hold


def _sync(obj: Any, write: bool = True) -> None:
    """The lock's own state changes: in the footprint (DPOR orders it), never a data race."""
    if track._ACTIVE is not None:
        if write:
            track.sync_access(obj)
        else:
            uid = obj._uid or track.uid_of(obj)
            if uid is not None:
                track._ACTIVE.access(uid, track.LO, track.HI, False, True)


def _clock(obj: Any, suffix: str, release: bool) -> None:
    tr = track._ACTIVE
    if tr is not None:
        uid = obj._uid or track.uid_of(obj)
        if uid is not None:
            (tr.release if release else tr.acquire)(uid + suffix)


def _acq(obj: Any, suffix: str = "") -> None:
    """The current task acquires what was released into the lock (its clock ``suffix``)."""
    _clock(obj, suffix, False)


def _rel(obj: Any, suffix: str = "") -> None:
    """The current task releases into the lock: what it did happens-before the next owner."""
    _clock(obj, suffix, True)


# Every sleeping lock's acquire and release, around what each kind of lock decides itself.
def _lock_begin(lock: Any, how: str, write: bool = True) -> Scheduler:
    """might_sleep() and lock_acquire(): a scheduling point naming the lock, lockdep's order
    check (before waiting, so an inversion is reported even if this then deadlocks), and the
    lock's state in the footprint. Returns the lock's scheduler."""
    s: Scheduler = lock.sched
    s.point(lock.name, how)
    s.lockdep.acquire(lock)
    _sync(lock, write)
    return s


def _lock_wait(lock: Any, write: bool = True) -> None:
    """Contended: sleep until woken (an unlock, a wound), then look at the lock's state again."""
    lock.sched.block(lock)
    _sync(lock, write)


def _lock_taken(lock: Any, *clocks: str) -> None:
    """The lock is the current task's: it acquires what was released into ``clocks`` (the
    lock's one clock unless named)."""
    for suffix in clocks or ("",):
        _acq(lock, suffix)
    lock.sched.lockdep.acquired(lock)


def _lock_released(lock: Any, clock: str = "", write: bool = True) -> None:
    """The current task has given the lock up (its state already says so): what it did
    happens-before the next owner (``clock``); lockdep forgets it; the waiters wake."""
    s = lock.sched
    _sync(lock, write)
    _rel(lock, clock)
    s.lockdep.release(lock)
    s.wake(lock)


class _OwnedLock(track.Tracked):
    """What a mutex and a ww_mutex share (a struct ww_mutex wraps a struct mutex): one owner,
    and the unlock that releases it."""

    def __init__(self, sched: Scheduler, name: str, cls: str) -> None:
        self.sched = sched
        self.name = name
        self.cls = cls
        self.owner: Task | None = None

    def unlock(self) -> None:
        s = self.sched
        if self.owner is not s.current:
            s.violation(LOCK, f"{s.current.name} unlocks {self.name} it does not hold")
            return
        self._disown()
        _lock_released(self)

    def _disown(self) -> None:
        self.owner = None

    def is_locked(self) -> bool:
        return self.owner is not None

    def held_by_current(self) -> bool:
        return self.owner is self.sched.current


class Mutex(_OwnedLock):
    def __init__(self, sched: Scheduler, name: str, cls: str | None = None) -> None:
        super().__init__(sched, name, cls or name)
        self.track_init(name)

    def lock(self) -> None:
        s = _lock_begin(self, "acquire")
        while self.owner is not None:
            if self.owner is s.current:
                msg = f"recursive locking of {self.name} by {s.current.name}"
                s.violation(DEADLOCK, msg)
                raise SimDeadlock(msg)
            _lock_wait(self)
        self.owner = s.current
        _lock_taken(self)

    def __enter__(self) -> Mutex:
        self.lock()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unlock()


class RwSem(track.Tracked):
    """rw_semaphore: many readers or one writer."""

    # Happens-before: readers acquire what writers released ("@w"); a writer acquires what
    # writers and readers released ("@r" too). Readers do not order each other.
    def __init__(self, sched: Scheduler, name: str, cls: str | None = None) -> None:
        self.sched = sched
        self.name = name
        self.cls = cls or name
        self.writer: Task | None = None
        self.readers: dict[int, int] = {}
        self.track_init(name)

    def down_read(self) -> None:
        s = _lock_begin(self, "r", write=False)
        while self.writer is not None:
            if self.writer is s.current:
                s.violation(DEADLOCK, f"{s.current.name} read-locks {self.name} it holds")
                raise SimDeadlock(self.name)
            _lock_wait(self, write=False)
        self.readers[s.current.tid] = self.readers.get(s.current.tid, 0) + 1
        _lock_taken(self, "@w")

    def up_read(self) -> None:
        s = self.sched
        n = self.readers.get(s.current.tid, 0)
        if n == 0:
            s.violation(LOCK, f"{s.current.name} up_read on {self.name} it does not hold")
            return
        if n == 1:
            del self.readers[s.current.tid]
        else:
            self.readers[s.current.tid] = n - 1
        _lock_released(self, "@r", write=False)

    def down_write(self) -> None:
        s = _lock_begin(self, "w")
        while self.writer is not None or self.readers:
            if self.writer is s.current or s.current.tid in self.readers:
                s.violation(DEADLOCK, f"{s.current.name} write-locks {self.name} it holds")
                raise SimDeadlock(self.name)
            _lock_wait(self)
        self.writer = s.current
        _lock_taken(self, "@w", "@r")

    def up_write(self) -> None:
        s = self.sched
        if self.writer is not s.current:
            s.violation(LOCK, f"{s.current.name} up_write on {self.name} it does not hold")
            return
        self.writer = None
        _lock_released(self, "@w")

    def down_write_trylock(self) -> bool:
        """down_write_trylock: take the lock for write if nobody holds it; never waits."""
        if self.writer is not None or self.readers:
            track.observe(self, track.LO, track.HI, False)  # the failed attempt looked
            return False
        self.down_write()
        return True

    def held_for_write(self) -> bool:
        return self.writer is self.sched.current

    def held(self) -> bool:
        return self.writer is self.sched.current or self.sched.current.tid in self.readers

    @contextmanager
    def read(self) -> Iterator[None]:
        """``with sem.read():`` down_read ... up_read."""
        self.down_read()
        try:
            yield
        finally:
            self.up_read()

    @contextmanager
    def write(self) -> Iterator[None]:
        """``with sem.write():`` down_write ... up_write."""
        self.down_write()
        try:
            yield
        finally:
            self.up_write()


class WwAcquireCtx:
    """ww_acquire_ctx: a transaction's ticket; older (smaller stamp) wins."""

    def __init__(self, sched: Scheduler, name: str = "ww_ctx") -> None:
        self.sched = sched
        self.name = name
        self.stamp = sched.next_stamp()
        self.task = sched.current
        self.acquired = 0
        self.wounded = False


class WwMutex(_OwnedLock):
    """ww_mutex of a wound-wait class (dma_resv's reservation_ww_class).

    An older context that finds the lock held by a younger one wounds it; the wounded context
    gets -EDEADLK on its next contended lock and must back off (drop everything, lock_slow).
    """

    def __init__(self, sched: Scheduler, name: str, cls: str = "reservation_ww_class") -> None:
        super().__init__(sched, name, cls)
        self.ctx: WwAcquireCtx | None = None
        self.track_init(name)

    def lock(self, ctx: WwAcquireCtx | None = None) -> int:
        s = _lock_begin(self, "acquire")
        while self.owner is not None:
            if self.owner is s.current:
                if ctx is not None and self.ctx is ctx:
                    return -errno.EALREADY
                s.violation(DEADLOCK, f"recursive locking of {self.name}")
                raise SimDeadlock(self.name)
            if ctx is not None:
                if ctx.wounded and ctx.acquired > 0:
                    return -errno.EDEADLK
                holder = self.ctx
                if holder is not None and holder.stamp > ctx.stamp and not holder.wounded:
                    holder.wounded = True
                    s.emit("ww", "wound", lock=self.name, victim=holder.task.name)
                    # A wounded holder asleep on another ww lock must wake to see it.
                    s.wake(holder.task.waiting_on) if holder.task.waiting_on else None
            _lock_wait(self)
        self.owner = s.current
        self.ctx = ctx
        if ctx is not None:
            ctx.acquired += 1
        _lock_taken(self)
        return 0

    def lock_slow(self, ctx: WwAcquireCtx) -> None:
        ctx.wounded = False
        rc = self.lock(ctx)
        assert rc == 0, "lock_slow cannot fail once everything was dropped"

    def _disown(self) -> None:
        if self.ctx is not None:
            self.ctx.acquired -= 1
        self.owner = None
        self.ctx = None


class Srcu(track.Tracked):
    """Sleepable RCU: synchronize() waits for the readers that started before it.

    Happens-before: a read-side section's end is released into the SRCU ("@r") and
    synchronize() acquires it once its readers are gone."""

    def __init__(self, sched: Scheduler, name: str) -> None:
        self.sched = sched
        self.name = name
        self.gen = 0
        self.readers: dict[int, int] = {}  # reader token -> generation it started in
        self._next = 0
        self.track_init(name)

    def read_lock(self) -> int:
        self.sched.point(self.name, "r")
        _sync(self, write=False)
        self._next += 1
        self.readers[self._next] = self.gen
        return self._next

    def read_unlock(self, idx: int) -> None:
        _sync(self, write=False)
        _rel(self, "@r")
        del self.readers[idx]
        self.sched.wake(self)

    def synchronize(self) -> None:
        s = self.sched
        s.point(self.name, "sync")
        _sync(self)
        self.gen += 1
        target = self.gen
        while any(g < target for g in self.readers.values()):
            s.block(self)
            _sync(self)
        _acq(self, "@r")


class Completion(track.Tracked):
    def __init__(self, sched: Scheduler, name: str) -> None:
        self.sched = sched
        self.name = name
        self.done = 0
        self.track_init(name)

    def complete(self) -> None:
        _sync(self)
        self.done += 1
        self.sched.wake(self)  # releases into the completion

    def complete_all(self) -> None:
        _sync(self)
        self.done = 1 << 30
        self.sched.wake(self)

    def wait(self, timeout_ns: int | None = None) -> bool:
        """wait_for_completion(_timeout): False when the model-time timeout expired."""
        s = self.sched
        s.point(self.name, "wait")
        _sync(self)
        deadline = None if timeout_ns is None else s.now + timeout_ns
        while self.done == 0:
            if deadline is not None and s.now >= deadline:
                return False
            s.current.deadline = deadline
            s.block(self)
            _sync(self)
        self.done -= 1
        _acq(self)
        return True


class WaitQueue(track.Tracked):
    """wait_event/wake_up. The condition reads tracked state itself; a wait that returns
    true acquires what every wake_up released (the wait-queue head's spinlock)."""

    def __init__(self, sched: Scheduler, name: str) -> None:
        self.sched = sched
        self.name = name
        self.track_init(name)

    def wait_event(self, cond: Callable[[], bool], timeout_ns: int | None = None) -> bool:
        s = self.sched
        s.point(self.name, "wait")
        _sync(self, write=False)
        deadline = None if timeout_ns is None else s.now + timeout_ns
        while not cond():
            if deadline is not None and s.now >= deadline:
                return False
            s.current.deadline = deadline
            s.block(self)
            _sync(self, write=False)
        _acq(self)
        return True

    def wake_up(self) -> None:
        _sync(self)
        self.sched.wake(self)
