"""Lock rules as code: lockdep_assert_held and its write form (include/linux/lockdep.h,
mmap_assert_locked in include/linux/mmap_lock.h), and the *marked* accesses of
include/asm-generic/rwonce.h and include/linux/rcupdate.h (READ_ONCE, WRITE_ONCE,
rcu/srcu_dereference) as the model spells them (docs/design.md, "Data races are
violations").

A module's docstring states which lock protects which field; the functions that the kernel
guards with ``lockdep_assert_held`` call the same assertion here. When the running task does
not hold the lock, a ``lockdep`` violation names the lock and the function — in any schedule,
whether or not another task raced with it (lockdep's "suspicious ... usage", not a splat about
a deadlock). Outside exploration ``main`` runs everything and holds the locks it takes, so the
assertions hold there too.

Marked accesses: the kernel reads some shared state without its lock on purpose — an RCU or
SRCU reader (``srcu_dereference``), a READ_ONCE that a later check under the lock validates
(``mmu_invalidate_seq``), and every access that is not kernel code at all (a vCPU through its
SPTEs, a device's DMA, a CPU through a PTE: hardware, judged by physical truth in hw/). Inside
:func:`marked` such accesses still enter the step's footprint (so DPOR orders them against the
writers) but are never data races. :func:`observe` records one footprint-only access without
touching the structure (the physical-truth oracle's view, which must carry no happens-before
even on a structure with an implicit spinlock) and :func:`untracked` runs a query the caller
has already recorded.

Leaves out: lockdep_assert_not_held, lock pinning, the srcu_read_lock_held() form (the model's
SRCU does not know which task holds a read section).
"""

from __future__ import annotations

from typing import Any

from ..sim import kinds, track
from ..sim.locks import RwSem

LOCKDEP = kinds.register("lockdep", "kernel.lockdep_assert")  # a lockdep_assert_held failed


def _held(lock: Any) -> bool:
    if isinstance(lock, RwSem):
        return lock.held()
    return bool(lock.held_by_current())


def _report(lock: Any, what: str, form: str) -> None:
    s = lock.sched
    s.violation(LOCKDEP, f"{what}: {form}({lock.name}) fails: {s.current.name} does not "
                f"hold {lock.name}")


def lockdep_assert_held(lock: Any, what: str) -> None:
    """``lockdep_assert_held(lock)`` in ``what`` (a function name): the running task holds
    ``lock`` (a Mutex, a WwMutex, or an RwSem for read or write)."""
    if not _held(lock):
        _report(lock, what, "lockdep_assert_held")


def lockdep_assert_held_write(lock: RwSem, what: str) -> None:
    """``lockdep_assert_held_write(lock)``: the running task holds the rw_semaphore for
    write."""
    if not lock.held_for_write():
        _report(lock, what, "lockdep_assert_held_write")


# The marked-access helpers live with the tracker (sim/track.py); kernel code names them here,
# next to the lock assertions, as the kernel's rwonce.h/rcupdate.h sit next to lockdep.h.
marked = track.marked
observe = track.observe
untracked = track.untracked
