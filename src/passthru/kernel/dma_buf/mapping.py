"""What an exporter hands an importer, and the small pieces every exporter's ops share
(include/linux/dma-buf.h, include/linux/scatterlist.h, kernel/dma/direct.c, mm/vmalloc.c).

- :class:`DmaRange` / :class:`DmaMapping` — a mapping reduced to what importers may use;
- :func:`dma_direct` — dma_map_sgtable without an IOMMU: DMA address = physical address;
- :func:`mmap_needs_shared`, :func:`sigbus_past_the_end` — an exporter's mmap/fault rules;
- :func:`vmap_address` — where an exporter's vmap op maps the buffer.

Units: bytes and byte addresses. No locks: these are values and pure checks.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ...errors import Fault, kerr
from ..mm.mm import VM_MAYSHARE, VM_SHARED

if TYPE_CHECKING:
    from ..core import Kernel
    from ..mm.vma import Vma

VMALLOC_START = 0xFFFFC90000000000  # x86-64: where vmap() addresses come from


class DmaRange(NamedTuple):
    """One range of a DMA mapping, in the kernel's descriptor convention — address and length,
    as sg_dma_address/sg_dma_len and phys_vec are (extents.py gives the two conventions):
    ``dma`` is what the device is programmed with, ``length`` its bytes, ``phys`` the physical
    address it reaches — the model's physical truth for the access check, never something the
    importer sees."""

    dma: int
    length: int
    phys: int


@dataclass
class DmaMapping:
    """What map_dma_buf returned, reduced to what importers may use: DMA addresses.

    ``ranges`` in buffer order. ``sgt`` is the exporter's table object
    (kernel/dma/scatterlist.SgTable) when it built one.
    """

    ranges: list[DmaRange]
    sgt: Any = None
    kind: str = "sgt"  # "sgt" (DMA addresses) or "pal" (physical address list, a proposal)

    @property
    def length(self) -> int:
        return sum(r.length for r in self.ranges)


def dma_direct(extents: Iterable[tuple[int, int]]) -> DmaMapping:
    """dma_map_sgtable on dma-direct (no IOMMU yet): one range per physical extent
    ``(start, end)``, its DMA address the physical address."""
    return DmaMapping([DmaRange(s, e - s, s) for s, e in extents])


def mmap_needs_shared(vma: Vma, what: str) -> None:
    """An exporter's mmap that refuses a private mapping (EINVAL)."""
    if (vma.vm_flags & (VM_SHARED | VM_MAYSHARE)) == 0:
        raise kerr(errno.EINVAL, f"mmap: {what} needs MAP_SHARED")


def sigbus_past_the_end(vma: Vma, start: int, end: int, size: int, what: str) -> None:
    """A mapping's vm_ops->fault for buffer range ``[start, end)`` past the buffer's ``size``
    bytes (pgoff >= pagecount): SIGBUS at the first address beyond it."""
    if end > size:
        raise Fault(vma.start + (max(start, size) - vma.pgoff), "SIGBUS",
                    f"{what} fault past the buffer (pgoff >= pagecount)")


def vmap_address(kernel: Kernel) -> int:
    """What an exporter's vmap op returns: a vmalloc-area address, distinct per call,
    deterministic."""
    return VMALLOC_START + kernel.next_id("vmap") * (1 << 32)
