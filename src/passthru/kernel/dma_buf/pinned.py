"""A pinned exporter: RAM that never moves and is never revoked — what the dma-heaps and
udmabuf export (drivers/dma-buf/heaps/, drivers/dma-buf/udmabuf.c), reduced to the dma-buf
protocol: no mmap, no CPU access, no pin op (a static exporter), dma-direct mapping.

It is the "pinned" row of ``passthru matrix`` (check/dma_buf_matrix.py): the importer side of
every pair is what the matrix measures, so the exporter is the least that has memory model
PINNED.

The ops are the static :data:`PINNED_OPS`; the private data (``dmabuf.priv``) is the
:class:`PinnedBuffer`, its RAM.

Invariants: the memory is allocated at export and freed exactly once, at release (or on the
export's error path). Units: bytes; ``extents`` are physical (start, end) byte ranges.
Locking: ``extents`` is written before export and read afterwards (map, release): no lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...hw.physmem import Owner
from ...uapi import linux as L
from . import core
from .core import PINNED, DmaBuf, DmaBufAttachment, DmaBufOps, DmaMapping, dma_direct

if TYPE_CHECKING:
    from ..core import Kernel


class PinnedBuffer:
    """The exporter's private data: the buffer's RAM."""

    def __init__(self, kernel: Kernel, size: int) -> None:
        self.kernel = kernel
        self.extents = kernel.phys.alloc(size, Owner("dmabuf:pinned"))

    def free(self) -> None:
        for s, e in self.extents:
            self.kernel.phys.release(s, e)


def pinned_map_dma_buf(attach: DmaBufAttachment, direction: int) -> DmaMapping:
    return dma_direct(attach.dmabuf.priv.extents)


def pinned_unmap_dma_buf(attach: DmaBufAttachment, mapping: DmaMapping, direction: int) -> None:
    pass


def pinned_release(buf: DmaBuf) -> None:
    buf.priv.free()


PINNED_OPS = DmaBufOps(map_dma_buf=pinned_map_dma_buf, unmap_dma_buf=pinned_unmap_dma_buf,
                       release=pinned_release, memory_model=PINNED, exp_name="pinned-ram")


def pinned_dmabuf(kernel: Kernel, size: int = L.PAGE_SIZE) -> DmaBuf:
    """A pinned RAM buffer of ``size`` bytes (page-rounded by the allocator)."""
    priv = PinnedBuffer(kernel, size)
    try:
        return core.dma_buf_export(kernel, PINNED_OPS, size, priv=priv)
    except OSError:
        priv.free()  # the error path gives the memory back
        raise
