"""Locked-memory accounting of pinned pages (mm/util.c account_locked_vm,
include/linux/sched/user.h ``user->locked_vm``; iommufd's pages.c incr_user_locked_vm).

Two ledgers, in pages: the user's (``struct user_struct.locked_vm``, one per uid, shared by
every process of that user) and the mm's (``mm->locked_vm``). A charge that would take a
ledger past the process's RLIMIT_MEMLOCK fails with ENOMEM, unless the process has
CAP_IPC_LOCK (then nothing is checked, but the ledger still counts). Uncharging never fails.

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


def _charge(proc: Process, key: str, npages: int, what: str) -> None:
    ledger = locked_vm(proc.kernel)
    cur = ledger.get(key, 0)
    if npages > 0 and not proc.capable("CAP_IPC_LOCK"):
        limit = proc.rlimit_memlock >> PAGE_SHIFT
        if cur + npages > limit:
            raise kerr(errno.ENOMEM, f"{what}: {cur + npages} locked pages would pass "
                       f"RLIMIT_MEMLOCK ({limit} pages) of {proc.name} (no CAP_IPC_LOCK)")
    n = cur + npages
    assert n >= 0, f"{what}: {key} locked_vm would go negative ({cur} {npages:+d})"
    if n:
        ledger[key] = n
    else:
        ledger.pop(key, None)


def incr_user_locked_vm(proc: Process, npages: int, what: str) -> None:
    """Charge ``npages`` to the user of ``proc`` (ENOMEM past RLIMIT_MEMLOCK)."""
    _charge(proc, f"user:{proc.uid}", npages, what)


def decr_user_locked_vm(proc: Process, npages: int) -> None:
    _charge(proc, f"user:{proc.uid}", -npages, "decr_user_locked_vm")


def account_locked_vm(proc: Process, npages: int, inc: bool, what: str) -> None:
    """account_locked_vm(mm, pages, inc): ``mm->locked_vm`` of ``proc``'s mm."""
    _charge(proc, f"mm:{proc.name}", npages if inc else -npages, what)


def charged(kernel: Kernel, proc: Process) -> tuple[int, int]:
    """(user's, mm's) locked pages now, for tests and the leak check."""
    ledger = locked_vm(kernel)
    return ledger.get(f"user:{proc.uid}", 0), ledger.get(f"mm:{proc.name}", 0)


@teardown("mm.locked_vm")
def locked_vm_left(kernel: Kernel) -> list[str]:
    """Pages still charged once every process has exited: a missed uncharge."""
    return [f"{n} page(s) still charged to {key} locked_vm"
            for key, n in sorted(locked_vm(kernel).items())]
