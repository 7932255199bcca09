"""Locked-memory accounting of pinned pages (mm/util.c account_locked_vm,
include/linux/sched/user.h ``user->locked_vm``; iommufd's pages.c incr_user_locked_vm).

Two ledgers, in pages: the user's (``struct user_struct.locked_vm``, one per uid, shared by
every process of that user) and the mm's (``mm->locked_vm``). A charge that would take a
ledger past the process's RLIMIT_MEMLOCK fails with ENOMEM. The user's ledger
(incr_user_locked_vm, iommufd's) always checks the limit: iommufd does not charge at all for
a process with CAP_IPC_LOCK (pages.py). The mm's (account_locked_vm) skips the check with
``bypass_rlim`` — by default when the process has CAP_IPC_LOCK, as VFIO type1 passes its
``lock_cap`` (the ledger still counts); iommufd passes False. Uncharging never fails.

Invariants: a ledger never goes negative (uncharging more than was charged is a model bug:
AssertionError). Units: pages. Locking: ``locked_vm`` is an atomic_long_t in the kernel (the
user's) or changed under mmap_lock (the mm's): ``atomic`` here.
Leaves out: RLIMIT_MEMLOCK changes while pages are pinned, mlock(2) itself, per-user
namespaces.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ...errors import kerr
from ...sim.track import TrackedDict
from ..init import kernel_static, teardown

if TYPE_CHECKING:
    from ..core import Kernel
    from ..fs.process import Process

PAGE_SHIFT = 12


def _ledgers(kernel: Kernel) -> dict[str, int]:
    return TrackedDict(label="mm.locked_vm", atomic=True)


# "user:<uid>" and "mm:<process name>" -> pages charged.
locked_vm = kernel_static("mm.locked_vm", _ledgers)


def _charge(proc: Process, key: str, npages: int, what: str, bypass_rlim: bool) -> None:
    ledger = locked_vm(proc.kernel)
    cur = ledger.get(key, 0)
    if npages > 0 and not bypass_rlim:
        limit = proc.rlimit_memlock >> PAGE_SHIFT
        if cur + npages > limit:
            raise kerr(errno.ENOMEM, f"{what}: {cur + npages} locked pages would pass "
                       f"RLIMIT_MEMLOCK ({limit} pages) of {proc.name}")
    n = cur + npages
    assert n >= 0, f"{what}: {key} locked_vm would go negative ({cur} {npages:+d})"
    if n:
        ledger[key] = n
    else:
        ledger.pop(key, None)


def incr_user_locked_vm(proc: Process, npages: int, what: str) -> None:
    """iommufd's incr_user_locked_vm: charge ``npages`` to the user of ``proc`` (ENOMEM past
    ``proc``'s RLIMIT_MEMLOCK, whatever its capabilities)."""
    _charge(proc, f"user:{proc.uid}", npages, what, bypass_rlim=False)


def decr_user_locked_vm(proc: Process, npages: int) -> None:
    _charge(proc, f"user:{proc.uid}", -npages, "decr_user_locked_vm", bypass_rlim=True)


def account_locked_vm(proc: Process, npages: int, inc: bool, what: str, *,
                      bypass_rlim: bool | None = None) -> None:
    """__account_locked_vm(mm, pages, inc, task, bypass_rlim): ``mm->locked_vm`` of
    ``proc``'s mm; ``bypass_rlim`` None means ``capable(CAP_IPC_LOCK)`` now."""
    if bypass_rlim is None:
        bypass_rlim = proc.capable("CAP_IPC_LOCK")
    _charge(proc, f"mm:{proc.name}", npages if inc else -npages, what, bypass_rlim)


def charged(kernel: Kernel, proc: Process) -> tuple[int, int]:
    """(user's, mm's) locked pages now, for tests and the leak check."""
    ledger = locked_vm(kernel)
    return ledger.get(f"user:{proc.uid}", 0), ledger.get(f"mm:{proc.name}", 0)


@teardown("mm.locked_vm")
def locked_vm_left(kernel: Kernel) -> list[str]:
    """Pages still charged once every process has exited: a missed uncharge."""
    return [f"{n} page(s) still charged to {key} locked_vm"
            for key, n in sorted(locked_vm(kernel).items())]
