"""pin_user_pages: long-term pins of user memory (mm/gup.c).

A pin resolves a user range to physical extents and holds them: the owner may free them (the
range becomes an orphan in hw) but the memory is not reused until the last unpin. GUP refuses
VM_IO|VM_PFNMAP mappings with EFAULT — their PTEs are special, vm_normal_page() finds no
struct page — which is why a dma-buf heap mapping cannot be pinned and udmabuf exists.

Locking: the whole walk — finding each VMA, faulting pages in (including the write fault
that gives unpopulated private memory a page) and taking the page references — runs with
``mm.mmap_lock`` held for read (pin_user_pages_unlocked → __get_user_pages, whose
mmap_assert_locked is asserted here). The references (``PhysMem.pins``) are atomic page
refcounts. A :class:`Pin` belongs to whoever took it: ``extents`` and ``what`` are set at
creation; ``released`` is a plain field its owner writes once (a second unpin is a ``gup``
violation, not a race).

Invariants: while a Pin is held, every byte of its ``extents`` has a pin count of at least
one in hw, so the memory is not reused even if its owner frees it. Units: user addresses,
lengths and physical extents in bytes; a pin covers whole pages (the range is rounded out).

Every pin here is FOLL_LONGTERM|FOLL_PIN: a read pin of a private file page unshares it first
(an anonymous copy, as gup_must_unshare asks), so the pinned page stays the one the process
sees.

Leaves out: FOLL_LONGTERM migration out of movable zones, FOLL_PCI_P2PDMA, fast GUP.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ...errors import Fault, kerr
from ...sim import kinds
from ..lockdep_assert import lockdep_assert_held
from .mm import VM_READ, VM_WRITE, page_down, page_up
from .vma import Mm

if TYPE_CHECKING:
    from ..core import Kernel

GUP = kinds.register("gup", "mm")  # a double unpin


class Pin:
    """What pin_user_pages returned: physical extents to unpin_user_pages later."""

    def __init__(self, kernel: Kernel, extents: list[tuple[int, int]], what: str) -> None:
        self.kernel = kernel
        self.extents = extents
        self.what = what
        self.released = False
        for s, e in extents:
            kernel.phys.pin(s, e)
        kernel.track("pin", +1)

    def detach(self) -> list[tuple[int, int]]:
        """Hand the page pins over to the caller, who unpins them range by range with
        ``PhysMem.unpin`` (iommufd keeps pins per byte range, not per call)."""
        assert not self.released, f"detach of released {self.what}"
        self.released = True
        self.kernel.track("pin", -1)
        return self.extents

    def unpin(self) -> None:
        if self.released:
            self.kernel.sched.violation(GUP, f"double unpin of {self.what}")
            return
        self.released = True
        for s, e in self.extents:
            self.kernel.phys.unpin(s, e)
        self.kernel.track("pin", -1)


def pin_user_pages(mm: Mm, addr: int, length: int, write: bool) -> Pin:
    if length <= 0:
        raise kerr(errno.EINVAL, "pin_user_pages: empty range")
    start, end = page_down(addr), page_up(addr + length)
    mm.mmap_lock.down_read()
    try:
        lockdep_assert_held(mm.mmap_lock, "__get_user_pages")
        pos = start
        while pos < end:
            vma = mm.find_vma(pos)
            if vma is None:
                raise kerr(errno.EFAULT, f"pin_user_pages: {pos:#x} is not mapped")
            if vma.special:
                raise kerr(
                    errno.EFAULT,
                    f"pin_user_pages: {pos:#x} is in a VM_IO|VM_PFNMAP mapping (special PTEs)",
                )
            need = VM_WRITE if write else VM_READ
            if not vma.vm_flags & need:
                raise kerr(errno.EFAULT, f"pin_user_pages: {pos:#x} lacks the needed permission")
            pos = vma.end
        try:
            # FOLL_LONGTERM read pins unshare private file pages (gup_must_unshare): the pin
            # and the process keep seeing the same page after a CPU write.
            pieces = mm.resolve(start, end - start, write, unshare=not write)
            if any(p < 0 for _, _, p in pieces):
                # Unpopulated private memory: fault it in for write so there is a page to pin
                # (still under mmap_lock: the VMA found above may be gone once it is dropped).
                pieces = mm.resolve(start, end - start, True)
        except Fault as f:
            raise kerr(errno.EFAULT, f"pin_user_pages: {f}") from None
        extents: list[tuple[int, int]] = []
        for s, e, p in pieces:
            if extents and extents[-1][1] == p:
                extents[-1] = (extents[-1][0], p + (e - s))
            else:
                extents.append((p, p + (e - s)))
        return Pin(mm.kernel, extents, f"user [{start:#x}, {end:#x})")
    finally:
        mm.mmap_lock.up_read()
