"""The contiguous memory area behind the CMA heap (mm/cma.c; the default area's reservation
is kernel/dma/contiguous.c's dma_contiguous_reserve).

A :class:`CmaArea` is a physically contiguous range taken out of the page allocator at boot
(cma_declare_contiguous: memblock reserves it). cma_alloc hands out aligned runs of pages
from it, first fit; cma_release gives them back. Freed CMA memory has no owner in hw, so a
device or CPU access to it after release is a physical-truth violation, as for any freed
page.

Invariants: every allocated run lies inside ``[base, end)`` and runs never overlap
(``used``); an allocated run is owned by ``cma:<name>`` in hw and reads as zero when handed
out; a released run that is still pinned stays owned, as an orphan, until unpinned.
Units: bytes for ``base``, ``size`` and runs; ``count`` arguments in pages; ``align`` as a
page order (2^align pages).

Which lock protects which field:
- ``used`` (location ``cma:<name>.bitmap``, the kernel's bitmap): ``cma->lock``, a spinlock
  the model leaves implicit — the map is made ``atomic=True`` (sim/track.py), and nothing
  schedules inside the sections it guards;
- ``kernel``, ``name``, ``base``, ``size``: set at boot, read-only afterwards.

Model deviations (docs/fidelity.md): the default area is 256 MiB carved off the top of RAM,
named "reserved", and reserved only when a RAM range holds four times its size.
Leaves out: the per-area statistics, cma_pages_valid, NUMA placement, multiple ranges per
area.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...extents import RangeMap
from ...hw.physmem import Owner
from ...uapi import linux as L

if TYPE_CHECKING:
    from ..core import Kernel

PAGE = L.PAGE_SIZE
MiB = 1 << 20
CMA_DEFAULT_SIZE = 256 * MiB  # the default CMA area (CONFIG_CMA_SIZE_MBYTES / cma=256M)
CMA_DEFAULT_NAME = "reserved"  # the name dma_contiguous_reserve gives the default area


class CmaArea:
    """struct cma: a contiguous area reserved at boot; ``used`` holds the allocated ranges
    (the kernel's bitmap)."""

    def __init__(self, kernel: Kernel, name: str, base: int, size: int) -> None:
        self.kernel = kernel
        self.name = name
        self.base = base
        self.size = size
        self.used: RangeMap[bool] = RangeMap(label=f"cma:{name}.bitmap", atomic=True)  # cma->lock

    @property
    def end(self) -> int:
        return self.base + self.size

    def available(self) -> int:
        return self.size - self.used.total()

    def alloc(self, count: int, align: int) -> int | None:
        """cma_alloc: ``count`` pages aligned to 2^``align`` pages, first fit; None when no
        aligned free range is large enough (or an injected failure)."""
        if self.kernel.sched.fault("cma_alloc"):
            return None
        n = count * PAGE
        mask = (PAGE << align) - 1
        for gs, ge in self.used.gaps(self.base, self.end):
            s = (gs + mask) & ~mask
            if s + n <= ge:
                self.used.set(s, s + n, True)
                self.kernel.phys.set_owner(s, s + n, Owner(f"cma:{self.name}"))
                self.kernel.phys.zero(s, s + n, "kernel")  # cma_heap_allocate clears the pages
                return s
        return None

    def release(self, start: int, count: int) -> None:
        """cma_release: back to the area. A pinned part (nothing pins CMA heap memory in the
        model: GUP refuses its mappings) would stay owned, as an orphan, until unpinned."""
        end = start + count * PAGE
        phys = self.kernel.phys
        for s, e, _ in phys.pins.overlapping(start, end):
            phys.set_owner(s, e, Owner(f"cma:{self.name}", "orphan"))
        for s, e in phys.pins.gaps(start, end):
            phys.disown(s, e)
            self.used.remove(s, e)


def cma_declare_default(kernel: Kernel, size: int = CMA_DEFAULT_SIZE,
                        name: str = CMA_DEFAULT_NAME) -> CmaArea | None:
    """dma_contiguous_reserve: carve ``size`` bytes off the top of the highest RAM range that
    holds four times as much, before anything is allocated. None if no range qualifies."""
    if size <= 0:
        return None
    phys = kernel.phys
    for s, e in sorted(kernel.machine.ram, reverse=True):
        if e - s >= 4 * size:
            base = (e - size) & ~(MiB - 1)
            if base < s or not phys.reserve(base, base + size):
                return None
            return CmaArea(kernel, name, base, size)
    return None
