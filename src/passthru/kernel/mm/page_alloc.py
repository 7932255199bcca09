"""What the page allocator still holds at teardown (mm/page_alloc.c's view of hw/physmem.py).

The memory itself — which range is free, who owns the rest, which ranges are pinned — is
physical truth and lives in hw/physmem.py; the kernel's allocator is its client. This module
is mm's teardown hook: after every process exited, no RAM may still be allocated and no pin
(a GUP pin, a dma-buf pin, udmabuf's folios, KVM's faultin reference) may be left.

Units: bytes. Locking: none of its own — it reads ``PhysMem.owners``/``pins`` (zone->lock and
page refcounts, ``atomic`` there) from outside, after the run (a hook is not an access).
Leaves out: per-zone and per-order accounting, memory held by caches (slab, page cache of
files still open — those keep their file alive, which core's live count reports).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...hw.physmem import Owner
from ..init import kernel_static, teardown
from .mm import PAGE

if TYPE_CHECKING:
    from ..core import Kernel


class ZeroPage:
    """ZERO_PAGE: the shared page of zeros a read fault of unpopulated private anonymous
    memory maps read-only. Allocated on first use (so runs that never need it keep their
    physical layout), never freed; the teardown check does not count it."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.phys: int | None = None

    def get(self) -> int:
        if self.phys is None:
            (s, _), *_ = self.kernel.phys.alloc(PAGE, Owner("zero-page"))
            self.phys = s
        return self.phys


zero_page = kernel_static("mm.zero_page", ZeroPage)


@teardown("page_alloc")
def pages_left(kernel: Kernel) -> list[str]:
    """Allocated RAM and pinned extents still present (an empty list when none)."""
    out = []
    used = kernel.phys.allocated_bytes()
    if zero_page(kernel).phys is not None:
        used -= PAGE
    if used:
        out.append(f"{used:#x} bytes of RAM still allocated")
    pins = len(kernel.phys.pins)
    if pins:
        out.append(f"{pins} pinned extent(s) left")
    return out
